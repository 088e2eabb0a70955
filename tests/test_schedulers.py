"""LR schedulers stepped per round or per data epoch, for the energy and for Learnables."""

from __future__ import annotations

import io
from pathlib import Path

import attrs
import pytest
import torch
from helpers import (
    FLOW_TOY_LINES,
    TOY_GIN,
    checkpoint,
    first_difference,
    run_cli,
    write_lines,
)

from ebmkit import LearnableModule
from ebmkit.checkpoint.rng import get_rng_state, seed_everything, set_rng_state
from ebmkit.config import build_configured
from ebmkit.data.toy import EightGaussians
from ebmkit.energies.mlp import MLPEnergy
from ebmkit.initializers.noise import Noise
from ebmkit.samplers.langevin import Langevin
from ebmkit.testing.fixtures import finished_round
from ebmkit.trainers.contrastive import Contrastive

BATCH, N_SAMPLES = 16, 48  # three batches an epoch
ROUNDS = 7  # epochs of the rounds' batches: 0 0 0 1 1 1 2
ENERGY_LR, SHIFT_LR = 0.01, 0.1


def halving(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.ExponentialLR:
    return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.5)


class Shift(LearnableModule):
    """Learns the mean of the round's samples, with a halving scheduler."""

    def __init__(self, interval: str) -> None:
        super().__init__(learning_rate=SHIFT_LR, scheduler=halving, scheduler_interval=interval)
        self.mean = torch.nn.Parameter(torch.zeros(2))

    def loss(self, round):
        return {"loss": (round.result.x - self.mean).square().sum(1).mean()}


def trainer(interval: str, n_rounds: int = ROUNDS) -> Contrastive:
    seed_everything(0)
    return Contrastive(
        energy=MLPEnergy(hidden=(8, 8)),
        sampler=Langevin(step_size=0.01, n_steps=2),
        initializer=Noise(shape=(2,)),
        dataset=EightGaussians(n_samples=N_SAMPLES, seed=0),
        batch_size=BATCH,
        n_rounds=n_rounds,
        learning_rate=ENERGY_LR,
        scheduler=halving,
        scheduler_interval=interval,
        learnables=[Shift(interval)],
    )


def learning_rate(optimizer: torch.optim.Optimizer) -> float:
    return optimizer.param_groups[0]["lr"]


@pytest.mark.parametrize(("interval", "n_scheduler_steps"), [("epoch", 2), ("round", ROUNDS)])
def test_a_scheduler_steps_once_per_data_epoch_or_once_per_round(
    interval: str, n_scheduler_steps: int
) -> None:
    run = trainer(interval)
    shift = run.all_learnables["learnables.0"]
    used: dict[str, list[float]] = {"energy": [], "shift": []}  # the lr each step was taken at
    for name, optimizer in (("energy", run.optimizer), ("shift", shift.optimizer)):
        optimizer.register_step_pre_hook(
            lambda optimizer, args, kwargs, name=name: used[name].append(learning_rate(optimizer))
        )
    epochs = [run.train_round().epoch for _ in range(ROUNDS)]
    assert epochs == [0, 0, 0, 1, 1, 1, 2]
    assert learning_rate(run.optimizer) == ENERGY_LR * 0.5**n_scheduler_steps
    assert learning_rate(shift.optimizer) == SHIFT_LR * 0.5**n_scheduler_steps
    # per epoch: every batch of epoch e is taken at lr0·γ^e, its first one included (as a
    # loop stepping the scheduler at each epoch's end); per round: after each step
    halvings = epochs if interval == "epoch" else list(range(ROUNDS))
    assert used["energy"] == [ENERGY_LR * 0.5**k for k in halvings]
    assert used["shift"] == [SHIFT_LR * 0.5**k for k in halvings]


