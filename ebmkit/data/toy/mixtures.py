"""Toy sets that are isotropic Gaussian mixtures: eight Gaussians and unequal weights."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ebmkit.data.toy.base import (
    _BOUNDS_STDS,
    GaussianMixture2D,
    ToyDataset,
    _as_float64,
    _require_positive,
    _round_out,
)

__all__ = ["EightGaussians", "GaussianMixture"]


class _GaussianMixtureDataset(ToyDataset):
    """Shared implementation for toy sets that are isotropic Gaussian mixtures."""

    _mixture: GaussianMixture2D

    @property
    def mixture(self) -> GaussianMixture2D:
        """The exact mixture record (means, stds, weights)."""
        return self._mixture

    @property
    def bounds(self) -> tuple[float, float]:
        """Square holding every component mean +- 5 std, rounded out to 0.5."""
        margin = _BOUNDS_STDS * self._mixture.stds[:, None]
        lo = float((self._mixture.means - margin).min())
        hi = float((self._mixture.means + margin).max())
        return _round_out(lo, hi)

    def _sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        return self._mixture.sample(n, generator)

    def _log_density(self, x: Tensor) -> Tensor:
        return self._mixture.log_density(x)


class EightGaussians(_GaussianMixtureDataset):
    """Eight equal-weight isotropic Gaussians at angles 2*pi*k/8 on a circle."""

    def __init__(
        self, n_samples: int = 20000, seed: int = 0, *, radius: float = 2.0, std: float = 0.15
    ) -> None:
        """Set the parameters, then draw the stored points (see `ToyDataset`).

        Arguments:
            radius: radius of the circle holding the means, > 0.
            std: standard deviation of every component, > 0.
        """
        self.radius = _require_positive("radius", radius)
        self.std = _require_positive("std", std)
        angles = torch.arange(8, dtype=torch.float64) * (2.0 * math.pi / 8)
        means = self.radius * torch.stack((torch.cos(angles), torch.sin(angles)), dim=1)
        self._mixture = GaussianMixture2D(
            means=means,
            stds=torch.full((8,), self.std, dtype=torch.float64),
            weights=torch.full((8,), 1.0 / 8, dtype=torch.float64),
        )
        super().__init__(n_samples, seed)


class GaussianMixture(_GaussianMixtureDataset):
    """A mixture of isotropic Gaussians with unequal weights (checks mode-weight recovery)."""

    def __init__(
        self,
        n_samples: int = 20000,
        seed: int = 0,
        *,
        means: Sequence[Sequence[float]] = ((-1.5, 0.0), (1.5, 0.0), (0.0, 1.5)),
        stds: Sequence[float] = (0.3, 0.3, 0.3),
        weights: Sequence[float] = (0.5, 0.3, 0.2),
    ) -> None:
        """Set the parameters, then draw the stored points (see `ToyDataset`).

        Arguments:
            means: (K, 2) component means.
            stds: (K,) isotropic standard deviations, each > 0.
            weights: (K,) positive weights; they are normalised to sum to 1.
        """
        weights_t = _as_float64(weights)
        if weights_t.ndim != 1 or not bool((torch.isfinite(weights_t) & (weights_t > 0)).all()):
            raise ValueError(
                f"weights must be a 1-D sequence of finite numbers > 0, got {weights!r}"
            )
        self._mixture = GaussianMixture2D(
            means=means, stds=stds, weights=weights_t / weights_t.sum()
        )
        super().__init__(n_samples, seed)
