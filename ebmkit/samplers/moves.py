r"""Integrator pieces shared by every Langevin-type kernel: the drift move and the MH accept."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "batch_view",
    "clip_gradient",
    "diagonal_gaussian_log_prob",
    "gaussian_noise",
    "metropolis_accept",
    "select_chains",
    "ula_noise_scale",
    "uniform",
]


def ula_noise_scale(step_size: float) -> float:
    """sqrt(2·step_size): the noise that makes x − h∇E + σξ the exact-in-the-limit ULA."""
    return math.sqrt(2.0 * step_size)


def batch_view(values: Tensor, like: Tensor) -> Tensor:
    """Per-chain values (B,) (or a scalar) shaped to broadcast against a batch `like` (B, ...)."""
    if values.dim() == 0:
        return values
    return values.reshape(values.shape[:1] + (1,) * (like.dim() - 1))


def gaussian_noise(like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard normal noise shaped like `like`, from `generator` or the global RNG."""
    if generator is None:  # the same draws from the global RNG, with less argument parsing
        return torch.randn_like(like)
    return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)


def uniform(
    shape: Sequence[int],
    *,
    like: Tensor,
    generator: torch.Generator | None = None,
    low: float = 0.0,
    high: float = 1.0,
) -> Tensor:
    """U[low, high) draws of `shape` on `like`'s device and dtype, from `generator` (the
    global RNG when None), e.g. an MH test's u per chain or a Barker kernel's sign flips.

    Example:
        >>> x = torch.zeros(3, 2)
        >>> uniform(x.shape[:1], like=x, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([3])
    """
    if not low < high:
        raise ValueError(f"uniform needs low < high, got low={low}, high={high}")
    draws = torch.rand(tuple(shape), generator=generator, device=like.device, dtype=like.dtype)
    return draws if (low, high) == (0.0, 1.0) else low + (high - low) * draws


def clip_gradient(grad: Tensor, limit: float | None) -> Tensor:
    """Clamp each gradient component to [−limit, limit] (IGEBM/JEM style); None leaves it."""
    return grad if limit is None else grad.clamp(-limit, limit)


def diagonal_gaussian_log_prob(y: Tensor, mean: Tensor, variance: Tensor) -> Tensor:
    """log N(y; mean, diag(variance)) summed over all but the batch dimension, shape (B,).

    `variance` broadcasts against `y`; the normalising term is kept, because
    position-dependent kernels (STANLEY's Γ(x)) need it in the MH ratio.
    """
    terms = (y - mean).square() / variance + torch.log(2 * math.pi * variance)
    terms = terms.expand_as(y) if terms.shape != y.shape else terms
    return -0.5 * terms.flatten(1).sum(1)


def metropolis_accept(
    log_ratio: Tensor, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Metropolis–Hastings test of each chain.

    Arguments:
        log_ratio: log[π(y) q(x|y) / (π(x) q(y|x))] per chain (B,).

    Returns:
        (accepted (B,) bool, acceptance probability min(1, exp(log_ratio)) (B,)).
    """
    # A NaN ratio (non-finite proposal) is rejected; −inf stays −inf, which no draw beats.
    log_ratio = torch.where(torch.isnan(log_ratio), -math.inf, log_ratio)
    uniform = torch.rand(log_ratio.shape, generator=generator, device=log_ratio.device)
    accepted = torch.log(uniform) < log_ratio
    return accepted, log_ratio.clamp(max=0.0).exp()


def select_chains(accepted: Tensor, proposal: Tensor, current: Tensor) -> Tensor:
    """Per chain: the proposal where accepted, else the current value."""
    return torch.where(batch_view(accepted, proposal), proposal, current)
