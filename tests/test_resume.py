"""Exact resume (bit for bit, across loader epochs), atomic checkpoints, the divergence guard."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import (
    TOY_GIN,
    checkpoint,
    first_difference,
    metrics_lines,
    on_sys_path,
    run_cli,
    write_distribution,
    write_lines,
)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import TensorDataset

from ebmkit.checkpoint.files import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from ebmkit.data.loader import ResumableLoader
from ebmkit.errors import CheckpointError

pytestmark = pytest.mark.usefixtures("builtin_registry")

BATCH = 32
N_SAMPLES = 96  # three batches an epoch: the runs below cross epoch boundaries


def write_config(folder: Path, name: str, lines: Sequence[str]) -> Path:
    return write_lines(folder, name, [f"include '{TOY_GIN}'", *lines])


def toy_lines(sampler: str = "Langevin", energy: str = "MLP") -> list[str]:
    """A tiny replay-buffer run on 96 points (3 batches an epoch), checkpoints every round."""
    return [
        "trainers.Contrastive.dataset = @datasets.EightGaussians()",
        f"trainers.Contrastive.sampler = @samplers.{sampler}()",
        "trainers.Contrastive.initializer = @initializers.Replay()",
        f"trainers.Contrastive.energy = @energies.{energy}()",
        f"trainers.Contrastive.batch_size = {BATCH}",
        "trainers.Contrastive.n_rounds = 10",
        f"energies.{energy}.hidden = (16, 16)",
        f"datasets.EightGaussians.n_samples = {N_SAMPLES}",
        f"samplers.{sampler}.step_size = 0.01",
        f"samplers.{sampler}.n_steps = 3",
        "initializers.Replay.noise = @initializers.Noise()",
        "initializers.Replay.capacity = 64",
        "initializers.Noise.low = -3.0",
        "initializers.Noise.high = 3.0",
        "experiment.seed = 7",
        "experiment.log_every = 1",
        "experiment.eval_every = 1000",
        "experiment.sample_every = 1000",
        "experiment.checkpoint_every = 1",
        "experiment.keep_checkpoints = 100",
    ]


# -- the comparison helper itself ------------------------------------------------------------


def test_first_difference_names_the_first_differing_key() -> None:
    state = {
        "round": 3,
        "energy": {"w": torch.arange(4.0), "b": torch.zeros(1)},
        "rng": {"python": (3, (1, 2, 3), None), "numpy": {"position": 5}},
    }
    same = {
        "round": 3,
        "energy": {"w": torch.arange(4.0), "b": torch.zeros(1)},
        "rng": {"python": (3, (1, 2, 3), None), "numpy": {"position": 5}},
    }
    assert first_difference(state, same) is None
    bit = torch.arange(4.0)
    bit[2] = torch.nextafter(bit[2], torch.tensor(10.0))
    assert first_difference(state, {**same, "energy": {"w": bit, "b": torch.zeros(1)}}) == (
        "['energy']['w']: tensor values differ"
    )
    dtype = {"w": torch.arange(4.0).double(), "b": torch.zeros(1)}
    assert first_difference(state, {**same, "energy": dtype}) == (
        "['energy']['w']: torch.float32(4,) vs torch.float64(4,)"
    )
    python = {"python": (3, (1, 2, 4), None), "numpy": {"position": 5}}
    assert first_difference(state, {**same, "rng": python}) == "['rng']['python'][1][2]: 3 vs 4"
    assert first_difference(state, {**same, "round": 3.0}) == "['round']: 3 vs 3.0"
    assert first_difference(state, {"round": 3, "energy": same["energy"]}).startswith(
        "<root>: keys ['round', 'energy', 'rng'] vs ['round', 'energy']"
    )
    nan = torch.tensor([float("nan")])
    assert first_difference(nan, nan.clone()) == "<root>: tensor values differ"  # NaN != NaN


# -- exact resume ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sampler", "stops"),
    [
        pytest.param("Langevin", (2, 4), id="langevin-stop-mid-epoch"),
        pytest.param("Langevin", (3, 6), id="langevin-stop-at-epoch-end"),
        pytest.param("Langevin", (1, 4, 5), id="langevin-resume-twice", marks=pytest.mark.slow),
        pytest.param("MALA", (2, 4), id="mala-stop-mid-epoch"),
    ],
)
def test_a_resumed_run_equals_an_uninterrupted_one_bit_for_bit(
    tmp_path: Path, sampler: str, stops: tuple[int, ...]
) -> None:
    config = write_config(tmp_path, "resume.gin", toy_lines(sampler))
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    final = stops[-1]
    assert run_cli(["run", str(config), "--out", str(whole), "--rounds", str(final)])[0] == 0
    for number, stop in enumerate(stops):
        argv = ["run", str(config), "--out", str(parts), "--rounds", str(stop)]
        status, _, err = run_cli(argv + (["--resume"] if number else []))
        assert status == 0, err
    for round_index in range(stops[0] + 1, final + 1):
        expected, resumed = checkpoint(whole, round_index), checkpoint(parts, round_index)
        if round_index <= stops[-2]:  # written by a middle segment, whose n_rounds was smaller
            expected.pop("operative_config"), resumed.pop("operative_config")
        difference = first_difference(expected, resumed)
        assert difference is None, f"round {round_index}: {difference}"
    # what the comparison covered: every part of the state a resume has to restore
    state = checkpoint(whole, final)
    assert state["round"] == final
    assert state["loader"]["epoch"] == (final - 1) // (N_SAMPLES // BATCH)
    assert state["loader"]["epoch"] >= 1
    assert set(state["energy"]) == {f"net.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")}
    assert len(state["optimizer"]["state"]) == 6
    assert {"exp_avg", "exp_avg_sq", "step"} <= set(state["optimizer"]["state"][0])
    assert int(state["optimizer"]["state"][0]["step"]) == final
    assert state["components"]["initializer"]["buffer"].shape == (64, 2)
    assert set(state["rng"]) >= {"python", "numpy", "torch"}
    # and it is not vacuous: consecutive rounds differ in all of these
    before = checkpoint(whole, final - 1)
    for key in ("energy", "optimizer", "loader", "components", "rng"):
        assert first_difference(state[key], before[key]) is not None, key
    # the run's log continues too: the resumed rounds log the same numbers (but the speed)
    assert logged_after(parts, stops[-2]) == logged_after(whole, stops[-2])


def logged_after(run: Path, round_index: int) -> list[dict[str, Any]]:
    """metrics.jsonl lines after `round_index`, without the wall-clock rate."""
    lines = metrics_lines(run)
    for line in lines:
        line.pop("perf/samples_per_s", None)
    return [line for line in lines if line["round"] > round_index]


@pytest.mark.parametrize("sabotage", ["rng", "loader"])
def test_the_comparison_catches_a_resume_that_forgets_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sabotage: str
) -> None:
    """A resume that skips the RNG states, or the loader's position, is not bit exact."""
    config = write_config(tmp_path, "resume.gin", toy_lines())
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert run_cli(["run", str(config), "--out", str(whole), "--rounds", "4"])[0] == 0
    assert run_cli(["run", str(config), "--out", str(parts), "--rounds", "2"])[0] == 0
    if sabotage == "rng":
        monkeypatch.setattr("ebmkit.runs.train.set_rng_state", lambda state: None)
    else:
        monkeypatch.setattr(ResumableLoader, "load_state_dict", lambda self, state: None)
    argv = ["run", str(config), "--out", str(parts), "--rounds", "4", "--resume"]
    assert run_cli(argv)[0] == 0
    difference = first_difference(checkpoint(whole, 3), checkpoint(parts, 3))
    assert difference is not None
    assert difference.startswith("['energy']")


