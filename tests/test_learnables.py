"""Learnables: found once by path, always saved, learning in their phase, guarded by name."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
import torch
from helpers import TOY_GIN, checkpoint, on_sys_path, run_cli, write_distribution
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ebmkit import ConfigError, InitBatch, LearnableModule, find_learnables
from ebmkit.checkpoint.rng import seed_everything
from ebmkit.data.toy import EightGaussians
from ebmkit.energies.mlp import MLPEnergy
from ebmkit.initializers.noise import Noise
from ebmkit.samplers.langevin import Langevin
from ebmkit.trainers.contrastive import Contrastive

MODULE = "ebmkit_test_learnables"

PLUGIN_SOURCE = '''
    """A test plugin: an initializer that learns where chains should start."""
    import torch

    import ebmkit
    from ebmkit import InitBatch, LearnableModule


    class LearnedStart(LearnableModule):
        """Chains start at N(mean, std²); the mean is fitted to the round's samples (MLE).

        From round `nan_round` on (0: never) its loss is NaN, to exercise the guard.
        """

        def __init__(self, dim=2, std=1.0, learning_rate=0.05, nan_round=0):
            super().__init__(learning_rate=learning_rate)
            self.mean = torch.nn.Parameter(torch.zeros(dim))
            self.std, self.nan_round = std, nan_round

        def sample(self, n):
            with torch.no_grad():
                return InitBatch(x=self.mean + self.std * torch.randn(n, self.mean.shape[0]))

        def update(self, round):
            """Learning happens in `learn` (the trainer's Learnables phase)."""

        def loss(self, round):
            nll = 0.5 * ((round.result.x - self.mean) / self.std).square().sum(1).mean()
            if self.nan_round and round.index >= self.nan_round:
                nll = nll * float("nan")
            return {"loss": nll, "mean_norm": self.mean.detach().norm()}


    @ebmkit.hookimpl
    def ebmkit_register(registry):
        registry.add("initializer", "LearnedStart", LearnedStart)
'''


@pytest.fixture(scope="module")
def learnable_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """LearnedStart as an installed plugin distribution (entry point `learntest`)."""
    site = tmp_path_factory.mktemp("learn_site")
    write_distribution(site, MODULE, "0.1", {"learntest": MODULE}, {MODULE: PLUGIN_SOURCE})
    with on_sys_path(site):
        yield


pytestmark = pytest.mark.usefixtures("builtin_registry")


def write_config(folder: Path, lines: list[str]) -> Path:
    """A tiny eight-Gaussians run (32 chains, 3 Langevin steps) checkpointed every round."""
    base = [
        "trainers.Contrastive.dataset = @datasets.EightGaussians()",
        "trainers.Contrastive.energy = @energies.MLP()",
        "trainers.Contrastive.batch_size = 32",
        "trainers.Contrastive.n_rounds = 6",
        "energies.MLP.hidden = (16, 16)",
        "datasets.EightGaussians.n_samples = 96",
        "experiment.seed = 3",
        "experiment.log_every = 1",
        "experiment.eval_every = 1000",
        "experiment.sample_every = 1000",
        "experiment.checkpoint_every = 1",
        "experiment.keep_checkpoints = 100",
    ]
    path = folder / "learn.gin"
    path.write_text("\n".join([f"include '{TOY_GIN}'", *base, *lines]) + "\n")
    return path


LEARNED_START = [
    "trainers.Contrastive.initializer = @initializers.LearnedStart()",
    "trainers.Contrastive.sampler = @samplers.Langevin()",
    "samplers.Langevin.step_size = 0.01",
    "samplers.Langevin.n_steps = 3",
]


def last_scalars(run: Path) -> dict:
    """The last metrics.jsonl row of the round scalars (not the toy-metrics rows)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if "loss/total" in row][-1]


def test_a_learnable_with_a_nan_loss_stops_the_run_naming_it_and_keeps_earlier_checkpoints(
    learnable_plugin: None, tmp_path: Path
) -> None:
    config = write_config(tmp_path, [*LEARNED_START, "initializers.LearnedStart.nan_round = 3"])
    out = tmp_path / "run"
    status, stdout, err = run_cli(["run", str(config), "--out", str(out)])
    assert (status, stdout) == (1, "")
    assert err.count("ebmkit: error:") == 1 and "Traceback" not in err
    assert (
        "ebmkit: error: LearnedStart loss is nan at round 3 (the Learnable at initializer)" in err
    )
    saved = sorted(path.name for path in (out / "checkpoints").glob("round-*.pt"))
    assert saved == ["round-00000001.pt", "round-00000002.pt"]
    assert torch.isfinite(checkpoint(out, 2)["learnables"]["initializer"]["module"]["mean"]).all()


def test_a_learnable_is_saved_by_path_and_resumes_exactly(
    learnable_plugin: None, tmp_path: Path
) -> None:
    config = write_config(tmp_path, LEARNED_START)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert run_cli(["run", str(config), "--out", str(whole)])[0] == 0
    assert run_cli(["run", str(config), "--out", str(parts), "--rounds", "3"])[0] == 0
    assert run_cli(["run", str(config), "--out", str(parts), "--rounds", "6", "--resume"])[0] == 0
    one, other = checkpoint(whole, 6), checkpoint(parts, 6)
    assert list(one["learnables"]) == ["initializer"]
    assert "initializer" not in one["components"]  # saved once, as the Learnable
    saved = one["learnables"]["initializer"]
    assert saved["optimizer"]["state"], "the Learnable's optimizer state is saved"
    for key in ("module", "optimizer"):
        assert repr(saved[key]) == repr(other["learnables"]["initializer"][key])
    assert torch.equal(
        saved["module"]["mean"], other["learnables"]["initializer"]["module"]["mean"]
    )
    assert not torch.equal(saved["module"]["mean"], torch.zeros(2))  # it did learn
    assert {"initializer/loss", "initializer/mean_norm"} <= set(last_scalars(whole))


def test_both_stages_of_a_composite_sampler_are_logged_under_its_name(tmp_path: Path) -> None:
    lines = [
        "trainers.Contrastive.initializer = @initializers.Noise()",
        "trainers.Contrastive.sampler = @samplers.Composite()",
        "samplers.Composite.stages = {'ula': @samplers.Langevin(), 'mala': @samplers.MALA()}",
        "samplers.Composite.n_steps = 3",
        "samplers.Langevin.step_size = 0.01",
        "samplers.MALA.step_size = 0.05",
    ]
    out = tmp_path / "run"
    assert run_cli(["run", str(write_config(tmp_path, lines)), "--out", str(out)])[0] == 0
    row = last_scalars(out)
    assert {
        "Composite/ula/step_size",
        "Composite/mala/step_size",
        "Composite/mala/acceptance",
    } <= set(row)
    assert row["Composite/ula/step_size"] == pytest.approx(0.01)
    assert 0 < row["Composite/mala/acceptance"] <= 1
    events = EventAccumulator(str(out / "tb")).Reload()
    assert "Composite/mala/acceptance" in events.Tags()["scalars"]


# In-process: discovery, refusal, phases --------------------------------------------------------


class Shift(LearnableModule):
    """Learns the mean of the round's samples."""

    def __init__(self) -> None:
        super().__init__(learning_rate=0.1)
        self.mean = torch.nn.Parameter(torch.zeros(2))

    def loss(self, round):
        return {"loss": (round.result.x - self.mean).square().sum(1).mean()}


@attrs.define
class Holder:
    """An attrs component holding Learnables in a field, a list and a dict."""

    inner: object
    many: list = attrs.Factory(list)
    named: dict = attrs.Factory(dict)


def test_discovery_recurses_and_keeps_the_first_path_of_a_shared_learnable() -> None:
    shared, nested, listed = Shift(), Shift(), Shift()
    parent = torch.nn.Sequential(torch.nn.Linear(2, 2))
    parent.add_module("child", nested)
    roots = {
        "initializer": Holder(inner=shared, many=[listed]),
        "sampler": Holder(inner=parent, named={"again": shared}),
    }
    found = find_learnables(roots)
    assert list(found) == ["initializer.inner", "initializer.many.0", "sampler.inner.child"]
    assert found["initializer.inner"] is shared and found["sampler.inner.child"] is nested
    # A nested LearnableModule still gives its parent a plain module state dict.
    assert set(parent.state_dict()) == {"0.weight", "0.bias", "child.mean"}


@attrs.define
class NotSaveable:
    def learn(self, round):
        return {}


def _trainer(**overrides) -> Contrastive:
    seed_everything(0)
    settings = dict(
        energy=MLPEnergy(hidden=(8, 8)),
        sampler=Langevin(step_size=0.01, n_steps=2),
        initializer=Noise(shape=(2,)),
        dataset=EightGaussians(n_samples=64, seed=0),
        batch_size=16,
        n_rounds=2,
    )
    return Contrastive(**{**settings, **overrides})


def test_a_learnable_that_cannot_be_saved_is_refused_when_the_trainer_is_built() -> None:
    with pytest.raises(ConfigError, match=r"learnables\.0 \(NotSaveable\) has learn\(\) but no"):
        _trainer(learnables=[NotSaveable()])


def test_a_checkpoint_with_other_learnable_paths_is_refused_naming_them() -> None:
    state = _trainer(learnables=[Shift()]).state_dict()
    with pytest.raises(
        ValueError, match=r"at \['learnables.0'\] but this config's are at no path"
    ):
        _trainer().load_state_dict(state)


@pytest.mark.parametrize(
    ("learn_order", "sees_updated_energy"),
    [("after_energy_step", True), ("before_energy_step", False)],
)
def test_learn_order_places_the_learnables_before_or_after_the_energy_step(
    learn_order: str, sees_updated_energy: bool
) -> None:
    seen: list[torch.Tensor] = []

    class Watcher(Shift):
        def loss(self, round):
            seen.append(next(trainer.energy.parameters()).detach().clone())
            return super().loss(round)

    trainer = _trainer(learnables=[Watcher()], learn_order=learn_order, n_rounds=1)
    before = next(trainer.energy.parameters()).detach().clone()
    names = [name for name, _ in trainer.phases()]
    assert names.index("learnables") == names.index("energy_step") + (
        1 if sees_updated_energy else -1
    )
    trainer.fit()
    after = next(trainer.energy.parameters()).detach()
    assert not torch.equal(before, after)
    assert torch.equal(seen[0], after if sees_updated_energy else before)
    assert names[0] == "data" and names[-1] == "initializer_update"


def test_learnable_modules_move_to_the_trainers_device_and_restore_their_optimizer() -> None:
    shift = Shift()
    trainer = _trainer(learnables=[shift], n_rounds=2)
    trainer.fit()
    state = trainer.state_dict()["learnables"]["learnables.0"]
    copy = Shift()
    copy.load_state_dict(state)
    assert torch.equal(copy.mean, shift.mean)
    assert repr(copy.optimizer.state_dict()) == repr(shift.optimizer.state_dict())
    assert shift.mean.device == torch.device(trainer.device)


def test_init_batch_moves_its_state_with_it() -> None:
    batch = InitBatch(x=torch.zeros(2, 2))
    assert batch.to("cpu") is batch


def test_a_run_refuses_a_trainer_that_lacks_the_trainer_protocol(tmp_path: Path) -> None:
    config = tmp_path / "bad.gin"
    config.write_text(
        "experiment.trainer = @samplers.Langevin()\nsamplers.Langevin.step_size = 0.1\n"
    )
    status, _, err = run_cli(["run", str(config), "--out", str(tmp_path / "run")])
    assert status == 1 and err.count("ebmkit: error:") == 1
    assert (
        "experiment.trainer is a Langevin, which lacks energy, sampler, dataset, batch_size, "
        "n_rounds, round_index, fit, state_dict, load_state_dict of the Trainer protocol"
    ) in err  # every member, read from the protocol (its own first, then Stateful's)
