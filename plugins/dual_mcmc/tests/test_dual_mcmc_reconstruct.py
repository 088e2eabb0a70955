"""`ebmkit eval reconstruct` on a tiny trained run: the JSON it prints, its seeding, the error
for a run without a generator, the split rules, and T6 (method reference §8) as a behaviour
check: with the posterior noise off the z-chain is gradient descent on U, so U(z) does not
increase along it."""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import gin
from ebmkit.registry import AUTOLOAD_ENV, reset_registry
from ebmkit_dual_mcmc.reconstruct import TABLE_4_NOTE, posterior_lambda_max

GIN = Path(__file__).resolve().parents[3] / "gin"
needs_repository = pytest.mark.skipif(not GIN.is_dir(), reason="needs the repository's gin/")

# A 3-round toy: the config's structure with a small batch and short chains.
SMALL_TOY = [
    "trainers.Contrastive.batch_size = 32",
    "samplers.Langevin.n_steps = 5",
    "experiment.log_every = 1",
    "experiment.eval_every = 100",
    "experiment.sample_every = 100",
]


def cli(argv: list[str]) -> tuple[int, str, str]:
    """`ebmkit ARGV` in this process; (exit status, stdout, stderr); gin cleared after."""
    from ebmkit.cli import main

    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(argv)
    finally:
        gin.clear_config()
    return status, out.getvalue(), err.getvalue()


def train(config: str, out: Path, rounds: int, bindings: list[str]) -> None:
    argv = ["run", str(GIN / config), "--out", str(out), "--rounds", str(rounds)]
    for binding in bindings:
        argv += ["--bind", binding]
    status, _, stderr = cli(argv)
    assert status == 0, stderr[-3000:]


