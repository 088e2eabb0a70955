"""The image configs (issue 9): the code's form and the paper's eq. 6, each run by one command.

- gin/stanley_flowers_paper.gin binds the paper's eq. 6 (legacy_code False, no MH) with
  ε = 9, th = 1e-4, reduce "channel": one step of its sampler is x − ½Γ∇E + Γ^½ξ with
  γ = ε·th/max(th, r) to rounding, and ε·th = 2·r_rms of a fresh ShortRunConvNet at U(−1, 1),
  so its drift is as long as the code's (the derivation of benchmarks/
  stanley_image_displacement.py); gin/stanley_flowers.gin stays the code's x − ∇E + Γ·0.01ξ.
- The two flowers configs differ only in the sampler lines.
- `ebmkit run gin/stanley_flowers_paper.gin` (and gin/stanley_flowers.gin) on a few Flowers102
  images written in torchvision's layout, found through $EBMKIT_DATA, exits 0 and writes a
  checkpoint and a sample grid.
- The displacement script prints its table (--quick).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from ebmkit.config import build_configured
from ebmkit.data.images import DATA_ROOT_ENV
from ebmkit.energies.shortrun import ShortRunConvNet
from ebmkit.registry import AUTOLOAD_ENV
from ebmkit.testing import write_flowers102
from ebmkit_stanley import Stanley, gradient_magnitude

ROOT = Path(__file__).resolve().parents[3]
GIN = ROOT / "gin"
PAPER, CODE = GIN / "stanley_flowers_paper.gin", GIN / "stanley_flowers.gin"
SCRIPT = ROOT / "benchmarks" / "stanley_image_displacement.py"
EPSILON, TH = 9.0, 1e-4  # the derived step: ε·th = 2·r_rms of a fresh network (see the script)
needs_repository = pytest.mark.skipif(not GIN.is_dir(), reason="needs the repository's gin/")


def config_sampler(path: Path) -> Stanley:
    """The `samplers.Stanley` that the config at `path` builds."""
    sampler = build_configured(path, "samplers.Stanley")
    assert isinstance(sampler, Stanley)
    return sampler


def bindings(path: Path) -> set[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return {line for line in lines if line and not line.startswith("#")}


@needs_repository
def test_paper_config_binds_eq6_with_the_derived_step() -> None:
    paper = config_sampler(PAPER)
    assert not paper.legacy_code and not paper.metropolis and paper.noise_scale is None
    assert (paper.step_size, paper.th, paper.reduce, paper.n_steps) == (
        EPSILON,
        TH,
        "channel",
        100,
    )
    assert paper.clamp is None  # as stanley_flowers.gin
    code = config_sampler(CODE)
    assert code.legacy_code and (code.step_size, code.th, code.noise_scale) == (1.0, TH, 0.01)
    assert code.reduce == "channel" and code.n_steps == 100


@needs_repository
def test_flowers_configs_differ_only_in_the_sampler_update() -> None:
    paper, code = bindings(PAPER), bindings(CODE)
    assert {line.split(" = ")[0] for line in paper ^ code} == {
        "samplers.Stanley.legacy_code",
        "samplers.Stanley.step_size",
        "samplers.Stanley.noise_scale",
    }


@needs_repository
def test_paper_config_step_is_eq6_on_the_image_network() -> None:
    """One step = x − ½Γ∇E + Γ^½ξ, γ = ε·th/max(th, ‖∇E‖ over channels), in float64."""
    sampler = config_sampler(PAPER)
    torch.manual_seed(0)
    energy = ShortRunConvNet(n_f=4).double().requires_grad_(False)
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64) * 2 - 1
    result = sampler.sample(energy, x, 1, generator=torch.Generator().manual_seed(5))
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(energy(xr).sum(), xr)
    r = grad.square().sum(1, keepdim=True).sqrt()
    gamma = EPSILON * TH / r.clamp(min=TH)
    xi = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    expected = x - 0.5 * gamma * grad + gamma.sqrt() * xi
    torch.testing.assert_close(result.x, expected, rtol=0, atol=1e-12)


@needs_repository
def test_derived_step_matches_the_code_drift_on_fresh_networks() -> None:
    """ε·th = 2·r_rms at U(−1, 1): eq. 6's drift per step is the code's ∇E within 15 %."""
    paper = config_sampler(PAPER)
    for seed in range(3):
        torch.manual_seed(seed)
        energy = ShortRunConvNet().requires_grad_(False)  # n_f = 64, as the configs
        x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1
        grad = paper.init(x, energy).grad
        r = gradient_magnitude(grad, "channel")[:, 0]
        r_rms = r.square().mean().sqrt().item()
        assert 0.85 < paper.step_size * paper.th / (2 * r_rms) < 1.15, (seed, r_rms)
        assert (r > paper.th).float().mean() > 0.9  # the regime γ = ε·th/r of the derivation
        drift = 0.5 * paper.step_sizes(grad) * grad
        ratio = drift.square().mean().sqrt() / grad.square().mean().sqrt()
        assert 0.85 < ratio.item() < 1.15, (seed, ratio)


def run_config(config: Path, data: Path, out: Path) -> subprocess.CompletedProcess:
    """`ebmkit run <config>` in a child process, data through $EBMKIT_DATA, tiny settings."""
    script = Path(sys.executable).with_name("ebmkit")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "ebmkit.cli"]
    fast = [
        'DEVICE = "cpu"',
        "energies.ShortRunConvNet.n_f = 8",
        "trainers.Contrastive.batch_size = 4",
        "datasets.Flowers102.in_memory = False",
        "samplers.Stanley.n_steps = 3",
    ]
    command += ["run", str(config), "--rounds", "2", "--out", str(out)]
    for binding in fast:
        command += ["--bind", binding]
    env = {**os.environ, DATA_ROOT_ENV: str(data), "OMP_NUM_THREADS": "1"}
    env.pop(AUTOLOAD_ENV, None)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@needs_repository
@pytest.mark.parametrize(
    "config, expected",
    [
        (PAPER, ["Stanley.legacy_code = False", "Stanley.step_size = 9.0"]),
        (CODE, ["Stanley.legacy_code = True", "Stanley.noise_scale = 0.01"]),
    ],
)
def test_flowers_config_runs_by_one_command(
    config: Path, expected: list[str], tmp_path: Path
) -> None:
    data = write_flowers102(tmp_path / "data")
    out = tmp_path / "run"
    done = run_config(config, data, out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "checkpoints" / "round-00000002.pt").is_file()
    grid = out / "samples" / "round-00000002.png"
    with Image.open(grid) as image:
        assert image.size[0] > 32  # a grid of 32×32 samples
    operative = (out / "operative_config.gin").read_text()
    for line in [*expected, "Stanley.th = 0.0001", "Stanley.reduce = 'channel'"]:
        assert line in operative, line
    assert "Flowers102.root = None" in operative  # the images came through $EBMKIT_DATA


@pytest.mark.slow
@needs_repository
def test_displacement_script_prints_its_table() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--threads", "1", "--quick"],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "matched drift: ε·th = 2·r_rms" in done.stdout
    assert "| fresh | 0 | code (channel) |" in done.stdout
    assert "| trained | 0 | paper ε=9 (the config) |" in done.stdout
