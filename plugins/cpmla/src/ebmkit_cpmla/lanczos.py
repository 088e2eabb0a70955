r"""Per-chain Lanczos: H^{1/2}v and stochastic Lanczos quadrature of log det H.

Every chain has its own symmetric positive semi-definite H (a mirror's Hessian at that
chain's x), reached only through a batched Hessian-vector product ``hvp(v) -> H v`` on
(B, ...) tensors. m Lanczos steps from v give H Q ≈ Q T with an orthonormal basis Q (m
vectors) and a tridiagonal T (m × m) per chain; then

- f(H) v ≈ ‖v‖ · Q f(T) e₁ (``lanczos_function_times``; f = sqrt: ``lanczos_sqrt_times``),
- vᵀ f(H) v ≈ ‖v‖² · Σⱼ τⱼ² f(λⱼ), with T = U diag(λ) Uᵀ and τⱼ = U₀ⱼ (Gauss quadrature),
- log det H ≈ mean over probes of d·Σⱼ τⱼ² log λⱼ from normalised Rademacher probes
  (stochastic Lanczos quadrature, ``lanczos_logdet``).

The basis is fully reorthogonalised at every step (m is small, ≈10), and a chain whose
Krylov space is exhausted (β ≈ 0: H has fewer distinct eigenvalues than m) continues with
zero basis vectors and an identity block in T (α = 1, β = 0), decoupled from e₁: it adds
eigenvalues 1 of zero weight, so f(T)e₁ and the quadratures stay those of the live block.
Eigenvalues of T are clamped at 0 (and log uses λ + 1e-8), as the reference does. With
m = d steps the quadratures are exact.

References:
    Ubaru, Chen & Saad (2017), Fast estimation of tr(f(A)) via stochastic Lanczos quadrature.
    Huang, Chen, Tsirigotis & Courville (2021), Convex potential flows (its Lanczos log-det).
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import torch
from torch import Tensor

__all__ = [
    "LOG_FLOOR",
    "Tridiagonal",
    "lanczos_function_times",
    "lanczos_logdet",
    "lanczos_quadrature",
    "lanczos_sqrt_times",
    "lanczos_tridiagonal",
    "rademacher_probes",
]

HessianVectorProduct = Callable[[Tensor], Tensor]

LOG_FLOOR = 1e-8
"""Added to T's eigenvalues (clamped ≥ 0) before the log of `lanczos_logdet`."""

BREAKDOWN = 1e-10
"""β below this (relative to the largest |α| seen) ends a chain's Krylov space."""


@attrs.frozen(eq=False, kw_only=True)
class Tridiagonal:
    """What m Lanczos steps give, per chain.

    Arguments:
        matrix: T, (B, m, m), symmetric tridiagonal (α on the diagonal, β beside it).
        basis: Q, (B, m, D), orthonormal rows (zero rows after a breakdown).
        norm: ‖v‖ of the start vector (B,).
    """

    matrix: Tensor
    basis: Tensor
    norm: Tensor


def lanczos_tridiagonal(hvp: HessianVectorProduct, v: Tensor, steps: int) -> Tridiagonal:
    """m = `steps` Lanczos steps from `v` with full reorthogonalisation, per chain.

    Arguments:
        hvp: the batched product v ↦ H v, (B, ...) to (B, ...), each chain its own H.
        v: start vectors (B, ...), nonzero.
        steps: m ≥ 1 (at most D; more would only add zero vectors).

    Returns:
        Tridiagonal: T (B, m, m), Q (B, m, D), ‖v‖ (B,).

    Example:
        >>> h = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
        >>> t = lanczos_tridiagonal(lambda v: v @ h, torch.ones(1, 3, dtype=torch.float64), 3)
        >>> sorted(round(e, 6) for e in torch.linalg.eigvalsh(t.matrix[0]).tolist())
        [1.0, 2.0, 3.0]
    """
    if steps < 1:
        raise ValueError(f"Lanczos needs steps >= 1, got {steps}")
    shape = v.shape
    flat = v.flatten(1)
    norm = flat.norm(dim=1)
    q = flat / norm[:, None]
    basis = [q]
    alphas, betas = [], []
    scale = torch.zeros_like(norm)
    alive = torch.ones_like(norm, dtype=torch.bool)
    for j in range(steps):
        w = hvp(q.reshape(shape)).flatten(1)
        alpha = (w * q).sum(1)
        alphas.append(torch.where(alive, alpha, torch.ones_like(alpha)))
        scale = torch.maximum(scale, alpha.abs())
        if j == steps - 1:
            break
        stacked = torch.stack(basis, 1)  # (B, j + 1, D): subtract every earlier direction
        for _ in range(2):  # twice is enough (Kahan–Parlett)
            w = w - ((stacked * w[:, None]).sum(2)[:, :, None] * stacked).sum(1)
        beta = w.norm(dim=1)
        alive = alive & (beta > BREAKDOWN * torch.clamp(scale, min=torch.finfo(w.dtype).tiny))
        beta = torch.where(alive, beta, torch.zeros_like(beta))
        q = torch.where(alive[:, None], w / torch.where(alive, beta, 1.0)[:, None], 0.0)
        betas.append(beta)
        basis.append(q)
    diagonal = torch.stack(alphas, 1)
    matrix = torch.diag_embed(diagonal)
    if betas:
        off = torch.stack(betas, 1)
        matrix = matrix + torch.diag_embed(off, offset=1) + torch.diag_embed(off, offset=-1)
    return Tridiagonal(matrix=matrix, basis=torch.stack(basis, 1), norm=norm)


