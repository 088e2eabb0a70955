"""CPMLA training (issue 14, item 4): Alg. 2's order through `trainers.Contrastive`, the
flow-alone trainer, the prt schedule, the toy configs (3 rounds, resume bit-identical) and the
reference's histogram grid KL."""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import gin
from ebmkit import Contrastive
from ebmkit.cli import main
from ebmkit.data.toy import EightGaussians
from ebmkit.energies.mlp import MLPEnergy
from ebmkit.initializers.flow import Flow
from ebmkit.registry import AUTOLOAD_ENV, reset_registry
from ebmkit_cpmla.cpflow import CPFlow
from ebmkit_cpmla.metrics import cell_centres, grid_density_kl, histogram_kl
from ebmkit_cpmla.mirror_langevin import MirrorLangevin
from ebmkit_cpmla.training import CPMLA, FlowOnly

GIN = Path(__file__).resolve().parents[3] / "gin"
DATA = {"radius": 4 / 1.414, "std": 0.5 / 1.414}


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    yield
    gin.clear_config()
    reset_registry()


def parts(fit_on: str = "both") -> dict[str, Any]:
    torch.manual_seed(0)
    flow = CPFlow(dim=2, hidden=8, depth=2, fit_on=fit_on, learning_rate=1e-2)
    return {
        "energy": MLPEnergy(hidden=(16,)),
        "sampler": MirrorLangevin(mirror=flow, step_size=0.01, n_steps=2),
        "initializer": Flow(flow=flow),
        "dataset": EightGaussians(n_samples=256, **DATA),
        "batch_size": 16,
        "learning_rate": 1e-2,
    }


def snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def moved(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


def test_alg2_order_flow_steps_before_the_ebm_and_both_see_the_same_samples() -> None:
    trainer = Contrastive(**parts(), learn_order="before_energy_step")
    flow, energy = trainer.initializer.flow, trainer.energy
    assert list(trainer.all_learnables) == ["initializer.flow"]  # one object, learns once
    assert trainer.sampler.mirror is flow
    seen: dict[str, Any] = {}
    training_points = flow.training_points

    def spy(round: Any) -> torch.Tensor:
        seen["flow"] = round.result.x
        return training_points(round)

    flow.training_points = spy
    flow_before, energy_before = snapshot(flow), snapshot(energy)
    work_round = None
    order = []
    from ebmkit import RoundWork

    work = RoundWork(index=1)
    for name, phase in trainer.phases():
        phase(work)
        order.append((name, moved(flow_before, flow), moved(energy_before, energy)))
        if name == "energy_loss":
            work_round = work.round
    names = [name for name, _, _ in order]
    assert names.index("learnables") < names.index("energy_step")
    learned = dict((name, (f, e)) for name, f, e in order)
    assert learned["learnables"] == (True, False)  # ϑ changed, θ not yet
    assert learned["energy_step"] == (True, True)
    assert seen["flow"] is work_round.result.x is work.result.x  # the same x̂
    flow_points = training_points(work_round)
    assert flow_points.shape[0] == 32  # data ∪ samples (fit_on "both")


def test_flow_only_takes_no_energy_step_and_is_scored_on_minus_log_q() -> None:
    settings = parts(fit_on="data")
    settings.pop("sampler")
    trainer = FlowOnly(**settings)
    flow, energy = trainer.initializer.flow, trainer.energy
    names = [name for name, _ in trainer.phases()]
    assert "energy_step" not in names and "sampler" not in names
    energy_before, flow_before = snapshot(energy), snapshot(flow)
    optimizer_state = trainer.optimizer.state_dict()
    round = trainer.train_round()
    round = trainer.train_round()
    assert not moved(energy_before, energy) and moved(flow_before, flow)
    assert trainer.optimizer.state_dict() == optimizer_state
    x = torch.randn(5, 2)
    expected = -flow.log_prob(x)
    assert torch.allclose(trainer.model_energy()(x), expected)
    assert round.energy_data.shape == (16,) and bool(round.energy_data.isfinite().all())
    assert "initializer.flow/loss" in round.losses and "loss/total" in round.losses
    assert round.result.x.shape == (16, 2)  # the flow's own samples
    with pytest.raises(TypeError, match="initializers.Flow"):
        FlowOnly(**{**settings, "initializer": object()})


def test_prt_schedule_switches_at_round_n() -> None:
    trainer = CPMLA(**parts(), pretrain_rounds=2, learn_order="before_energy_step")
    flow, energy = trainer.initializer.flow, trainer.energy
    sizes = []
    training_points = flow.training_points

    def spy(round: Any) -> torch.Tensor:
        points = training_points(round)
        sizes.append((flow.fit_on, points.shape[0]))
        return points

    flow.training_points = spy
    energy_before = snapshot(energy)
    phases = []
    for _ in range(2):
        phases.append([name for name, _ in trainer.phases()])
        trainer.train_round()
    assert not moved(energy_before, energy)
    assert flow.fit_on == "both"  # restored after each flow round
    phases.append([name for name, _ in trainer.phases()])
    trainer.train_round()
    assert moved(energy_before, energy)
    assert phases[0] == phases[1] and "energy_step" not in phases[0]
    assert phases[2] == [name for name, _ in Contrastive.phases(trainer)]
    assert sizes == [("data", 16), ("data", 16), ("both", 32)]


# The toy configs -----------------------------------------------------------------------------

SMALL = [
    "flows.CPFlow.depth = 2",
    "flows.CPFlow.hidden = 8",
    "experiment.checkpoint_every = 1",
    "experiment.log_every = 1",
    "experiment.eval_every = 3",
    "experiment.sample_every = 100",
]
CONFIGS = {
    "cpmla_eight_gaussians.gin": [],
    "cpmla_prt_eight_gaussians.gin": ["trainers.CPMLA.pretrain_rounds = 2"],
    "cpflow_eight_gaussians.gin": [],
}


def run(config: str, out: Path, rounds: int, *extra: str) -> str:
    argv = ["run", str(GIN / config), "--out", str(out), "--rounds", str(rounds)]
    for binding in [*SMALL, *CONFIGS[config]]:
        argv += ["--bind", binding]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = main([*argv, *extra])
    gin.clear_config()
    reset_registry()
    assert status == 0, stderr.getvalue()[-3000:]
    return stdout.getvalue()


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
        same = same and a.dtype == b.dtype and a.shape == b.shape
        if same:
            same = torch.equal(a.nan_to_num(nan=-1234.5), b.nan_to_num(nan=-1234.5))
        return [] if same else [path]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path} keys"]
        return [d for key in a for d in differences(a[key], b[key], f"{path}/{key}")]
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            return [f"{path} length"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y)]
    return [] if a == b else [path]