# -- the loader ------------------------------------------------------------------------------


def _points() -> TensorDataset:
    x = torch.arange(20, dtype=torch.float32).reshape(10, 2)
    return TensorDataset(x, torch.arange(10))


@pytest.mark.parametrize("labelled", [False, True], ids=["tensor", "x-label"])
def test_the_loader_resumes_at_exactly_the_next_batch_across_epochs(labelled: bool) -> None:
    dataset = _points() if labelled else _points().tensors[0]
    n_batches = 13  # 3 batches of 3 an epoch (one item dropped): four epochs and one batch
    reference = ResumableLoader(dataset, 3, seed=5)
    stream = [next(reference) for _ in range(n_batches)]
    assert all(batch.shape == (3, 2) for batch in stream)
    epochs = [torch.cat(stream[i : i + 3])[:, 0].tolist() for i in range(0, 12, 3)]
    for epoch in epochs:
        assert len(set(epoch)) == 9  # each epoch: 9 distinct items, no repeats
    assert len({tuple(epoch) for epoch in epochs}) == 4  # every epoch its own order
    other_seed = ResumableLoader(dataset, 3, seed=6)
    assert any(not torch.equal(next(other_seed), batch) for batch in stream[:3])
    for k in range(n_batches + 1):
        torch.manual_seed(1000 + k)  # the global RNG plays no part
        first = ResumableLoader(dataset, 3, seed=5)
        taken = [next(first) for _ in range(k)]
        buffer = io.BytesIO()
        torch.save(first.state_dict(), buffer)  # through a checkpoint's serialisation
        buffer.seek(0)
        state = torch.load(buffer, weights_only=True)
        torch.manual_seed(2000 + k)
        second = ResumableLoader(dataset, 3, seed=5)
        second.load_state_dict(state)
        rest = [next(second) for _ in range(n_batches - k)]
        for index, (got, want) in enumerate(zip(taken + rest, stream, strict=True)):
            assert torch.equal(got, want), f"stopped after {k}: batch {index} differs"
        # taking the state did not disturb the first loader
        assert all(torch.equal(next(first), b) for b in stream[k : min(k + 4, n_batches)])


