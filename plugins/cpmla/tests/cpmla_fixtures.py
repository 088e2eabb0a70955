"""Shared helpers of the CPMLA plugin's sampler, solver, Lanczos and mirror tests."""

from __future__ import annotations

import torch
from torch import Tensor

F64 = torch.float64

TARGET_MEAN = torch.tensor([0.5, -0.3], dtype=F64)
TARGET_COV = torch.tensor([[1.0, 0.6], [0.6, 0.5]], dtype=F64)
"""The reference's stationarity target N(μ, Σ), Σ = [[1, .6], [.6, .5]] (§5.6); μ is ours."""


def gaussian_energy(mean: Tensor, cov: Tensor):
    """E(x) = ½ (x − μ)ᵀΣ⁻¹(x − μ), (B, d) → (B,)."""
    precision = torch.linalg.inv(cov)

    def energy(x: Tensor) -> Tensor:
        offset = x - mean.to(x.dtype)
        return 0.5 * ((offset @ precision.to(x.dtype)) * offset).sum(1)

    return energy


def gaussian_samples(mean: Tensor, cov: Tensor, n: int, seed: int) -> Tensor:
    """`n` exact draws of N(mean, cov), float64."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, mean.numel(), generator=generator, dtype=F64)
    return mean + noise @ torch.linalg.cholesky(cov).T


def random_spd(batch: int, dim: int, low: float, high: float, seed: int) -> tuple[Tensor, ...]:
    """(H, its eigenvalues, its eigenvectors): `batch` random SPD matrices, spectra in
    [low, high] (the ends included), float64."""
    generator = torch.Generator().manual_seed(seed)
    vectors, _ = torch.linalg.qr(torch.randn(batch, dim, dim, generator=generator, dtype=F64))
    eigenvalues = low + (high - low) * torch.rand(batch, dim, generator=generator, dtype=F64)
    eigenvalues[:, 0], eigenvalues[:, -1] = low, high
    matrices = (vectors * eigenvalues[:, None, :]) @ vectors.mT
    return matrices, eigenvalues, vectors


def matrix_function(eigenvalues: Tensor, vectors: Tensor, function) -> Tensor:
    """U f(Λ) Uᵀ per batch entry."""
    return (vectors * function(eigenvalues)[:, None, :]) @ vectors.mT


def batched_times(matrices: Tensor):
    """The batched product v ↦ H v of per-chain matrices (B, D, D)."""

    def hvp(v: Tensor) -> Tensor:
        return (matrices @ v.unsqueeze(-1)).squeeze(-1)

    return hvp
