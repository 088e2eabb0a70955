r"""Exact targets for the checks: a correlated Gaussian, an unequal 1-D mixture, ULA's law."""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs
import torch
from torch import Tensor

__all__ = [
    "FAR_START",
    "STANDARD_GAUSSIAN",
    "STANDARD_MIXTURE",
    "GaussianTarget",
    "LangevinMove",
    "MixtureTarget",
    "langevin_moments",
    "ula_stationary_covariance",
]

F64 = torch.float64


def _float64(value: Sequence[float] | Tensor) -> Tensor:
    return torch.as_tensor(value, dtype=F64).clone()


@attrs.frozen(eq=False)
class GaussianTarget:
    """N(mean, cov) as an energy: E(x) = ½ (x − mean)ᵀ cov⁻¹ (x − mean), x of shape (B, d).

    Arguments:
        mean: (d,).
        cov: (d, d), symmetric positive definite.
    """

    mean: Tensor = attrs.field(converter=_float64)
    cov: Tensor = attrs.field(converter=_float64)
    precision: Tensor = attrs.field(init=False)

    @precision.default
    def _inverse(self) -> Tensor:
        return torch.linalg.inv(self.cov)

    @property
    def dim(self) -> int:
        """The dimension d."""
        return self.mean.numel()

    def energy(self, x: Tensor) -> Tensor:
        """E(x), shape (B,), in the dtype of `x`."""
        offset = x - self.mean.to(x.dtype)
        return 0.5 * ((offset @ self.precision.to(x.dtype)) * offset).sum(1)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """`n` exact draws, float64 (n, d)."""
        noise = torch.randn(n, self.dim, generator=generator, dtype=F64)
        return self.mean + noise @ torch.linalg.cholesky(self.cov).T


@attrs.frozen(eq=False, kw_only=True)
class MixtureTarget:
    """Σₖ wₖ N(μₖ, sₖ²) on the line as an energy E(x) = −log p(x), x of shape (B, 1).

    Arguments:
        weights: the mode weights wₖ (summing to 1).
        means: the mode centres μₖ, increasing.
        stds: the mode widths sₖ.
    """

    weights: tuple[float, ...] = attrs.field(converter=tuple)
    means: tuple[float, ...] = attrs.field(converter=tuple)
    stds: tuple[float, ...] = attrs.field(converter=tuple)

    def __attrs_post_init__(self) -> None:
        if not (len(self.weights) == len(self.means) == len(self.stds) >= 2):
            raise ValueError(
                f"MixtureTarget needs as many weights, means and stds (at least two), got "
                f"{len(self.weights)}, {len(self.means)}, {len(self.stds)}"
            )
        if abs(sum(self.weights) - 1.0) > 1e-12 or list(self.means) != sorted(self.means):
            raise ValueError(
                f"MixtureTarget: weights must sum to 1 and means increase, got weights "
                f"{self.weights}, means {self.means}"
            )

    def energy(self, x: Tensor) -> Tensor:
        """−log p(x), shape (B,), in the dtype of `x`."""
        weights, means, stds = (
            torch.tensor(values, dtype=x.dtype, device=x.device)
            for values in (self.weights, self.means, self.stds)
        )
        z = (x.reshape(-1, 1) - means) / stds
        log_terms = torch.log(weights) - 0.5 * z.square() - torch.log(stds)
        return 0.5 * math.log(2 * math.pi) - torch.logsumexp(log_terms, 1)

    def cdf(self, t: float) -> float:
        """P(X < t), exactly."""
        return sum(
            w * 0.5 * (1 + math.erf((t - m) / (s * math.sqrt(2))))
            for w, m, s in zip(self.weights, self.means, self.stds, strict=True)
        )

    def sample(
        self, n: int, generator: torch.Generator, weights: Sequence[float] | None = None
    ) -> Tensor:
        """`n` draws, float64 (n, 1), from the modes in proportions `weights` (default: own)."""
        w = torch.tensor(self.weights if weights is None else weights, dtype=F64)
        means, stds = torch.tensor(self.means, dtype=F64), torch.tensor(self.stds, dtype=F64)
        mode = torch.multinomial(w, n, replacement=True, generator=generator)
        noise = torch.randn(n, generator=generator, dtype=F64)
        return (means[mode] + stds[mode] * noise).unsqueeze(1)


