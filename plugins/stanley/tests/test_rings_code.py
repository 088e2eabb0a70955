"""The authors' toy setup (gin/*_rings_code.gin) and the rings comparison script.

- The two code configs differ only in the sampler, bind the reference setup, and run.
- Their Langevin step is the reference update x − ∇f + 0.1ξ on the raw network f, draw for
  draw; their STANLEY step has the reference's γ and drift exactly, and noise ε·sqrt(γ).
- `benchmarks/stanley_rings_comparison.py {exact,code} --quick` prints its tables.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gin
from ebmkit.autograd import energy_and_grad
from ebmkit.samplers.langevin import Langevin
from ebmkit_stanley import Stanley, ToyNet, anisotropic_step_size, proposal_mean

ROOT = Path(__file__).resolve().parents[3]
GIN = ROOT / "gin"
CODE = {"Langevin": GIN / "langevin_rings_code.gin", "Stanley": GIN / "stanley_rings_code.gin"}
EPS, TH = 0.1, 0.05  # the reference launch script: --eps 0.1 --th 0.05
TEMPERATURE = EPS**2 / 2
needs_repository = pytest.mark.skipif(not GIN.is_dir(), reason="needs the repository's gin/")


def bindings(path: Path) -> set[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return {line for line in lines if line and not line.startswith("#")}


@needs_repository
def test_code_configs_differ_only_in_the_sampler() -> None:
    langevin, stanley = (bindings(path) for path in CODE.values())
    assert "trainers.Contrastive.sampler = @samplers.Stanley()" in stanley
    assert "trainers.Contrastive.sampler = @samplers.Langevin()" in langevin
    for line in langevin ^ stanley:
        assert line.startswith(("samplers.", "trainers.Contrastive.sampler =")), line


@needs_repository
@pytest.mark.parametrize("name", list(CODE))
def test_code_config_runs_the_reference_setup(name: str, tmp_path: Path) -> None:
    """`ebmkit run gin/<x>_rings_code.gin` runs; the operative config is the reference's."""
    from ebmkit.cli import main  # the `ebmkit` command, in process

    out = tmp_path / "run"
    try:
        assert main(["run", str(CODE[name]), "--rounds", "2", "--out", str(out)]) == 0
    finally:
        gin.clear_config()
    operative = (out / "operative_config.gin").read_text()
    for line in [
        "Contrastive.energy = @energies.ToyNet()",
        "TEMPERATURE = 0.005",
        "ToyNet.temperature = %TEMPERATURE",
        "Contrastive.batch_size = 100",
        "Contrastive.learning_rate = 0.0001",
        "Contrastive.betas = (0.9, 0.999)",
        "Contrastive.alpha = 0.0",
        "Contrastive.n_steps = 100",
        "Noise.distribution = 'gaussian'",
        "Noise.std = 2.0",
        "Rings.n_rings = 4",
        "Rings.radius = 1.0",
        "Rings.std = 0.15",
    ]:
        assert line in operative, line
    assert "Persistent" not in operative and "Replay" not in operative
    assert (out / "checkpoints" / "round-00000002.pt").is_file()


def raw_and_tempered(seed: int) -> tuple[ToyNet, ToyNet]:
    """The reference network f and the configs' E = f/T with the same weights (float64)."""
    torch.manual_seed(seed)
    raw = ToyNet().double()
    tempered = ToyNet(temperature=TEMPERATURE).double()
    tempered.load_state_dict(raw.state_dict())
    return raw, tempered


def test_the_langevin_config_step_is_the_reference_update_draw_for_draw() -> None:
    raw, tempered = raw_and_tempered(0)
    x = 2 * torch.randn(64, 2, dtype=torch.float64)
    sampler = Langevin(step_size=TEMPERATURE, noise_scale=EPS)
    moved = sampler.sample(tempered, x, 1, generator=torch.Generator().manual_seed(5)).x
    _, grad_f = energy_and_grad(raw, x)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=x.dtype)
    torch.testing.assert_close(moved, x - grad_f + EPS * noise, rtol=1e-12, atol=1e-12)