@pytest.mark.slow
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_toy_config_runs_3_rounds_and_resumes_bit_identically(config: str, tmp_path: Path) -> None:
    whole, split = tmp_path / "whole", tmp_path / "split"
    run(config, whole, 3)
    run(config, split, 2)
    run(config, split, 3, "--resume")
    load = lambda folder: torch.load(  # noqa: E731
        folder / "checkpoints" / "round-00000003.pt", weights_only=True
    )
    first, second = load(whole), load(split)
    for part in ("energy", "optimizer", "loader", "components", "learnables", "guard", "rng"):
        assert differences(first[part], second[part]) == [], part
    assert list(first["learnables"]) == ["initializer.flow"]  # the singleton, saved once
    import json

    lines = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    final = [line for line in lines if "metrics/histogram_kl" in line][-1]
    assert math.isfinite(final["metrics/histogram_kl"]) and final["round"] == 3
    assert math.isfinite(final["metrics/grid_density_kl"])


def cli(*argv: str) -> tuple[int, str]:
    stderr = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(stderr):
        status = main(list(argv))
    gin.clear_config()
    reset_registry()
    return status, stderr.getvalue()


def test_ebmkit_sample_on_a_flow_only_run_draws_the_flows_own_samples(tmp_path: Path) -> None:
    """A FlowOnly run has no sampler: `ebmkit sample` gives its flow's draws (it used to fail
    with AttributeError on `None.sample`), reproducibly, and refuses --steps."""
    import numpy as np

    run("cpflow_eight_gaussians.gin", tmp_path / "run", 2)
    drawn = []
    for name in ("a", "b"):
        status, stderr = cli(
            "sample", str(tmp_path / "run"), "--n", "20", "--out", str(tmp_path / name)
        )
        assert status == 0, stderr[-2000:]
        drawn.append(np.load(tmp_path / name / "samples.npy"))
    assert drawn[0].shape == (20, 2) and np.isfinite(drawn[0]).all()
    assert np.array_equal(drawn[0], drawn[1])
    assert drawn[0].std(axis=0).min() > 0.1  # distinct points, not one repeated start
    status, stderr = cli(
        "sample", str(tmp_path / "run"), "--n", "4", "--steps", "3", "--out", str(tmp_path / "c")
    )
    assert status == 1 and "this run has no sampler" in stderr and "leave --steps out" in stderr


# The metric ----------------------------------------------------------------------------------


class _Uniform:
    """A density flat on the square: p = 1/4 per cell of a 2 × 2 grid."""

    def log_density(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], dtype=x.dtype)


def test_histogram_kl_equals_a_hand_computation() -> None:
    # 2 × 2 cells on [0, 2]²: three samples in cell (0, 0), one in (1, 1), one outside.
    samples = torch.tensor([[0.5, 0.5], [0.2, 0.9], [0.1, 0.1], [1.5, 1.5], [3.0, 0.0]])
    q = torch.tensor([3.5, 0.5, 0.5, 1.5], dtype=torch.float64) / 6.0
    expected = float((0.25 * (math.log(0.25) - q.log())).sum())
    value = histogram_kl(samples, _Uniform(), bounds=(0.0, 2.0), bins=2)
    assert value == pytest.approx(expected, rel=1e-12)
    assert cell_centres((0.0, 2.0), 2).tolist() == [[0.5, 0.5], [1.5, 0.5], [0.5, 1.5], [1.5, 1.5]]
    # the grid-normalised density: q = softmax(−E) over the cells
    energy = lambda x: x[:, 0]  # noqa: E731
    q = torch.softmax(-torch.tensor([0.5, 1.5, 0.5, 1.5], dtype=torch.float64), 0)
    expected = float((0.25 * (math.log(0.25) - q.log())).sum())
    assert grid_density_kl(energy, _Uniform(), bounds=(0.0, 2.0), bins=2) == pytest.approx(
        expected, rel=1e-6
    )


def test_exact_samples_score_the_reference_floor() -> None:
    data = EightGaussians(n_samples=8, **DATA)
    values = [
        histogram_kl(data.sample(50000, torch.Generator().manual_seed(s)), data) for s in (0, 1, 2)
    ]
    assert all(abs(value - 0.036) < 0.0015 for value in values), values  # reference: 0.036
    exact = lambda x: -data.log_density(x)  # noqa: E731
    assert grid_density_kl(exact, data) == pytest.approx(0.0, abs=1e-12)
