"""The flow configs of issue 13 run end to end and resume bit for bit: CoopFlow and flow-MCMC on
a CIFAR-10 folder written in torchvision's format, CoopFlow on eight Gaussians (both updates),
and the unbalanced-mixture pair (flow-MCMC vs short-run ULA)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import checkpoint, first_difference, metrics_lines, run_cli

from ebmkit.testing.fixtures import write_cifar10

pytestmark = pytest.mark.usefixtures("builtin_registry")

GIN = Path(__file__).resolve().parents[1] / "gin"

# Tiny models and batches: the configs' own structure (initializer, sampler, flow, Learnables,
# learn order) with sizes a CPU test affords.
SMALL_IMAGES = [
    'DEVICE = "cpu"',
    "trainers.Contrastive.batch_size = 4",
    "energies.ShortRunConvNet.n_f = 4",
    "flows.Glow.levels = 2",
    "flows.Glow.steps_per_level = 1",
    "flows.Glow.hidden_channels = 4",
    "experiment.checkpoint_every = 1",
    "experiment.log_every = 1",
    "experiment.sample_every = 1",
]
IMAGE_CONFIGS = {
    "coopflow_cifar10.gin": [*SMALL_IMAGES, "samplers.Langevin.n_steps = 2"],
    "flow_mcmc_cifar10.gin": [
        *SMALL_IMAGES,
        "samplers.FlowMCMC.n_steps = 1",
        "samplers.FlowMCMC.local_steps = 2",
        "initializers.Persistent.n_chains = 8",
    ],
}


def nan_marked(tree: Any) -> Any:
    """`tree` with NaN in floating tensors replaced by a marker, so "not set yet" entries of a
    persistent bank (NaN) compare equal when both runs left them unset."""
    if isinstance(tree, torch.Tensor):
        return tree.nan_to_num(nan=-1234.5) if tree.is_floating_point() else tree
    if isinstance(tree, dict):
        return {key: nan_marked(value) for key, value in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(nan_marked(value) for value in tree)
    return tree


def run(config: str, out: Path, rounds: int, bindings: list[str], *extra: str) -> str:
    argv = ["run", str(GIN / config), "--out", str(out), "--rounds", str(rounds), *extra]
    for binding in bindings:
        argv += ["--bind", binding]
    status, stdout, stderr = run_cli(argv)
    assert status == 0, stderr[-3000:]
    return stdout


@pytest.mark.slow
@pytest.mark.parametrize("config", sorted(IMAGE_CONFIGS))
def test_cifar10_config_runs_two_rounds_and_resumes_bit_identically(
    config: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EBMKIT_DATA", str(write_cifar10(tmp_path / "data", per_batch=4)))
    bindings = IMAGE_CONFIGS[config]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run(config, whole, 2, bindings)
    run(config, parts, 1, bindings)
    run(config, parts, 2, bindings, "--resume")
    first, second = checkpoint(whole, 2), checkpoint(parts, 2)
    learnables = first["learnables"]
    (flow_path,) = learnables  # the flow, found once, saved with its optimizer
    assert flow_path in ("initializer.flow", "sampler.flow")
    flow_state = learnables[flow_path]
    assert flow_state["optimizer"]["state"], "the flow took no optimizer step"
    assert bool(flow_state["module"]["initialized"])  # actnorm initialised on the data
    # Everything but the run's own record (its bindings, the same here) continues exactly:
    # energy, optimizer, loader, bank, flow and its Adam state, guard, RNG states.
    for part in ("energy", "optimizer", "loader", "components", "learnables", "guard", "rng"):
        assert first_difference(nan_marked(first[part]), nan_marked(second[part])) is None, part
    scalars = [line for line in metrics_lines(whole) if "energy/gap" in line]
    assert [line["round"] for line in scalars] == [1, 2]
    assert all(line[f"{flow_path}/loss"] == line[f"{flow_path}/loss"] for line in scalars)
    assert list((whole / "samples").glob("*.png"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "config", ["coopflow_eight_gaussians.gin", "coopflow_code_eight_gaussians.gin"]
)
def test_coopflow_toy_configs_train_the_flow_on_the_revised_samples(
    config: str, tmp_path: Path
) -> None:
    bindings = ["experiment.eval_every = 3", "trainers.Contrastive.batch_size = 64"]
    run(config, tmp_path / "run", 3, bindings)
    lines = metrics_lines(tmp_path / "run")
    scalars = [line for line in lines if "energy/gap" in line]
    assert "initializer.flow/forward_kl" in scalars[-1]
    assert scalars[-1]["sampler/grad_evals"] == 20.0  # the budget of langevin_eight_gaussians
    assert any("metrics/grid_kl" in line for line in lines)
    operative = (tmp_path / "run" / "operative_config.gin").read_text()
    code = config.startswith("coopflow_code")
    assert ("Langevin.noise_scale = 0.0" in operative) == code
    assert ("Langevin.grad_clip = 10.0" in operative) == code
    assert "Contrastive.learn_order = 'before_energy_step'" in operative


@pytest.mark.slow
@pytest.mark.parametrize("config", ["flow_mcmc_unbalanced.gin", "ula_unbalanced.gin"])
def test_unbalanced_configs_spend_the_same_gradients_per_round(
    config: str, tmp_path: Path
) -> None:
    run(config, tmp_path / "run", 2, ["experiment.eval_every = 2"])
    lines = metrics_lines(tmp_path / "run")
    scalars = [line for line in lines if "energy/gap" in line]
    assert scalars[-1]["sampler/grad_evals"] == 25.0
    flow = config.startswith("flow_mcmc")
    assert (scalars[-1]["sampler/flow_evals"] > 0) == flow
    assert (scalars[-1]["sampler/energy_evals"] > 0) == flow
    final = [line for line in lines if "metrics/density_mode_weight_error" in line][-1]
    assert 0 <= final["metrics/density_mode_weight_error"] <= 2


def test_a_gin_singleton_flow_shared_by_two_components_learns_and_is_saved_once(
    tmp_path: Path,
) -> None:
    shared = [
        "SHARED = @shared/singleton()",
        "shared/singleton.constructor = @flows.RealNVP",
        "initializers.Flow.flow = %SHARED",
        "trainers.Contrastive.learnables = [%SHARED]",
        "trainers.Contrastive.batch_size = 32",
        "experiment.eval_every = 100",
    ]
    run("coopflow_eight_gaussians.gin", tmp_path / "run", 2, shared)
    saved = checkpoint(tmp_path / "run", 2)["learnables"]
    assert list(saved) == ["initializer.flow"]  # the first path; not again as learnables.0
    steps = {
        int(state["step"]) for state in saved["initializer.flow"]["optimizer"]["state"].values()
    }
    assert steps == {2}  # one Adam step per round, not two