def reconstruct(run: Path, *flags: str) -> dict:
    status, stdout, stderr = cli(["eval", "reconstruct", str(run), *flags])
    assert status == 0, stderr[-3000:]
    return json.loads(stdout)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """gin/dual_mcmc_eight_gaussians.gin trained 3 rounds (plugins autoloaded)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(AUTOLOAD_ENV, raising=False)
        out = tmp_path_factory.mktemp("reconstruct") / "toy"
        train("dual_mcmc_eight_gaussians.gin", out, 3, SMALL_TOY)
        yield out
        reset_registry()


@pytest.fixture
def autoload(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    yield
    gin.clear_config()
    reset_registry()


@needs_repository
@pytest.mark.usefixtures("autoload")
def test_the_json_reports_three_reconstructions_per_dimension(toy_run: Path) -> None:
    summary = reconstruct(toy_run, "--batches", "2", "--batch-size", "50", "--seed", "3")
    assert summary["round"] == 3
    assert summary["checkpoint"].endswith("round-00000003.pt")
    assert (summary["L"], summary["n"], summary["dimensions"]) == (10, 100, 2)
    assert summary["split"] == "test" and "fresh exact draws" in summary["data"]
    assert summary["note"] == TABLE_4_NOTE and "Table 4" in summary["note"]
    assert set(summary["mse"]) == {"inference", "inference+L", "noise+L"}
    for value in summary["mse"].values():
        assert math.isfinite(value) and value > 0
    # The trained posterior sampler, as the config binds it.
    assert summary["posterior_sampler"]["name"] == "Langevin"
    assert summary["posterior_sampler"]["step_size"] == pytest.approx(0.0004)
    assert summary["posterior_sampler"]["noise_scale"] == pytest.approx(math.sqrt(2 * 0.0004))
    assert len(summary["posterior_energy"]["mean_per_step"]) == 11
    stability = summary["stability"]
    assert stability["points"] == 50 and stability["lambda_max"] >= 1  # P = I + JᵀJ/σ² ≥ I
    assert stability["step_x_lambda_max"] == pytest.approx(0.0004 * stability["lambda_max"])
    # L = 0: every start's reconstruction is g(z0), so "inference+L" is "inference".
    none = reconstruct(toy_run, "--steps", "0", "--batches", "1")
    assert none["mse"]["inference+L"] == none["mse"]["inference"]


@needs_repository
@pytest.mark.usefixtures("autoload")
def test_the_same_seed_gives_the_same_numbers_and_another_seed_other_ones(
    toy_run: Path,
) -> None:
    first = reconstruct(toy_run, "--batches", "1", "--seed", "5")
    again = reconstruct(toy_run, "--batches", "1", "--seed", "5")
    other = reconstruct(toy_run, "--batches", "1", "--seed", "6")
    assert first == again
    assert other["mse"]["noise+L"] != first["mse"]["noise+L"]
    assert other["data"] != first["data"]  # other held-out draws


@needs_repository
@pytest.mark.usefixtures("autoload")
def test_with_the_posterior_noise_off_U_does_not_increase_along_the_chain(
    toy_run: Path,
) -> None:
    """T6: η = 0 and s·λ_max(P) < 1 make each step gradient descent on U (non-increasing)."""
    summary = reconstruct(toy_run, "--noise", "0", "--steps", "20", "--batches", "3")
    assert summary["posterior_sampler"]["noise_scale"] == 0.0
    assert summary["stability"]["step_x_lambda_max"] < 1
    trace = summary["posterior_energy"]["mean_per_step"]
    assert len(trace) == 21
    assert all(later <= earlier for earlier, later in zip(trace, trace[1:], strict=False))
    assert trace[-1] < trace[0]  # it descends
    assert summary["posterior_energy"]["max_increase_of_mean"] <= 0
    assert summary["posterior_energy"]["max_increase_per_point"] <= 1e-4  # float rounding only
    # With the trained noise on, the chain is no descent: some point's U rises in a step.
    noisy = reconstruct(toy_run, "--steps", "20", "--batches", "3")
    assert noisy["posterior_energy"]["max_increase_per_point"] > 0


@needs_repository
@pytest.mark.usefixtures("autoload")
def test_a_toy_run_reconstructs_its_stored_training_points_on_request(toy_run: Path) -> None:
    summary = reconstruct(toy_run, "--split", "train", "--batches", "1", "--batch-size", "40")
    assert (summary["split"], summary["n"]) == ("train", 40)
    assert "stored training points" in summary["data"]


@needs_repository
@pytest.mark.usefixtures("autoload")
def test_a_run_without_a_generator_gets_one_error_naming_both(tmp_path: Path) -> None:
    run = tmp_path / "langevin"
    train("langevin_eight_gaussians.gin", run, 1, ["trainers.Contrastive.batch_size = 16"])
    status, stdout, stderr = cli(["eval", "reconstruct", str(run)])
    assert status == 1 and stdout == ""
    (line,) = stderr.strip().splitlines()
    assert line.startswith("ebmkit: error: ebmkit eval reconstruct needs a Dual-MCMC run")
    assert "@initializers.Generator()" in line  # what is needed
    assert "@initializers.Replay()" in line  # what it found
    assert "round-00000001.pt" in line


@needs_repository
@pytest.mark.usefixtures("autoload")
def test_flags_out_of_range_are_refused(toy_run: Path) -> None:
    for flags in (["--steps", "-1"], ["--batches", "0"], ["--noise", "-0.1"]):
        status, _, stderr = cli(["eval", "reconstruct", str(toy_run), *flags])
        assert status == 1, flags
        assert stderr.startswith("ebmkit: error: ebmkit eval reconstruct"), stderr


@needs_repository
@pytest.mark.usefixtures("autoload")
def test_digits_have_no_held_out_split(tmp_path: Path) -> None:
    """datasets.Digits takes no split: the default uses its images, --split test is refused."""
    run = tmp_path / "digits"
    small = ["trainers.DualMCMC.batch_size = 16", "samplers.Langevin.n_steps = 2"]
    train("dual_mcmc_digits.gin", run, 1, small)
    summary = reconstruct(run, "--batches", "2", "--steps", "2")
    assert (summary["split"], summary["n"], summary["dimensions"]) == ("train", 32, 64)
    assert "split 'train'" in summary["data"]
    status, _, stderr = cli(["eval", "reconstruct", str(run), "--split", "test"])
    assert status == 1
    assert "has no held-out split" in stderr and "--split train" in stderr


def test_lambda_max_matches_the_closed_form_of_a_linear_generator() -> None:
    """P = I + WᵀW/σ² for g(z) = Wz + b: power iteration finds its largest eigenvalue."""
    torch.manual_seed(0)
    generator = torch.nn.Linear(4, 6)
    sigma = 0.3
    weight = generator.weight.detach().double()
    exact = torch.linalg.eigvalsh(torch.eye(4, dtype=torch.float64) + weight.T @ weight / sigma**2)
    estimated = posterior_lambda_max(generator, torch.randn(5, 4), sigma)
    assert estimated.shape == (5,)
    assert torch.allclose(estimated.double(), exact.max().expand(5), rtol=1e-4)