def test_the_stanley_config_has_the_reference_gamma_and_drift_and_noise_eps_sqrt_gamma() -> None:
    """Γ = 0.01·γ and ½Γ∇E = γ∇f exactly; the noise sd is ε·sqrt(γ), the reference's ε·γ."""
    raw, tempered = raw_and_tempered(1)
    x = 3 * torch.randn(256, 2, dtype=torch.float64)
    _, grad_f = energy_and_grad(raw, x)
    _, grad_e = energy_and_grad(tempered, x)
    # Scale f so that some points lie above the reference threshold and some below it.
    norm_f = torch.linalg.vector_norm(grad_f, dim=1, keepdim=True)
    scale = TH / norm_f.median()
    grad_f, grad_e = scale * grad_f, scale * grad_e
    norm_f = scale * norm_f
    assert (norm_f > TH).any() and (norm_f < TH).any()
    gamma_reference = TH / norm_f.clamp(min=TH)  # th / max(th, ‖∇f‖), one per sample
    sampler = Stanley(step_size=EPS**2, th=TH / TEMPERATURE, reduce="sample")
    gamma = anisotropic_step_size(grad_e, sampler.step_size, sampler.th, sampler.reduce)
    torch.testing.assert_close(gamma, EPS**2 * gamma_reference.expand_as(x), rtol=1e-12, atol=0)
    torch.testing.assert_close(
        proposal_mean(x, grad_e, gamma), x - gamma_reference * grad_f, rtol=1e-12, atol=1e-12
    )
    noise_sd = gamma.sqrt()
    torch.testing.assert_close(noise_sd, EPS * gamma_reference.sqrt().expand_as(x))
    below = (norm_f <= TH).squeeze(1)
    torch.testing.assert_close(noise_sd[below], (EPS * gamma_reference).expand_as(x)[below])
    assert (noise_sd[~below] > (EPS * gamma_reference).expand_as(x)[~below]).all()


@needs_repository
def test_the_stanley_config_binds_the_translated_settings() -> None:
    stanley = bindings(CODE["Stanley"])
    assert f"samplers.Stanley.step_size = {EPS**2:g}" in stanley
    assert f"samplers.Stanley.th = {TH / TEMPERATURE:.1f}" in stanley
    assert 'samplers.Stanley.reduce = "sample"' in stanley
    assert "TEMPERATURE = 0.005" in stanley and math.isclose(TEMPERATURE, 0.005)


@needs_repository
@pytest.mark.slow
@pytest.mark.parametrize(
    ("comparison", "rows"),
    [
        (
            "exact",
            [
                "ULA",
                "MALA",
                "STANLEY",
                "STANLEY + MH",
                "STANLEY elementwise",
                "STANLEY elementwise + MH",
            ],
        ),
        ("code", ["Langevin (their update)", "STANLEY (noise ε·sqrt(γ))"]),
    ],
)
def test_the_rings_comparison_quick_mode_prints_its_table(
    comparison: str, rows: list[str]
) -> None:
    script = ROOT / "benchmarks" / "stanley_rings_comparison.py"
    command = [sys.executable, str(script), comparison, "--quick", "--threads", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    tables = "\n".join(
        line for line in done.stdout.splitlines() if not line.startswith("seed ")
    ).split("| sampler |")[1:]
    assert len(tables) == 2  # mean ± sd, then paired differences to the first row
    scores = [line for line in tables[0].splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0][2:] for line in scores] == rows
    for line in scores:
        cells = line.strip("| ").split(" | ")
        assert cells[1] == "100"  # gradient evaluations per round, matched
        assert all(math.isfinite(float(cell)) for cell in cells[2:7]), line
    paired = [line for line in tables[1].splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0][2:] for line in paired] == [f"{r} − {rows[0]}" for r in rows[1:]]


@needs_repository
def test_rows_run_apart_are_tabulated_and_paired_together_from_their_logs(
    tmp_path: Path,
) -> None:
    script = ROOT / "benchmarks" / "stanley_rings_comparison.py"

    def line(seed: int, name: str, kl: float) -> str:
        scores = "mmd 0.1, sliced_wasserstein 0.1, mmd_model 0.1, sliced_wasserstein_model 0.1"
        return f"seed {seed} {name}: grad_evals 100, grid_kl {kl}, {scores}, rounds 600"

    first = tmp_path / "first.log"
    first.write_text("\n".join(line(seed, "ULA", 0.4 + seed / 10) for seed in (0, 1)) + "\n")
    later = tmp_path / "later.log"  # rows run later, with the first row run again
    later.write_text(
        "\n".join(line(s, "STANLEY elementwise", 0.3 + s / 5) for s in (0, 1))
        + f"\n{line(0, 'ULA', 0.4)}\n"
    )
    command = [sys.executable, str(script), "exact", "--from-log", str(first), str(later)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    assert "| ULA | 100 | 0.45 ± 0.071 |" in done.stdout
    assert "| STANLEY elementwise | 100 | 0.4 ± 0.14 |" in done.stdout
    # paired by seed: 0.3 − 0.4 and 0.5 − 0.5
    assert "| STANLEY elementwise − ULA | -0.05 ± 0.071 (1/2) |" in done.stdout
    later.write_text(line(0, "ULA", 0.41))  # the same run cannot score differently
    command = [sys.executable, str(script), "exact", "--from-log", str(first), str(later)]
    differ = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert differ.returncode != 0
    assert "seed 0 'ULA' is in two logs with different scores" in differ.stderr
    unknown = [sys.executable, str(script), "exact", "--rows", "STANLY", "--quick"]
    refused = subprocess.run(unknown, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0
    assert "no row ['STANLY'] in 'exact'; its rows are ['ULA', 'MALA'," in refused.stderr
