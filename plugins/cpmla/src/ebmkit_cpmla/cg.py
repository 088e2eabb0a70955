r"""Per-chain conjugate gradient, and CP-Flow's log-det gradient surrogate built on it."""

from __future__ import annotations

from collections.abc import Callable

import attrs
import torch
from torch import Tensor

__all__ = [
    "ConjugateGradientResult",
    "conjugate_gradient",
    "hessian_vector_product",
    "logdet_surrogate",
    "rademacher",
]

HessianVectorProduct = Callable[[Tensor], Tensor]
"""u ↦ H u for a batch: row i of the result is H_i u_i (each chain its own matrix)."""


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).flatten(1).sum(1)


def _rows(value: Tensor, like: Tensor) -> Tensor:
    return value.view(-1, *([1] * (like.dim() - 1)))


@attrs.frozen(eq=False)
class ConjugateGradientResult:
    """What `conjugate_gradient` found, per chain.

    Arguments:
        solution: x ≈ H⁻¹b, the shape of b.
        residual_norm: ‖b − Hx‖ at the end (the recursively updated residual), (B,).
        iterations: CG iterations each chain took, (B,) int64.
        converged: whether ‖r‖ < atol + rtol‖x‖ was reached, (B,) bool.
    """

    solution: Tensor
    residual_norm: Tensor
    iterations: Tensor
    converged: Tensor


def conjugate_gradient(
    hvp: HessianVectorProduct,
    b: Tensor,
    x0: Tensor | None = None,
    *,
    max_iterations: int,
    atol: float = 1e-3,
    rtol: float = 0.0,
) -> ConjugateGradientResult:
    """Solve H_i x_i = b_i for every chain i by conjugate gradient, each chain on its own.

    Every chain has its own step sizes and its own stopping rule ‖r_i‖ < atol + rtol‖x_i‖
    (CP-Flow's); a chain that has stopped is frozen (its rows no longer change) while the
    others go on, so a chain's result does not depend on the other chains in its batch.
    All chains share the batched `hvp` calls, at most `max_iterations` of them.

    Arguments:
        hvp: u ↦ H u, batched (row i is H_i u_i with H_i symmetric positive definite).
        b: the right-hand sides, (B, ...).
        x0: the start (default b, as CP-Flow's code starts CG at the probe).
        max_iterations: the most iterations (CP-Flow: m₂ = d, exact in exact arithmetic).
        atol, rtol: the stopping rule's tolerances (CP-Flow's defaults: 1e-3 and 0).

    Returns:
        A `ConjugateGradientResult` (solution, residual norms, iterations, converged mask).

    Example:
        >>> spectra = torch.tensor([[1.0, 2.0], [4.0, 8.0]], dtype=torch.float64)
        >>> matrices = torch.diag_embed(spectra)
        >>> result = conjugate_gradient(
        ...     lambda u: (matrices @ u.unsqueeze(2)).squeeze(2),
        ...     torch.ones(2, 2, dtype=torch.float64),
        ...     max_iterations=2,
        ...     atol=1e-6,
        ... )
        >>> result.solution.round(decimals=12).tolist(), result.iterations.tolist()
        ([[1.0, 0.5], [0.25, 0.125]], [1, 2])
    """
    if int(max_iterations) < 0:
        raise ValueError(f"conjugate_gradient: max_iterations must be >= 0, got {max_iterations}")
    if atol < 0 or rtol < 0:
        raise ValueError(f"conjugate_gradient: atol and rtol must be >= 0, got {atol}, {rtol}")
    b = b.detach()
    x = (b if x0 is None else x0.detach()).clone()
    residual = b - hvp(x).detach()
    direction = residual.clone()
    squared = _dot(residual, residual)
    iterations = torch.zeros(b.shape[0], dtype=torch.int64, device=b.device)
    converged = squared.sqrt() < atol + rtol * x.flatten(1).norm(dim=1)
    for _ in range(int(max_iterations)):
        active = ~converged & (squared > 0)
        if not bool(active.any()):
            break
        product = hvp(direction).detach()
        curvature = _dot(direction, product)
        usable = active & (curvature > 0)
        step = torch.where(usable, squared / torch.where(usable, curvature, 1.0), 0.0)
        x = x + _rows(step, x) * direction
        residual = residual - _rows(step, x) * product
        new_squared = _dot(residual, residual)
        ratio = torch.where(usable, new_squared / torch.where(usable, squared, 1.0), 0.0)
        direction = torch.where(
            _rows(usable, x), residual + _rows(ratio, x) * direction, direction
        )
        squared = torch.where(usable, new_squared, squared)
        iterations = iterations + usable.to(torch.int64)
        converged = converged | (squared.sqrt() < atol + rtol * x.flatten(1).norm(dim=1))
    return ConjugateGradientResult(
        solution=x, residual_norm=squared.sqrt(), iterations=iterations, converged=converged
    )


