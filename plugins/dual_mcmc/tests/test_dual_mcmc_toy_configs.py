"""The CPU configs of Dual-MCMC run through `ebmkit run` and resume bit for bit: the paper preset
on eight Gaussians (gin/dual_mcmc_eight_gaussians.gin), the code preset on it
(gin/dual_mcmc_code_eight_gaussians.gin) and the code preset on 8×8 digits
(gin/dual_mcmc_digits.gin). Each trains 3 rounds whole and 2 + 1 rounds with --resume; the two
final checkpoints agree in every part (energy, optimizers, loader, RNG, the generator, the
inference model and their Adam). The operative configs bind what the headers claim."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import gin
from ebmkit.registry import AUTOLOAD_ENV, reset_registry
from ebmkit.testing.states import first_difference

GIN = Path(__file__).resolve().parents[3] / "gin"
needs_repository = pytest.mark.skipif(not GIN.is_dir(), reason="needs the repository's gin/")

# (config, trainer configurable, a few smaller sizes for a fast test)
CONFIGS = {
    "dual_mcmc_eight_gaussians.gin": ("Contrastive", ["samplers.Langevin.n_steps = 4"]),
    "dual_mcmc_code_eight_gaussians.gin": ("DualMCMC", ["samplers.Langevin.n_steps = 4"]),
    "dual_mcmc_digits.gin": ("DualMCMC", ["samplers.Langevin.n_steps = 4"]),
}
PARTS = ("energy", "optimizer", "loader", "components", "learnables", "guard", "rng")


@pytest.fixture(autouse=True)
def autoload(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    yield
    gin.clear_config()
    reset_registry()


def run(config: str, out: Path, rounds: int, bindings: list[str], *extra: str) -> None:
    from ebmkit.cli import main

    argv = ["run", str(GIN / config), "--out", str(out), "--rounds", str(rounds), *extra]
    for binding in bindings:
        argv += ["--bind", binding]
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            status = main(argv)
    finally:
        gin.clear_config()
    assert status == 0, err.getvalue()[-3000:]


def checkpoint(out: Path, round_index: int) -> dict[str, Any]:
    return torch.load(out / "checkpoints" / f"round-{round_index:08d}.pt", weights_only=True)


@needs_repository
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_config_runs_three_rounds_and_resumes_bit_identically(config: str, tmp_path: Path) -> None:
    trainer, bindings = CONFIGS[config]
    bindings = [
        *bindings,
        f"trainers.{trainer}.batch_size = 32",
        "experiment.log_every = 1",
        # Rounds 2 and 3 evaluated and pictured in both runs (a run's last round always is):
        # the toy's metrics and density picture run the energy in train mode, which advances
        # spectral norm's power iteration, and its u vectors are in the checkpoint.
        "experiment.eval_every = 2",
        "experiment.sample_every = 2",
    ]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run(config, whole, 3, bindings)
    run(config, parts, 2, bindings)
    run(config, parts, 3, bindings, "--resume")
    first, second = checkpoint(whole, 3), checkpoint(parts, 3)
    (path,) = first["learnables"]  # one Learnable: the generator and inference model together
    assert path == "initializer"
    saved = first["learnables"][path]
    assert any(key.startswith("generator.") for key in saved["module"])
    assert any(key.startswith("inference.") for key in saved["module"])
    assert len(saved["optimizer"]["param_groups"]) == 2  # one Adam, a group per network
    for part in PARTS:
        assert first_difference(first[part], second[part]) is None, part
    lines = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    scalars = [line for line in lines if "energy/gap" in line]
    assert [line["round"] for line in scalars] == [1, 2, 3]
    for key in ("initializer/revision/energy_drop", "initializer/generator/loss"):
        assert all(key in line for line in scalars), key


def operative(config: str, tmp_path: Path) -> str:
    trainer, bindings = CONFIGS[config]
    out = tmp_path / "run"
    run(config, out, 1, [*bindings, f"trainers.{trainer}.batch_size = 8"])
    return (out / "operative_config.gin").read_text()


@needs_repository
def test_the_paper_toy_binds_the_paper_preset(tmp_path: Path) -> None:
    text = operative("dual_mcmc_eight_gaussians.gin", tmp_path)
    for line in [
        "experiment.trainer = @trainers.Contrastive()",
        "Contrastive.learn_order = 'before_energy_step'",
        "Contrastive.batch_size = 8",
        "Generator.loss_scaling = 'paper'",
        "Generator.lambda_data = 1.0",
        "Generator.lambda_teach = 1.0",
        "Generator.lambda_inference = 1.0",
        "Generator.sigma = 0.3",
        "MLP.spectral_norm = True",
    ]:
        assert line in text, line
    assert "Tempered" not in text
    # ULA at temperature 1: noise √(2s) (Langevin's default, so not bound).
    assert "samplers.Langevin.noise_scale" not in text


@needs_repository
@pytest.mark.parametrize("config", ["dual_mcmc_code_eight_gaussians.gin", "dual_mcmc_digits.gin"])
def test_the_code_presets_bind_the_tempered_energy_and_the_refresh(
    config: str, tmp_path: Path
) -> None:
    text = operative(config, tmp_path)
    for line in [
        "experiment.trainer = @trainers.DualMCMC()",
        "DualMCMC.energy = @energies.Tempered()",
        "DualMCMC.refresh_negatives = True",
        "Tempered.network = @energies.MLP()",
        "Generator.loss_scaling = 'code'",
        "Generator.nll_epsilon = 1e-06",
        "MLP.spectral_norm = True",
    ]:
        assert line in text, line