class OwnLearn(Shift):
    """A Learnable writing its own `learn`: `minimise` steps its scheduler as configured."""

    def learn(self, round):
        losses = self.loss(round)
        self.minimise(losses["loss"], round)
        return {name: value.detach() for name, value in losses.items()}


def test_a_learnable_writing_its_own_learn_steps_its_scheduler_through_minimise() -> None:
    run = trainer("epoch")
    own = OwnLearn("epoch")
    run = attrs.evolve(run, learnables=[own])
    run.fit()
    assert learning_rate(own.optimizer) == SHIFT_LR * 0.25


def through_disk(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("interval", ["epoch", "round"])
@pytest.mark.parametrize("stop", [3, 4], ids=["stop-at-epoch-end", "stop-mid-epoch"])
def test_a_run_stopped_and_resumed_equals_the_uninterrupted_one_bit_for_bit(
    interval: str, stop: int
) -> None:
    whole = trainer(interval).fit()
    expected = {**whole.state_dict(), "rng": get_rng_state()}

    first = trainer(interval, n_rounds=stop).fit()
    saved = through_disk({**first.state_dict(), "rng": get_rng_state()})
    resumed = trainer(interval)
    resumed.load_state_dict(saved)
    set_rng_state(saved["rng"])
    resumed.fit()
    got = {**resumed.state_dict(), "rng": get_rng_state()}

    assert first_difference(expected, got) is None, first_difference(expected, got)
    # what was compared: both optimizers' schedulers and the epoch each was stepped to
    n_steps = 2 if interval == "epoch" else ROUNDS
    shift = expected["learnables"]["learnables.0"]
    for state in (expected, shift):
        assert state["scheduler"]["last_epoch"] == n_steps
        assert state["scheduler_epoch"] == (2 if interval == "epoch" else 0)
    assert learning_rate(resumed.optimizer) == ENERGY_LR * 0.5**n_steps


def test_checkpoints_from_before_schedulers_still_load() -> None:
    old = trainer("round", n_rounds=2).fit().state_dict()
    del old["scheduler"], old["scheduler_epoch"]
    del old["learnables"]["learnables.0"]["scheduler_epoch"]
    fresh = trainer("round")
    fresh.load_state_dict(old)
    assert fresh.round_index == 2 and fresh.scheduler_epoch == 0


def test_a_checkpoint_with_an_energy_scheduler_is_refused_by_a_config_without_one() -> None:
    state = trainer("round", n_rounds=1).fit().state_dict()
    plain = attrs.evolve(trainer("round"), scheduler=None)
    with pytest.raises(ValueError, match=r"bind the same trainers\.Contrastive\.scheduler"):
        plain.load_state_dict(state)


def test_an_unknown_interval_is_refused_naming_the_choices() -> None:
    choices = r"scheduler_interval must be one of \('round', 'epoch'\), got 'batch'"
    with pytest.raises(ValueError, match=choices):
        trainer("batch")
    with pytest.raises(ValueError, match="Shift: " + choices):
        Shift("batch")


def test_a_scheduler_instead_of_a_factory_is_refused_saying_how_to_bind_one() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(TypeError, match=r"without parentheses, e\.g\. @torch\.optim"):
        LearnableModule(scheduler=halving(optimizer))


def test_an_epoch_scheduler_refuses_a_round_that_does_not_say_its_epoch() -> None:
    shift = Shift("epoch")
    round = finished_round(3, None, attrs.make_class("Result", ["x"])(torch.zeros(4, 2)))
    with pytest.raises(ValueError, match=r"round 3 does not say which epoch .*Round\.epoch"):
        shift.learn(round)
    shift.learn(attrs.evolve(round, epoch=0))  # with it, it learns


# -- gin ---------------------------------------------------------------------------------------


GIN_LINES = [
    "trainers.Contrastive.dataset = @datasets.EightGaussians()",
    "trainers.Contrastive.sampler = @samplers.Langevin()",
    "trainers.Contrastive.initializer = @initializers.Noise()",
    "trainers.Contrastive.energy = @energies.MLP()",
    f"trainers.Contrastive.batch_size = {BATCH}",
    "trainers.Contrastive.n_rounds = 7",
    "trainers.Contrastive.scheduler = @torch.optim.lr_scheduler.ExponentialLR",
    "trainers.Contrastive.scheduler_interval = 'epoch'",
    "torch.optim.lr_scheduler.ExponentialLR.gamma = 0.5",
    "energies.MLP.hidden = (8, 8)",
    f"datasets.EightGaussians.n_samples = {N_SAMPLES}",
    "samplers.Langevin.step_size = 0.01",
    "samplers.Langevin.n_steps = 2",
    "experiment.seed = 5",
    "experiment.log_every = 1",
    "experiment.eval_every = 1000",
    "experiment.sample_every = 1000",
    "experiment.checkpoint_every = 1",
    "experiment.keep_checkpoints = 100",
]


def write_config(folder: Path) -> Path:
    return write_lines(folder, "scheduled.gin", [f"include '{TOY_GIN}'", *GIN_LINES])


@pytest.mark.usefixtures("builtin_registry")
def test_a_config_binds_a_torch_scheduler_as_a_factory(tmp_path: Path) -> None:
    built = build_configured(write_config(tmp_path), "trainers.Contrastive")
    assert isinstance(built.lr_scheduler, torch.optim.lr_scheduler.ExponentialLR)
    assert built.lr_scheduler.gamma == 0.5 and built.scheduler_interval == "epoch"


@pytest.mark.usefixtures("builtin_registry")
def test_a_configured_run_resumes_its_epoch_scheduler_bit_for_bit(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert run_cli(["run", str(config), "--out", str(whole)])[0] == 0
    assert run_cli(["run", str(config), "--out", str(parts), "--rounds", "4"])[0] == 0
    status, _, err = run_cli(["run", str(config), "--out", str(parts), "--resume"])
    assert status == 0, err
    expected, got = checkpoint(whole, ROUNDS), checkpoint(parts, ROUNDS)
    assert first_difference(expected, got) is None, first_difference(expected, got)
    assert expected["scheduler"]["last_epoch"] == 2 and expected["scheduler_epoch"] == 2
    assert (
        "@torch.optim.lr_scheduler.ExponentialLR" in (whole / "operative_config.gin").read_text()
    )


def test_a_flow_passes_its_scheduler_interval_on() -> None:
    from ebmkit.flows import ElementwiseAffine

    flow = ElementwiseAffine(event_shape=(2,), scheduler=halving, scheduler_interval="epoch")
    assert flow.scheduler_interval == "epoch"
    with pytest.raises(ValueError, match="scheduler_interval must be one of"):
        ElementwiseAffine(event_shape=(2,), scheduler_interval="batch")


@pytest.mark.usefixtures("builtin_registry")
def test_a_learnables_gin_scheduler_is_in_the_saved_config_and_sample_rebuilds_it(
    tmp_path: Path,
) -> None:
    """A flow's StepLR, bound only in gin and used by no other component, is called when the
    trainer is built, so the operative config saved in checkpoints holds its step_size and
    `ebmkit sample` can rebuild the run (it failed with "StepLR missing step_size")."""
    config = write_lines(
        tmp_path,
        "flow.gin",
        [
            *FLOW_TOY_LINES,
            "flows.Affine.scheduler = @torch.optim.lr_scheduler.StepLR",
            "torch.optim.lr_scheduler.StepLR.step_size = 7",
        ],
    )
    run = tmp_path / "run"
    status, _, err = run_cli(["run", str(config), "--out", str(run), "--rounds", "2"])
    assert status == 0, err
    assert "StepLR.step_size = 7" in checkpoint(run, 2)["operative_config"]
    status, _, err = run_cli(["sample", str(run), "--n", "8", "--out", str(tmp_path / "s")])
    assert status == 0, err