def hessian_vector_product(
    gradient: Tensor, x: Tensor, *, create_graph: bool = False
) -> HessianVectorProduct:
    """u ↦ ∇²G(x) u from a gradient ∇G(x) built with ``create_graph=True`` (its graph kept
    for further products). With `create_graph` the product keeps its own graph (to the
    parameters), else it is a plain tensor.

    Arguments:
        gradient: ∇G(x), (B, ...), computed from `x` with ``create_graph=True``.
        x: the point, with ``requires_grad``.
        create_graph: keep the product's graph.
    """

    def product(u: Tensor) -> Tensor:
        (value,) = torch.autograd.grad(
            gradient, x, u, retain_graph=True, create_graph=create_graph
        )
        return value

    return product


def rademacher(
    shape: tuple[int, ...],
    *,
    like: Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Independent ±1 entries of `shape` on `like`'s device and dtype (global RNG when
    `generator` is None)."""
    bits = torch.randint(0, 2, shape, generator=generator, device=like.device)
    return (2 * bits - 1).to(like.dtype)


def logdet_surrogate(
    gradient: Tensor,
    x: Tensor,
    probes: Tensor,
    *,
    max_iterations: int | None = None,
    atol: float = 1e-3,
    rtol: float = 0.0,
) -> tuple[Tensor, ConjugateGradientResult]:
    """CP-Flow's surrogate for log det H, H = ∇²G(x): its gradient in the parameters is
    an unbiased estimate of ∂ log det H = tr(H⁻¹∂H); its value is not log det H.

    For each probe v: z = stopgrad(CG(H, v)) (started at v), then surrogate = (Hz)ᵀv with
    the product Hz keeping its graph, so ∂ surrogate = vᵀ(∂H)H⁻¹v, whose mean over
    Rademacher v is tr(H⁻¹∂H) when CG solves exactly. The mean over the probes is returned.

    Arguments:
        gradient: ∇G(x), (B, ...), built from `x` with ``create_graph=True``.
        x: the points, with ``requires_grad``.
        probes: v, (B, ...) or (P, B, ...) for P probes per chain (Rademacher: `rademacher`).
        max_iterations: CG's most iterations (default m₂ = the number of coordinates d).
        atol, rtol: CG's stopping rule (CP-Flow: 1e-3, 0; its image script rtol 1e-3).

    Returns:
        (surrogate, the last probe's CG result): the surrogate is (B,), with a graph to
        whatever `gradient` depends on.

    References:
        Huang et al., "Convex Potential Flows" (ICLR 2021), §4 (the gradient estimator).
    """
    given = tuple(probes.shape)
    if probes.dim() == gradient.dim():
        probes = probes.unsqueeze(0)
    if tuple(probes.shape[1:]) != tuple(gradient.shape):
        raise ValueError(
            f"logdet_surrogate: probes of shape {given} do not match the "
            f"gradient's {tuple(gradient.shape)} (give (B, ...) or (P, B, ...))"
        )
    steps = gradient[0].numel() if max_iterations is None else int(max_iterations)
    plain = hessian_vector_product(gradient, x)
    kept = hessian_vector_product(gradient, x, create_graph=True)
    total = gradient.new_zeros(gradient.shape[0])
    result = None
    for probe in probes:
        result = conjugate_gradient(
            plain, probe, probe, max_iterations=steps, atol=atol, rtol=rtol
        )
        total = total + _dot(kept(result.solution), probe)
    assert result is not None
    return total / probes.shape[0], result
