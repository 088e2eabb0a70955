"""The cross-paper configs (issue 16, item 3): components of two papers combined by a gin file.

Each runs end to end through `ebmkit run` with tiny sizes bound by --bind (the image ones on a
folder the test writes in torchvision's format); the toy ones log their toy metrics; the
mission's example, CPMLA's mirror Langevin started from Dual-MCMC's generator, has two
Learnables saved by path and resumes bit-identically (both Learnables' parameters and
optimizers, the energy and its optimizer, the RNG)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from helpers import checkpoint, metrics_lines, run_cli

import gin
from ebmkit.config import parse_config
from ebmkit.registry import get_registry
from ebmkit.testing.fixtures import write_cifar10, write_flowers102
from ebmkit.testing.states import first_difference

pytestmark = pytest.mark.usefixtures("builtin_registry")

GIN = Path(__file__).resolve().parents[1] / "gin"
LOGGING = ["experiment.checkpoint_every = 1", "experiment.log_every = 1"]
TOY = {
    "cpmla_dual_mcmc_eight_gaussians.gin": [
        "flows.CPFlow.depth = 2",
        "flows.CPFlow.hidden = 8",
        "generators.MLP.hidden = (16,)",
        "inference_models.MLP.hidden = (16,)",
        "energies.MLP.hidden = (16,)",
        "trainers.Contrastive.batch_size = 16",
        "samplers.MirrorLangevin.n_steps = 3",
        "posterior/samplers.Langevin.n_steps = 2",
        "experiment.eval_every = 2",
        "experiment.sample_every = 100",
    ],
    "stanley_flow_mcmc_eight_gaussians.gin": [
        "flows.RealNVP.hidden_features = (8,)",
        "energies.MLP.hidden = (16,)",
        "trainers.Contrastive.batch_size = 16",
        "initializers.Persistent.n_chains = 32",
        "samplers.FlowMCMC.n_steps = 2",
        "experiment.eval_every = 2",
        "experiment.sample_every = 100",
    ],
}
IMAGE_NETS = [
    'DEVICE = "cpu"',
    "trainers.Contrastive.batch_size = 4",
    "generators.ResNet32.latent_dim = 8",
    "generators.ResNet32.channels = 8",
    "inference_models.Conv32.latent_dim = 8",
    "inference_models.Conv32.channels = 4",
    "posterior/samplers.Langevin.n_steps = 2",
    "experiment.sample_every = 2",
]
IMAGES = {
    "cpmla_dual_mcmc_cifar10.gin": [
        *IMAGE_NETS,
        "energies.CoopFlowResNet.n_f = 2",
        "flows.CPFlowImage.hidden = 4",
        "flows.CPFlowImage.blocks_per_scale = 1",
        "samplers.MirrorLangevin.n_steps = 2",
    ],
    "dual_mcmc_stanley_flowers.gin": [
        *IMAGE_NETS,
        "energies.ShortRunConvNet.n_f = 4",
        "samplers.Stanley.n_steps = 2",
    ],
}
# What a checkpoint holds of the training state (not the run's folder or its config text).
STATE = ("round", "energy", "optimizer", "scheduler", "loader", "components", "learnables")
STATE += ("guard", "rng")


def run(config: str, out: Path, rounds: int, bindings: list[str], *extra: str) -> None:
    """`ebmkit run GIN/config --out out --rounds rounds --bind ...` in this process."""
    argv = ["run", str(GIN / config), "--out", str(out), "--rounds", str(rounds), *extra]
    for binding in [*bindings, *LOGGING]:
        argv += ["--bind", binding]
    status, _, stderr = run_cli(argv)
    gin.clear_config()
    assert status == 0, stderr[-3000:]


def build(config: str, bindings: list[str]) -> Any:
    """The trainer `ebmkit run <config>` would build (nothing run)."""
    get_registry()
    parse_config(GIN / config, bindings)
    return gin.get_configurable("experiment")().trainer


def last_metrics(out: Path) -> dict[str, float]:
    """The last logged value of every key of the run's metrics.jsonl."""
    last: dict[str, float] = {}
    for line in metrics_lines(out):
        last.update(line)
    return last


