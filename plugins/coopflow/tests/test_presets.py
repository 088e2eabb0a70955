"""CoopFlow's two Langevin presets bind the updates they claim (one step against the equation).

- gin/coopflow_eight_gaussians.gin (the paper): x ← x − (s²/2)·∇E(x) + s·ε, h = s²/2 = 0.01.
- gin/coopflow_code_eight_gaussians.gin (the code, toy): x ← x − clamp(h·∇E(x), ±0.1), no
  noise, no clamp of x.
- gin/coopflow_cifar10.gin (the code, images): x ← clamp(x − clamp(h·∇E(x), ±0.1), −1, 1) with
  h = s²/2, s = 0.03.
Each is checked on an energy with large gradients, so a missing drift clamp, a missing x clamp
or noise left on would show.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ebmkit.config import build_configured
from ebmkit.samplers.langevin import Langevin

GIN = Path(__file__).resolve().parents[3] / "gin"
needs_repository = pytest.mark.skipif(not GIN.is_dir(), reason="needs the repository's gin/")


def steep(x: torch.Tensor) -> torch.Tensor:
    """E(x) = 50·Σ x³ + 2·Σ x: gradients from 2 to several hundred, both signs of x."""
    flat = x.flatten(1)
    return 50 * flat.pow(3).sum(1) + 2 * flat.sum(1)


def one_step(sampler: Langevin, x: torch.Tensor, seed: int) -> torch.Tensor:
    return sampler.sample(steep, x, 1, generator=torch.Generator().manual_seed(seed)).x


def gradient(x: torch.Tensor) -> torch.Tensor:
    return 150 * x.square() + 2


@needs_repository
def test_paper_preset_is_ula_with_step_s2_over_2_and_noise_s() -> None:
    sampler = build_configured(GIN / "coopflow_eight_gaussians.gin", "samplers.Langevin")
    x = torch.linspace(-1.5, 1.5, 40, dtype=torch.float64).reshape(20, 2)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=x.dtype)
    s = 0.02**0.5  # h = s²/2 = 0.01
    expected = x - (s**2 / 2) * gradient(x) + s * noise
    torch.testing.assert_close(one_step(sampler, x, 3), expected)


@needs_repository
@pytest.mark.parametrize(
    ("config", "step", "x_clamp"),
    [("coopflow_code_eight_gaussians.gin", 0.01, None), ("coopflow_cifar10.gin", 0.00045, 1.0)],
)
def test_code_preset_clamps_the_drift_adds_no_noise_and_clamps_images(
    config: str, step: float, x_clamp: float | None
) -> None:
    sampler = build_configured(GIN / config, "samplers.Langevin")
    x = torch.linspace(-1.5, 1.5, 40, dtype=torch.float64).reshape(20, 2)
    expected = x - (step * gradient(x)).clamp(-0.1, 0.1)
    if x_clamp is not None:
        expected = expected.clamp(-x_clamp, x_clamp)
    result = one_step(sampler, x, 3)
    torch.testing.assert_close(result, expected)
    assert torch.equal(result, one_step(sampler, x, 4))  # deterministic: no noise
    clamped = (step * gradient(x)).abs() > 0.1
    assert clamped.any() and (~clamped).any()  # both branches of the drift clamp are exercised