def lanczos_function_times(
    hvp: HessianVectorProduct, v: Tensor, steps: int, function: Callable[[Tensor], Tensor]
) -> Tensor:
    """f(H) v ≈ ‖v‖ · Q f(T) e₁ per chain, T's eigenvalues clamped ≥ 0 before f.

    Arguments:
        hvp, v, steps: as for `lanczos_tridiagonal`.
        function: f, applied elementwise to T's eigenvalues.

    Returns:
        f(H) v, shaped like `v`.
    """
    tri = lanczos_tridiagonal(hvp, v, steps)
    eigenvalues, vectors = torch.linalg.eigh(tri.matrix)
    values = function(eigenvalues.clamp(min=0.0))
    coefficients = (vectors * (values * vectors[:, 0, :])[:, None, :]).sum(2)  # f(T) e₁
    result = (coefficients[:, :, None] * tri.basis).sum(1) * tri.norm[:, None]
    return result.reshape(v.shape)


def lanczos_sqrt_times(hvp: HessianVectorProduct, v: Tensor, steps: int) -> Tensor:
    """H^{1/2} v ≈ ‖v‖ · Q T^{1/2} e₁ per chain (exact with steps = D).

    Arguments:
        hvp, v, steps: as for `lanczos_tridiagonal`.

    Returns:
        H^{1/2} v, shaped like `v`.

    Example:
        >>> h = torch.diag(torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64))
        >>> v = torch.ones(1, 3, dtype=torch.float64)
        >>> lanczos_sqrt_times(lambda u: u @ h, v, 3).round(decimals=6).tolist()
        [[1.0, 2.0, 3.0]]
    """
    return lanczos_function_times(hvp, v, steps, torch.sqrt)


def lanczos_quadrature(
    hvp: HessianVectorProduct, v: Tensor, steps: int, function: Callable[[Tensor], Tensor]
) -> Tensor:
    """vᵀ f(H) v ≈ ‖v‖² Σⱼ τⱼ² f(λⱼ) per chain (Gauss quadrature from T), shape (B,).

    Arguments:
        hvp, v, steps: as for `lanczos_tridiagonal`.
        function: f, applied to T's eigenvalues (clamped ≥ 0).
    """
    tri = lanczos_tridiagonal(hvp, v, steps)
    eigenvalues, vectors = torch.linalg.eigh(tri.matrix)
    weights = vectors[:, 0, :].square()
    return tri.norm.square() * (weights * function(eigenvalues.clamp(min=0.0))).sum(1)


def rademacher_probes(
    like: Tensor, n_probes: int, generator: torch.Generator | None = None
) -> Tensor:
    """`n_probes` Rademacher vectors (±1) per chain, shape (n_probes, *like.shape)."""
    draws = torch.randint(0, 2, (n_probes, *like.shape), generator=generator, device=like.device)
    return (2 * draws - 1).to(like.dtype)


def lanczos_logdet(hvp: HessianVectorProduct, probes: Tensor, steps: int = 10) -> Tensor:
    """log det H per chain by stochastic Lanczos quadrature, averaged over the probes.

    Each probe v (Rademacher in the reference, ±1) is normalised, and contributes
    d·Σⱼ τⱼ² log(max(λⱼ, 0) + 1e-8); for a Rademacher v (‖v‖² = d) that estimates
    vᵀ log(H) v, an unbiased probe of tr log H when m is large enough. With steps = D each
    probe's value is exactly d·v̂ᵀ log(H + 1e-8·I) v̂.

    Arguments:
        hvp: the batched product v ↦ H v, (B, ...) to (B, ...).
        probes: (P, B, ...): P probe vectors per chain (`rademacher_probes`); at least
            3 dimensions, so one probe for flat chains is (1, B, D).
        steps: Lanczos steps m (10 in the reference's evaluation).

    Returns:
        The estimate (B,): the mean over the P probes.

    Example:
        >>> h = torch.diag(torch.tensor([1.0, 2.0], dtype=torch.float64))
        >>> probes = torch.tensor([[[1.0, -1.0]]], dtype=torch.float64)
        >>> round(lanczos_logdet(lambda v: v @ h, probes, steps=2).item(), 6)  # log 2
        0.693147
    """
    if probes.dim() < 3:
        raise ValueError(
            f"lanczos_logdet takes probes of shape (P, B, ...) (P probes per chain), got "
            f"{tuple(probes.shape)}; pass one probe per chain as probes[None]"
        )
    dim = probes[0, 0].numel()

    def log(values: Tensor) -> Tensor:
        return torch.log(values + LOG_FLOOR)

    estimates = []
    for probe in probes:
        norm = probe.flatten(1).norm(dim=1).reshape(-1, *[1] * (probe.dim() - 1))
        estimates.append(dim * lanczos_quadrature(hvp, probe / norm, steps, log))
    return torch.stack(estimates, 0).mean(0)