@attrs.frozen(kw_only=True)
class LangevinMove:
    """One unadjusted move x ← x − step_size·∇E(x) + noise_scale·ξ, ξ ~ N(0, I).

    On a Gaussian target ∇E is linear, so the move is affine and the law of the chain after
    any number of moves is Gaussian with moments known exactly (`langevin_moments`).

    Arguments:
        step_size: h > 0.
        noise_scale: σ ≥ 0; default sqrt(2h) (ULA).
    """

    step_size: float = attrs.field(converter=float, validator=attrs.validators.gt(0.0))
    noise_scale: float = attrs.field(
        default=attrs.Factory(lambda self: math.sqrt(2 * self.step_size), takes_self=True),
        converter=float,
        validator=attrs.validators.ge(0.0),
    )


def langevin_moments(
    target: GaussianTarget,
    moves: Sequence[LangevinMove],
    n_steps: int,
    start_mean: Tensor,
    start_cov: Tensor,
) -> tuple[Tensor, Tensor]:
    """The exact mean and covariance after `n_steps` steps, each applying `moves` in order.

    With A = I − hΣ⁻¹ a move maps mean ← m + A(mean − m) and cov ← A cov Aᵀ + σ²I.

    Arguments:
        target: the Gaussian N(m, Σ) whose energy drives the moves.
        moves: the unadjusted moves one step makes (one for Langevin, one per stage for a
            composition of Langevin stages).
        n_steps: the number of steps.
        start_mean, start_cov: the law of the starting points (a point mass: zero cov).

    Returns:
        (mean (d,), cov (d, d)), float64.
    """
    identity = torch.eye(target.dim, dtype=F64)
    mean, cov = _float64(start_mean), _float64(start_cov)
    for _ in range(n_steps):
        for move in moves:
            contraction = identity - move.step_size * target.precision
            mean = target.mean + contraction @ (mean - target.mean)
            cov = contraction @ cov @ contraction.T + move.noise_scale**2 * identity
    return mean, cov


def ula_stationary_covariance(
    cov: Tensor, step_size: float, noise_scale: float | None = None
) -> Tensor:
    """The stationary covariance of x ← x − hΣ⁻¹(x − m) + σξ, in closed form.

    In Σ's eigenbasis (eigenvalues λᵢ) each coordinate is AR(1) with coefficient 1 − h/λᵢ,
    so its variance is σ²λᵢ² / (h(2λᵢ − h)); with σ² = 2h (ULA) that is λᵢ / (1 − h/(2λᵢ)):
    the target's λᵢ inflated by O(h), ULA's known bias.

    Arguments:
        cov: the target's Σ (d, d).
        step_size: h, below 2·λ_min (else the chain diverges).
        noise_scale: σ; default sqrt(2h).

    Returns:
        The stationary covariance (d, d), float64.

    Example:
        >>> ula_stationary_covariance(torch.tensor([[2.0]]), 1.0)
        tensor([[2.6667]], dtype=torch.float64)
    """
    cov = _float64(cov)
    sigma2 = 2 * step_size if noise_scale is None else noise_scale**2
    eigenvalues, basis = torch.linalg.eigh(cov)
    if step_size >= 2 * eigenvalues.min().item():
        raise ValueError(
            f"ULA with step_size {step_size} diverges on a Gaussian whose smallest covariance "
            f"eigenvalue is {eigenvalues.min().item():.4g}; use step_size < 2·λ_min"
        )
    variances = sigma2 * eigenvalues.square() / (step_size * (2 * eigenvalues - step_size))
    return basis @ torch.diag(variances) @ basis.T


STANDARD_GAUSSIAN = GaussianTarget(mean=[1.0, -0.5], cov=[[1.0, 0.6], [0.6, 1.0]])
"""N((1, −0.5), [[1, .6], [.6, 1]]): correlated, covariance eigenvalues 1.6 and 0.4."""

FAR_START = (5.0, -5.0)
"""Where every chain of the Gaussian check starts: 9 standard deviations out along the
target's narrow direction (a point mass, so the transient is part of what is checked)."""

STANDARD_MIXTURE = MixtureTarget(weights=(0.25, 0.75), means=(-1.0, 1.0), stds=(0.45, 0.45))
"""0.25·N(−1, 0.45²) + 0.75·N(1, 0.45²): the density at 0 is 1.1 nats below the light mode's
peak and 2.2 below the heavy one's, low enough to be two modes and high enough that a
Langevin-type kernel with step ≈ 0.1–0.2 crosses it several times per chain in 400 steps."""
