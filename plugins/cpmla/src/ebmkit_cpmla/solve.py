r"""The inverse mirror map ∇G*(y) = argmin_x G(x) − ⟨x, y⟩, solved per chain.

Each chain is its own convex problem: it keeps its own L-BFGS history, runs its own
backtracking line search and stops on its own residual ‖∇G(x) − y‖ ≤ tolerance; a converged
chain is frozen by a mask while the others go on. Nothing is shared across chains (no summed
objective, no common step length or stopping rule), so a chain's result does not depend on
which other chains share its batch: solved alone or among others it is bit-identical,
provided `potential` itself computes each row independently of the others (a row-separable
G built from elementwise operations and per-row reductions; batch-size-dependent BLAS
kernels would break that, not the solver).
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import torch
from torch import Tensor

__all__ = [
    "METHODS",
    "SolveResult",
    "potential_gradient",
    "hessian_preconditioner",
    "potential_hessian",
    "row_sum",
    "solve_inverse",
]

Potential = Callable[[Tensor], Tensor]
Preconditioner = Callable[[Tensor], Tensor]
Evaluate = Callable[[Tensor], tuple[Tensor, Tensor]]

METHODS = ("lbfgs", "newton")
"""The solver methods: per-chain L-BFGS (any D), Newton with the exact Hessian (small D)."""

ARMIJO = 1e-4
"""The sufficient-decrease constant c₁ of the backtracking line search."""

FLAT_ROUNDINGS = 64.0
"""A full step predicted to lower f by less than this many roundings of f counts as flat."""

ROUNDING_FLOOR = 8.0
"""A residual below this many machine epsilons of the dtype times (1 + ‖y‖) counts as
converged whatever the tolerance: ∇G(x) − y cannot be computed more finely."""

MAX_BACKTRACKS = 40
"""Halvings of the step before a chain's line search gives up (the chain then stops)."""


@attrs.frozen(eq=False, kw_only=True)
class SolveResult:
    """The outcome of `solve_inverse`, per chain.

    Arguments:
        x: the solution ∇G*(y), shape of `y`, detached.
        residual: ‖∇G(x) − y‖ per chain (B,), the optimality gap in the dual.
        iterations: iterations each chain took (B,) int64 (0 for a start already converged).
        converged: residual ≤ tolerance, or within the dtype's rounding floor
            (`ROUNDING_FLOOR`), (B,) bool.
    """

    x: Tensor
    residual: Tensor
    iterations: Tensor
    converged: Tensor


def _check_value(value: Tensor, x: Tensor) -> None:
    if value.shape != x.shape[:1]:
        raise ValueError(
            f"a mirror potential must map a batch (B, ...) to shape (B,), got "
            f"{tuple(value.shape)} for input {tuple(x.shape)}; sum each sample's terms"
        )


def potential_gradient(
    potential: Potential, x: Tensor, *, create_graph: bool = False
) -> tuple[Tensor, Tensor]:
    """G(x) and ∇G(x) by autograd, gradients with respect to `x` only.

    Arguments:
        potential: maps (B, ...) to (B,).
        x: points (B, ...).
        create_graph: keep the graph (for Hessian-vector products or a differentiable run);
            otherwise both results are detached and `x`'s graph is not followed.

    Returns:
        (G(x) (B,), ∇G(x) shaped like `x`).

    Example:
        >>> value, grad = potential_gradient(lambda x: x.square().sum(1), torch.ones(2, 3))
        >>> torch.equal(grad, 2 * torch.ones(2, 3))
        True
    """
    with torch.enable_grad():
        if not create_graph:
            x = x.detach().requires_grad_(True)
        elif not x.requires_grad:
            x = x.detach().requires_grad_(True)
        value = potential(x)
        _check_value(value, x)
        (grad,) = torch.autograd.grad(value.sum(), x, create_graph=create_graph)
    if not create_graph:
        return value.detach(), grad.detach()
    return value, grad