def test_the_missions_example_builds_two_learnables_from_two_papers() -> None:
    trainer = build(
        "cpmla_dual_mcmc_eight_gaussians.gin", TOY["cpmla_dual_mcmc_eight_gaussians.gin"]
    )
    assert type(trainer.sampler).__name__ == "MirrorLangevin"
    assert type(trainer.sampler.mirror).__name__ == "CPFlow"
    assert type(trainer.initializer).__name__ == "Generator"
    assert sorted(trainer.all_learnables) == ["initializer", "sampler.mirror"]
    assert trainer.all_learnables["sampler.mirror"] is trainer.sampler.mirror
    # the mirror learns on data ∪ samples: it is no one's sampling flow here
    assert trainer.sampler.mirror.fit_on == "both"
    data = trainer.dataset
    assert (data.radius, data.std) == pytest.approx((4 / 1.414, 0.5 / 1.414))


def test_stanley_flow_mcmc_puts_stanley_with_mh_inside_flow_mcmc() -> None:
    config = "stanley_flow_mcmc_eight_gaussians.gin"
    trainer = build(config, TOY[config])
    local = trainer.sampler.stages["local"]
    assert type(trainer.sampler).__name__ == "FlowMCMC"
    assert type(local).__name__ == "Stanley" and local.metropolis
    assert sorted(trainer.all_learnables) == ["sampler.flow"]


@pytest.mark.slow
def test_cpmla_dual_mcmc_toy_reports_its_metrics_and_resumes_bit_identically(
    tmp_path: Path,
) -> None:
    config = "cpmla_dual_mcmc_eight_gaussians.gin"
    whole, split = tmp_path / "whole", tmp_path / "split"
    run(config, whole, 4, TOY[config])
    run(config, split, 2, TOY[config])
    run(config, split, 4, TOY[config], "--resume")
    first, second = checkpoint(whole, 4), checkpoint(split, 4)
    assert list(first["learnables"]) == ["initializer", "sampler.mirror"]
    for path, learnable in first["learnables"].items():
        assert learnable["optimizer"]["state"], f"{path} took no optimizer step"
    assert first["optimizer"]["state"], "the energy took no optimizer step"
    for part in STATE:
        assert first_difference(first[part], second[part], part) is None, part
    last = last_metrics(whole)
    for key in ("metrics/histogram_kl", "metrics/grid_density_kl", "metrics/grid_kl"):
        assert math.isfinite(last[key]), key
    assert last["sampler/grad_evals"] == 3.0  # init + 2 inner steps; none at the last point
    assert "initializer/generator/loss" in last and "sampler.mirror/loss" in last


@pytest.mark.slow
def test_stanley_flow_mcmc_toy_runs_and_reports_its_metrics(tmp_path: Path) -> None:
    config = "stanley_flow_mcmc_eight_gaussians.gin"
    run(config, tmp_path / "run", 2, TOY[config])
    last = last_metrics(tmp_path / "run")
    for key in ("metrics/histogram_kl", "metrics/grid_density_kl", "metrics/grid_kl"):
        assert math.isfinite(last[key]), key
    assert last["sampler/grad_evals"] == 1 + 2 * 6  # init, then per step 1 + 5 proposals
    assert 0.0 < last["FlowMCMC/local/acceptance"] <= 1.0
    assert list(checkpoint(tmp_path / "run", 2)["learnables"]) == ["sampler.flow"]


@pytest.mark.parametrize("config", sorted(IMAGES))  # tiny widths: ~1 s each
def test_image_combination_runs_two_rounds_on_a_written_folder(
    config: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    write_cifar10(data, per_batch=4)
    write_flowers102(data)
    monkeypatch.setenv("EBMKIT_DATA", str(data))
    run(config, tmp_path / "run", 2, IMAGES[config])
    saved = checkpoint(tmp_path / "run", 2)
    expected = ["initializer", "sampler.mirror"] if "cpmla" in config else ["initializer"]
    assert list(saved["learnables"]) == expected
    for path in expected:
        assert saved["learnables"][path]["optimizer"]["state"], path
    last = last_metrics(tmp_path / "run")
    assert last["round"] == 2 and math.isfinite(last["loss/total"])
    assert list((tmp_path / "run" / "samples").glob("*.png"))