def test_the_loader_refuses_a_dataset_smaller_than_a_batch() -> None:
    with pytest.raises(ValueError, match="holds 2 items, fewer than batch_size=3"):
        ResumableLoader(torch.zeros(2, 2), 3)


# -- checkpoint files ------------------------------------------------------------------------


def _state(round_index: int) -> dict[str, Any]:
    return {"round": round_index, "energy": {"w": torch.full((64, 64), float(round_index))}}


def test_checkpoints_are_pruned_to_the_newest_keep(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    for round_index in (1, 2, 3, 10, 11):
        save_checkpoint(_state(round_index), folder, round_index, keep=2)
    assert [p.name for p in list_checkpoints(folder)] == ["round-00000010.pt", "round-00000011.pt"]
    assert sorted(p.name for p in folder.iterdir()) == ["round-00000010.pt", "round-00000011.pt"]
    assert latest_checkpoint(folder) == folder / "round-00000011.pt"
    loaded = load_checkpoint(folder / "round-00000011.pt")
    assert first_difference(loaded, _state(11)) is None


def _partial_then_fail(exception: BaseException) -> Any:
    real_save = torch.save

    def save(state: Any, stream: Any, *args: Any, **kwargs: Any) -> None:
        buffer = io.BytesIO()
        real_save(state, buffer)
        stream.write(buffer.getvalue()[: len(buffer.getvalue()) // 3])  # a third, then fail
        stream.flush()
        raise exception

    return save


@pytest.mark.parametrize(
    "exception", [OSError(28, "No space left on device"), KeyboardInterrupt()], ids=repr
)
def test_a_failure_mid_write_leaves_the_previous_checkpoints_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exception: BaseException
) -> None:
    folder = tmp_path / "checkpoints"
    for round_index in (1, 2, 3):
        save_checkpoint(_state(round_index), folder, round_index, keep=2)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert sorted(before) == ["round-00000002.pt", "round-00000003.pt"]
    monkeypatch.setattr(torch, "save", _partial_then_fail(exception))
    # a new round, and a rewrite of the newest round: neither may touch what is there
    expected = KeyboardInterrupt if isinstance(exception, KeyboardInterrupt) else CheckpointError
    for round_index in (4, 3):
        with pytest.raises(expected):
            save_checkpoint(_state(round_index + 100), folder, round_index, keep=2)
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # no temp files
    monkeypatch.undo()
    assert load_checkpoint(latest_checkpoint(folder))["round"] == 3
    assert first_difference(load_checkpoint(folder / "round-00000002.pt"), _state(2)) is None


def test_a_crash_mid_write_in_a_run_keeps_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, "crash.gin", toy_lines())
    out = tmp_path / "run"
    assert run_cli(["run", str(config), "--out", str(out), "--rounds", "2"])[0] == 0
    good = (out / "checkpoints" / "round-00000002.pt").read_bytes()
    monkeypatch.setattr(torch, "save", _partial_then_fail(OSError(28, "No space left on device")))
    status, _, err = run_cli(["run", str(config), "--out", str(out), "--rounds", "4", "--resume"])
    monkeypatch.undo()
    assert status == 1
    assert "ebmkit: error: could not write checkpoint" in err
    assert "No space left on device" in err and "are intact" in err and "Traceback" not in err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "round-00000001.pt",
        "round-00000002.pt",
    ]
    assert (out / "checkpoints" / "round-00000002.pt").read_bytes() == good
    status, _, err = run_cli(["run", str(config), "--out", str(out), "--rounds", "3", "--resume"])
    assert status == 0, err
    assert load_checkpoint(latest_checkpoint(out / "checkpoints"))["round"] == 3