def potential_hessian(potential: Potential, x: Tensor) -> Tensor:
    """The Hessian ∇²G(x) per chain, (B, D, D) with D = x[0].numel(), from D backward passes.

    Arguments:
        potential: maps (B, ...) to (B,), row-separable.
        x: points (B, ...).

    Returns:
        (B, D, D), detached.

    Example:
        >>> hessian = potential_hessian(lambda x: x.square().sum(1), torch.ones(1, 2))
        >>> hessian[0].tolist()
        [[2.0, 0.0], [0.0, 2.0]]
    """
    with torch.enable_grad():
        point = x.detach().requires_grad_(True)
        _, grad = potential_gradient(potential, point, create_graph=True)
        flat = grad.flatten(1)
        rows = [
            torch.autograd.grad(flat[:, i].sum(), point, retain_graph=True)[0].flatten(1)
            for i in range(flat.shape[1])
        ]
    return torch.stack(rows, 1).detach()


def _objective(evaluate: Evaluate, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Per chain f(x) = G(x) − ⟨x, y⟩ and ∇f(x) = ∇G(x) − y, on flat (B, D) points."""
    value, grad = evaluate(x.reshape(y.shape))
    flat_y = y.flatten(1)
    return value - _dot(x, flat_y), grad.flatten(1) - flat_y


SMALL_ROWS = 16
"""Rows of at most this many entries are summed column by column (`row_sum`)."""


def row_sum(values: Tensor) -> Tensor:
    """Σⱼ values[:, j] per row of a (B, n) tensor, the same way whatever B is.

    Short rows (n ≤ `SMALL_ROWS`) are added column by column, left to right: torch's
    reduction over a short last dimension is slow (≈250 µs for (4000, 2)) and this takes a
    few µs per column. Longer rows use ``sum(1)``, which reduces each row alike for any B.
    """
    if values.shape[1] > SMALL_ROWS:
        return values.sum(1)
    total = values[:, 0]
    for j in range(1, values.shape[1]):
        total = total + values[:, j]
    return total


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return row_sum(a * b)


def _norm(a: Tensor) -> Tensor:
    return _dot(a, a).sqrt()


def _lbfgs_direction(
    grad: Tensor,
    steps: Tensor,
    changes: Tensor,
    rho: Tensor,
    count: Tensor,
    preconditioner: Preconditioner | None,
) -> Tensor:
    """−H̃∇f by the two-loop recursion, per chain over its own history (newest in slot 0;
    slots (m, B, D)).

    Unused slots hold zeros (ρ = 0), which leave q and r unchanged (up to the sign of a
    zero), so slots no chain has filled yet are skipped without changing any chain.
    """
    used = min(steps.shape[0], int(count.max()))
    q = grad
    alphas = []
    for i in range(used):
        alpha = rho[i] * _dot(steps[i], q)
        q = q - alpha[:, None] * changes[i]
        alphas.append(alpha)
    if preconditioner is not None:
        r = preconditioner(q)
    else:
        newest_sy = _dot(steps[0], changes[0])
        newest_yy = _dot(changes[0], changes[0])
        has = count > 0
        gamma = torch.where(has, newest_sy / torch.where(has, newest_yy, 1.0), 1.0)
        r = gamma[:, None] * q
    for i in reversed(range(used)):
        beta = rho[i] * _dot(changes[i], r)
        r = r + steps[i] * (alphas[i] - beta)[:, None]
    return -r


def _newton_direction(potential: Potential, x: Tensor, grad: Tensor, shape: torch.Size) -> Tensor:
    """−∇²G(x)⁻¹∇f per chain (a batched LU solve, one matrix per chain)."""
    hessian = potential_hessian(potential, x.reshape(shape))
    return -torch.linalg.solve(hessian, grad.unsqueeze(-1)).squeeze(-1)


def _line_search(
    evaluate: Evaluate,
    y: Tensor,
    x: Tensor,
    value: Tensor,
    grad: Tensor,
    direction: Tensor,
    active: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-chain backtracking from step 1: accept the first step t with Armijo's decrease
    f(x + td) ≤ f(x) + c₁t⟨∇f, d⟩, or, where the decrease the full step predicts is below
    the rounding of f (near the optimum, f is flat to rounding), with a smaller residual
    ‖∇f(x + td)‖ < ‖∇f(x)‖; otherwise the next t minimises the quadratic through f(x),
    ⟨∇f, d⟩ and f(x + td), kept within [0.1t, 0.5t]. Only the chains still searching are
    evaluated (so a chain's evaluations never depend on the others'). Returns the new
    (x, f, ∇f) and which active chains found no step (they stay where they are)."""
    slope = _dot(grad, direction)
    residual = _norm(grad)
    rounding = FLAT_ROUNDINGS * torch.finfo(value.dtype).eps * (1 + value.abs())
    flat = -slope <= rounding
    new_x, new_value, new_grad = x.clone(), value.clone(), grad.clone()
    rows = active.nonzero().squeeze(1)
    step = torch.ones_like(value[rows])
    for _ in range(MAX_BACKTRACKS):
        if rows.numel() == 0:
            break
        trial = x[rows] + step[:, None] * direction[rows]
        trial_value, trial_grad = _objective(evaluate, trial, y[rows])
        decrease = trial_value <= value[rows] + ARMIJO * step * slope[rows]
        smaller = flat[rows] & (_norm(trial_grad) < residual[rows])
        good = (decrease | smaller) & torch.isfinite(trial_value)
        good = good & torch.isfinite(trial_grad).all(1)
        taken = rows[good]
        new_x[taken], new_value[taken], new_grad[taken] = (
            trial[good],
            trial_value[good],
            trial_grad[good],
        )
        rows, step, trial_value = rows[~good], step[~good], trial_value[~good]
        rise = trial_value - value[rows] - slope[rows] * step
        guess = -slope[rows] * step * step / (2 * rise)
        guess = torch.where(torch.isfinite(guess) & (rise > 0), guess, 0.5 * step)
        step = torch.minimum(torch.maximum(guess, 0.1 * step), 0.5 * step)
    stalled = torch.zeros_like(active)
    stalled[rows] = True
    return new_x, new_value, new_grad, stalled


def _evaluator(potential: Potential, gradient: Callable[[Tensor], Tensor] | None) -> Evaluate:
    """x ↦ (G(x), ∇G(x)), detached: by autograd, or from a closed-form gradient."""
    if gradient is None:
        return lambda x: potential_gradient(potential, x)

    def evaluate(x: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            value = potential(x)
            _check_value(value, x)
            return value, gradient(x)

    return evaluate


def hessian_preconditioner(potential: Potential, x: Tensor) -> Preconditioner:
    """v ↦ ∇²G(x)⁻¹v per chain on flat (B, D) vectors, by Cholesky of the Hessian at `x`
    (D backward passes: small D). L-BFGS started from it takes a Newton step first."""
    factor = torch.linalg.cholesky(potential_hessian(potential, x))

    def apply(v: Tensor) -> Tensor:
        return torch.cholesky_solve(v.unsqueeze(-1), factor).squeeze(-1)

    return apply


def solve_inverse(
    potential: Potential,
    y: Tensor,
    start: Tensor | None = None,
    *,
    tolerance: float = 1e-6,
    max_iterations: int = 50,
    history: int = 10,
    method: str = "lbfgs",
    preconditioner: Preconditioner | None = None,
    gradient: Callable[[Tensor], Tensor] | None = None,
) -> SolveResult:
    """x = ∇G*(y) = argmin_x G(x) − ⟨x, y⟩ for every chain, each solved on its own.

    Per chain: L-BFGS with its own history of `history` pairs (s, Δ∇) and the scaling
    sᵀΔ∇ / Δ∇ᵀΔ∇ of its newest pair, or Newton's step with the exact Hessian
    (``method="newton"``, D backward passes per iteration: small D only); then a backtracking
    Armijo line search of its own; it stops when ‖∇G(x) − y‖ ≤ `tolerance` or when its line
    search finds no step (a flat, rounding-limited objective), and is frozen from then on.
    Pairs with sᵀΔ∇ ≤ 0 (impossible for a strictly convex G, up to rounding) are skipped.

    Arguments:
        potential: G, mapping (B, ...) to (B,), row-separable, differentiable by autograd
            (its parameters get no `.grad`: only ∇ₓ is taken).
        y: dual points (B, ...).
        start: the warm start (B, ...), e.g. the chain's previous x (default: `y`, as the
            reference code; right when ∇G ≈ identity).
        tolerance: the per-chain residual ‖∇G(x) − y‖ that counts as converged; a residual
            within `ROUNDING_FLOOR`·eps·(1 + ‖y‖) of the dtype (float32: ≈ 1e-6 for
            ‖y‖ ≈ 1) counts too, since rounding keeps it from going lower.
        max_iterations: iterations at most per chain.
        history: L-BFGS pairs kept per chain.
        method: "lbfgs" or "newton".
        preconditioner: L-BFGS's initial inverse Hessian, a per-chain map v ↦ Mv on flat
            (B, D) vectors (e.g. the inverse of ∇²G at the warm start, `hessian_preconditioner`:
            the first step is then Newton's); default: the scaling γI of the newest pair.
        gradient: ∇G in closed form, (B, ...) → (B, ...) (default: autograd of `potential`;
            with it G is evaluated without a graph).

    Returns:
        SolveResult: x (detached, shape of y), residual, iterations and converged per chain.

    Example:
        >>> y = torch.tensor([[2.0, -4.0]], dtype=torch.float64)
        >>> result = solve_inverse(lambda x: x.square().sum(1), y)  # ∇G(x) = 2x
        >>> result.x.tolist(), bool(result.converged)
        ([[1.0, -2.0]], True)
    """
    if method not in METHODS:
        raise ValueError(f"solve_inverse: method must be one of {METHODS}, got {method!r}")
    if history < 1 or max_iterations < 0 or not tolerance > 0:
        raise ValueError(
            f"solve_inverse needs history >= 1, max_iterations >= 0 and tolerance > 0, got "
            f"{history}, {max_iterations}, {tolerance}"
        )
    y = y.detach()
    start = y if start is None else start.detach()
    if start.shape != y.shape:
        raise ValueError(
            f"solve_inverse: the warm start is {tuple(start.shape)} but y is {tuple(y.shape)}; "
            f"pass the chains' current x (same shape as y)"
        )
    batch, dim = y.shape[0], y[0].numel()
    evaluate = _evaluator(potential, gradient)
    x = start.flatten(1).clone()
    value, grad = _objective(evaluate, x, y)
    residual = _norm(grad)
    threshold = torch.clamp(
        ROUNDING_FLOOR * torch.finfo(y.dtype).eps * (1 + _norm(y.flatten(1))), min=tolerance
    )
    active = residual > threshold
    iterations = torch.zeros(batch, dtype=torch.int64, device=y.device)
    steps = x.new_zeros(history, batch, dim)
    changes = x.new_zeros(history, batch, dim)
    rho = x.new_zeros(history, batch)
    count = torch.zeros(batch, dtype=torch.int64, device=y.device)
    for _ in range(max_iterations):
        if not bool(active.any()):
            break
        if method == "newton":
            direction = _newton_direction(potential, x, grad, y.shape)
        else:
            direction = _lbfgs_direction(grad, steps, changes, rho, count, preconditioner)
        descent = _dot(grad, direction) < 0  # else (rounding, NaN) fall back to −∇f
        direction = torch.where(descent[:, None], direction, -grad)
        direction = torch.where(active[:, None], direction, torch.zeros_like(direction))
        new_x, new_value, new_grad, stalled = _line_search(
            evaluate, y, x, value, grad, direction, active
        )
        moved = active & ~stalled
        step, change = new_x - x, new_grad - grad
        curvature = _dot(step, change)
        keep = moved & (curvature > 0)
        shifted_steps = torch.cat((step[None], steps[:-1]), 0)
        shifted_changes = torch.cat((change[None], changes[:-1]), 0)
        shifted_rho = torch.cat((1 / torch.where(keep, curvature, 1.0)[None], rho[:-1]), 0)
        steps = torch.where(keep[None, :, None], shifted_steps, steps)
        changes = torch.where(keep[None, :, None], shifted_changes, changes)
        rho = torch.where(keep[None], shifted_rho, rho)
        count = count + keep.long()
        x = torch.where(moved[:, None], new_x, x)
        value = torch.where(moved, new_value, value)
        grad = torch.where(moved[:, None], new_grad, grad)
        iterations = iterations + active.long()
        residual = _norm(grad)
        active = moved & (residual > threshold)
    return SolveResult(
        x=x.reshape(y.shape),
        residual=residual,
        iterations=iterations,
        converged=residual <= threshold,
    )