@pytest.mark.parametrize(
    "content", [b"", b"garbage" * 100, None], ids=["empty", "garbage", "list"]
)
def test_loading_a_bad_checkpoint_names_the_file(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "round-00000001.pt"
    if content is None:
        torch.save([1, 2, 3], path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint {path} ")):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "round-00000002.pt")


# -- the divergence guard --------------------------------------------------------------------

NAN_MODULE = "ebmkit_test_nan_energy_plugin"
NAN_SOURCE = '''
    """A test plugin: MLP energies that go NaN in a chosen round, or are too stiff for a step."""
    import torch

    import ebmkit
    from ebmkit.energies.mlp import MLPEnergy


    class NaNAfter(MLPEnergy):
        """MLP energy; from round `nan_round` on, its data and/or sample energies are NaN.

        The trainer evaluates the energy on the data batch, then on the samples, outside any
        sampler (inputs without requires_grad, grad enabled): two such calls a round.
        """

        def __init__(self, nan_round=3, where="samples", in_features=2, hidden=(16, 16)):
            super().__init__(in_features=in_features, hidden=hidden)
            self.nan_round, self.where, self.loss_calls = nan_round, where, 0

        def forward(self, x):
            energy = super().forward(x)
            if torch.is_grad_enabled() and not x.requires_grad:
                self.loss_calls += 1
                round_index = (self.loss_calls + 1) // 2
                part = "data" if self.loss_calls % 2 else "samples"
                if round_index >= self.nan_round and self.where in ("both", part):
                    energy = energy * float("nan")
            return energy


    class Stiff(MLPEnergy):
        """MLP energy plus ½·stiffness·|x|²: Langevin with a step above 2/stiffness explodes."""

        def __init__(self, stiffness=100.0, in_features=2, hidden=(16, 16)):
            super().__init__(in_features=in_features, hidden=hidden)
            self.stiffness = stiffness

        def forward(self, x):
            return super().forward(x) + 0.5 * self.stiffness * x.flatten(1).square().sum(1)


    @ebmkit.hookimpl
    def ebmkit_register(registry):
        registry.add("energy", "NaNAfter", NaNAfter)
        registry.add("energy", "Stiff", Stiff)
'''


@pytest.fixture(scope="module")
def nan_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """NaNAfter and Stiff as an installed plugin distribution (entry point `nantest`)."""
    site = tmp_path_factory.mktemp("nan_site")
    write_distribution(site, NAN_MODULE, "0.1", {"nantest": NAN_MODULE}, {NAN_MODULE: NAN_SOURCE})
    with on_sys_path(site):
        yield


@pytest.mark.parametrize(
    ("where", "named"),
    [
        ("samples", "sample energy, loss, parameter gradient"),
        ("data", "data energy, loss, parameter gradient"),
        ("both", "data energy, sample energy, loss, parameter gradient"),
    ],
)
def test_a_nan_energy_stops_the_run_at_the_round_it_appears(
    nan_plugin: None, tmp_path: Path, where: str, named: str
) -> None:
    lines = toy_lines(energy="NaNAfter") + [
        "energies.NaNAfter.nan_round = 3",
        f"energies.NaNAfter.where = '{where}'",
    ]
    config = write_config(tmp_path, "nan.gin", lines)
    out = tmp_path / "run"
    status, stdout, err = run_cli(["run", str(config), "--out", str(out)])
    assert (status, stdout) == (1, "")
    assert err.count("ebmkit: error:") == 1 and "Traceback" not in err
    message = err[err.index("ebmkit: error: ") :]
    assert message.startswith(
        f"ebmkit: error: round 3: non-finite {named}; training stopped (the checkpoint of "
        f"round 2 is kept, round-00000002.pt; --resume continues from it)."
    )
    # the checkpoints before the round are kept, and none of it or later exists
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "round-00000001.pt",
        "round-00000002.pt",
    ]
    state = load_checkpoint(out / "checkpoints" / "round-00000002.pt")
    assert state["round"] == 2
    assert all(bool(tensor.isfinite().all()) for tensor in state["energy"].values())
    logged = metrics_lines(out)
    assert [line["round"] for line in logged] == [1, 2]
    accumulator = EventAccumulator(str(out / "tb"))
    accumulator.Reload()
    assert [event.step for event in accumulator.Scalars("energy/gap")] == [1, 2]


def test_an_energy_gap_beyond_its_bound_stops_the_first_round(tmp_path: Path) -> None:
    lines = toy_lines() + ["trainers.Contrastive.max_energy_gap = 1e-9"]
    config = write_config(tmp_path, "gap.gin", lines)
    out = tmp_path / "run"
    status, stdout, err = run_cli(["run", str(config), "--out", str(out)])
    assert (status, stdout) == (1, "")
    message = err[err.index("ebmkit: error: ") :]
    assert re.match(
        r"ebmkit: error: round 1: energy gap -?[0-9.e+-]+ exceeds max_energy_gap = 1e-09; "
        r"training stopped \(no checkpoint was written before this round\)",
        message,
    ), message
    assert not (out / "checkpoints").exists()
    assert not (out / "metrics.jsonl").exists()


# -- rolling back a divergence ---------------------------------------------------------------

ROLLBACK_LINES = [
    "samplers.Langevin.step_size = 0.05",  # 5 × 2/stiffness: each step multiplies |x| by 4
    "trainers.Contrastive.max_energy_gap = 1000.0",
    "experiment.on_divergence = 'rollback'",
]


def test_rollback_shrinks_the_step_until_the_run_is_stable(
    nan_plugin: None, tmp_path: Path
) -> None:
    config = write_config(tmp_path, "stiff.gin", toy_lines(energy="Stiff") + ROLLBACK_LINES)
    out = tmp_path / "run"
    status, _, err = run_cli(["run", str(config), "--out", str(out), "--rounds", "4"])
    assert status == 0, err
    # step 0.05 (factor 1 − 5 = −4 per step) and 0.025 (−1.5) explode; 0.0125 (−0.25) is stable
    assert err.count("rolled back to round 0 (round-00000000.pt)") == 2
    assert "step size ×0.5 → 0.025 (rollback 1 of 3)" in err
    assert "step size ×0.5 → 0.0125 (rollback 2 of 3)" in err
    assert "round 1: energy gap" in err and "ebmkit: error" not in err
    final = load_checkpoint(out / "checkpoints" / "round-00000004.pt")
    assert final["divergence"] == {"rollbacks": 2, "factor": 0.5}
    accumulator = EventAccumulator(str(out / "tb"))
    accumulator.Reload()
    assert [event.step for event in accumulator.Scalars("energy/gap")] == [1, 2, 3, 4]


def test_a_resumed_rolled_back_run_keeps_the_smaller_step_bit_for_bit(
    nan_plugin: None, tmp_path: Path
) -> None:
    config = write_config(tmp_path, "stiff.gin", toy_lines(energy="Stiff") + ROLLBACK_LINES)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert run_cli(["run", str(config), "--out", str(whole), "--rounds", "6"])[0] == 0
    assert run_cli(["run", str(config), "--out", str(parts), "--rounds", "3"])[0] == 0
    status, _, err = run_cli(
        ["run", str(config), "--out", str(parts), "--rounds", "6", "--resume"]
    )
    assert status == 0, err
    assert "rolled back" not in err  # the resumed run starts with step 0.0125 already
    final = "checkpoints/round-00000006.pt"
    assert first_difference(load_checkpoint(whole / final), load_checkpoint(parts / final)) is None


def test_rollback_gives_up_after_max_rollbacks(nan_plugin: None, tmp_path: Path) -> None:
    lines = toy_lines(energy="NaNAfter") + [
        "energies.NaNAfter.nan_round = 3",
        "experiment.on_divergence = 'rollback'",
        "experiment.max_rollbacks = 2",
    ]
    config = write_config(tmp_path, "nan.gin", lines)
    out = tmp_path / "run"
    status, stdout, err = run_cli(["run", str(config), "--out", str(out)])
    assert (status, stdout) == (1, "")
    assert err.count("rolled back to round 2 (round-00000002.pt)") == 2
    assert err.count("ebmkit: error:") == 1 and "Traceback" not in err
    message = err[err.index("ebmkit: error: ") :]
    assert "non-finite sample energy" in message
    assert (
        "[after 2 rollback(s), step size 0.0025]; training stopped (the checkpoint of " in message
    )
    assert "Raise experiment.max_rollbacks" in message
    assert latest_checkpoint(out / "checkpoints").name == "round-00000002.pt"


def test_rollback_needs_a_sampler_that_can_shrink_its_step(
    nan_plugin: None, tmp_path: Path
) -> None:
    lines = toy_lines() + [
        "experiment.on_divergence = 'rollback'",
        "trainers.Contrastive.sampler = @samplers.Stanley()",
        "samplers.Stanley.legacy_code = True",
    ]
    config = write_config(tmp_path, "legacy.gin", lines)
    status, _, err = run_cli(["run", str(config), "--out", str(tmp_path / "run")])
    assert status == 1
    assert "on_divergence = 'rollback' shrinks the sampler's step, but" in err
    assert "legacy_code=True has no step size in its drift" in err
    assert not (tmp_path / "run").exists()
