"""The per-chain inverse solve x = ∇G*(y) (method reference §1 and §5 item 2).

- Round trips in float64 for d = 2..16 on a curved strongly convex G (`CurvedMirror`):
  max ‖∇G(∇G*(y)) − y‖ < 1e-6 and max ‖∇G*(∇G(x)) − x‖ < 1e-5.
- Per-chain independence: a chain's result is bit-identical solved alone or in a batch with
  others, including chains that need many more iterations. A batched L-BFGS with one shared
  line search (torch.optim.LBFGS on the summed objective, the reference code's solver)
  fails this: measured, chain 0 moves by 7e-6 when batched (so the test has power).
"""

from __future__ import annotations

import pytest
import torch
from cpmla_fixtures import F64

from ebmkit_cpmla.mirror import CurvedMirror
from ebmkit_cpmla.solve import (
    ROUNDING_FLOOR,
    potential_gradient,
    potential_hessian,
    row_sum,
    solve_inverse,
)


def _curved(dim: int) -> CurvedMirror:
    return CurvedMirror(dim=dim, n_ridges=4, seed=dim)


@pytest.mark.parametrize("dim", range(2, 17))
def test_inverse_and_forward_round_trip_in_float64(dim) -> None:
    mirror = _curved(dim)
    generator = torch.Generator().manual_seed(dim)
    y = 2 * torch.randn(32, dim, generator=generator, dtype=F64)
    result = mirror.inverse(y)
    assert bool(result.converged.all()), result.residual.max()
    assert (mirror.grad(result.x) - y).norm(dim=1).max() < 1e-6
    assert torch.allclose(result.residual, (mirror.grad(result.x) - y).norm(dim=1), rtol=1e-12)
    x = torch.randn(32, dim, generator=generator, dtype=F64)
    back = mirror.inverse(mirror.grad(x))
    assert (back.x - x).norm(dim=1).max() < 1e-5


def _ridged(x: torch.Tensor) -> torch.Tensor:
    """Σᵢ 4·sqrt(1 + xᵢ²) + 0.05·xᵢ² + 0.02·xᵢxᵢ₋₁ (convex: H ⪰ 0.06·I), from elementwise
    operations and per-row sums only, so each row is computed alike in any batch."""
    shifted = torch.roll(x, 1, dims=1)
    return row_sum(4 * torch.sqrt(1 + x * x) + 0.05 * x * x + 0.02 * x * shifted)


def test_a_chain_solved_alone_or_among_harder_chains_is_bit_identical() -> None:
    """Measured iterations: 7–8 for the near starts, 20–21 for the far ones."""
    generator = torch.Generator().manual_seed(0)
    y = 0.5 * torch.randn(8, 6, generator=generator, dtype=F64)
    start = y.clone()
    start[4:] = 50 * torch.randn(4, 6, generator=generator, dtype=F64)  # far: many more steps
    settings = {"tolerance": 1e-10, "max_iterations": 300}
    batch = solve_inverse(_ridged, y, start, **settings)
    assert bool(batch.converged.all())
    assert batch.iterations[4:].min() > 2 * batch.iterations[:4].max(), batch.iterations
    for index in range(8):
        one = slice(index, index + 1)
        alone = solve_inverse(_ridged, y[one], start[one], **settings)
        assert torch.equal(alone.x, batch.x[one])
        assert torch.equal(alone.iterations, batch.iterations[one])
        assert torch.equal(alone.residual, batch.residual[one])
    reordered = solve_inverse(_ridged, y.flip(0), start.flip(0), **settings)
    assert torch.equal(reordered.x.flip(0), batch.x)


def _shared_line_search(potential, y: torch.Tensor) -> torch.Tensor:
    """The reference code's solve: one L-BFGS (strong Wolfe) over the summed batch."""
    x = y.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [x], lr=1, max_iter=50, line_search_fn="strong_wolfe", tolerance_grad=1e-10
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = (potential(x) - (x * y).sum(1)).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return x.detach()


def test_a_shared_line_search_makes_a_chain_depend_on_its_batch() -> None:
    """The power of the test above: measured |Δx₀| = 7e-6 for the shared solver (its first
    call costs ~3 s: torch.optim's import)."""
    mirror = _curved(6)
    generator = torch.Generator().manual_seed(0)
    y = torch.randn(8, 6, generator=generator, dtype=F64)
    alone = _shared_line_search(mirror.potential, y[:1])
    batched = _shared_line_search(mirror.potential, y)
    assert not torch.equal(alone, batched[:1])


def test_converged_chains_are_frozen_and_a_warm_start_at_the_answer_takes_no_iteration() -> None:
    mirror = _curved(3)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    y = mirror.grad(x)
    first = mirror.inverse(y)
    again = mirror.inverse(y, start=first.x)
    assert torch.equal(again.iterations, torch.zeros(5, dtype=torch.int64))
    assert torch.equal(again.x, first.x)


def test_newton_with_the_exact_hessian_converges_in_fewer_iterations() -> None:
    mirror = _curved(4)
    y = 3 * torch.randn(16, 4, generator=torch.Generator().manual_seed(2), dtype=F64)
    lbfgs = solve_inverse(mirror.potential, y, None, tolerance=1e-10, max_iterations=200)
    newton = solve_inverse(
        mirror.potential, y, None, tolerance=1e-10, max_iterations=200, method="newton"
    )
    assert bool(newton.converged.all()) and bool(lbfgs.converged.all())
    assert (newton.x - lbfgs.x).abs().max() < 1e-9
    assert newton.iterations.float().mean() < lbfgs.iterations.float().mean()


def test_an_iteration_budget_too_small_reports_the_residual_unconverged() -> None:
    mirror = _curved(4)
    y = 3 * torch.randn(4, 4, generator=torch.Generator().manual_seed(3), dtype=F64)
    result = solve_inverse(mirror.potential, y, None, tolerance=1e-12, max_iterations=1)
    assert not bool(result.converged.any())
    assert torch.equal(result.iterations, torch.ones(4, dtype=torch.int64))
    assert torch.allclose(result.residual, (mirror.grad(result.x) - y).norm(dim=1))


def test_image_shaped_chains_keep_their_shape() -> None:
    def potential(x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        return (0.5 * flat.square() + torch.sqrt(1 + flat.square())).sum(1)

    y = torch.randn(3, 2, 3, 3, generator=torch.Generator().manual_seed(4), dtype=F64)
    result = solve_inverse(potential, y, None)
    assert result.x.shape == y.shape and bool(result.converged.all())
    assert potential_hessian(potential, y).shape == (3, 18, 18)


def test_the_solve_leaves_no_parameter_gradient_and_no_graph() -> None:
    mirror = CurvedMirror(dim=2)
    weight = torch.nn.Parameter(torch.tensor(1.5, dtype=F64))

    def potential(x: torch.Tensor) -> torch.Tensor:
        return weight * mirror.potential(x)

    y = torch.ones(2, 2, dtype=F64, requires_grad=True)
    result = solve_inverse(potential, y, None)
    assert weight.grad is None and not result.x.requires_grad
    _, grad = potential_gradient(potential, result.x)
    assert not grad.requires_grad


def test_bad_settings_and_shapes_are_named() -> None:
    mirror = CurvedMirror(dim=2)
    y = torch.zeros(2, 2, dtype=F64)
    with pytest.raises(ValueError, match="method must be one of"):
        solve_inverse(mirror.potential, y, None, method="bfgs")
    with pytest.raises(ValueError, match="warm start is"):
        solve_inverse(mirror.potential, y, torch.zeros(2, 3, dtype=F64))
    with pytest.raises(ValueError, match="to shape \\(B,\\)"):
        solve_inverse(lambda x: x, y, None)
    with pytest.raises(ValueError, match="history >= 1"):
        solve_inverse(mirror.potential, y, None, history=0)


def test_float32_solves_stop_at_the_rounding_floor_as_converged() -> None:
    """In float32 ‖∇G(x) − y‖ cannot go much below eps·‖y‖ (≈ 1e-6 at ‖y‖ ≈ 5): such a
    residual counts as converged (within ROUNDING_FLOOR·eps·(1 + ‖y‖)), not as a failure."""
    mirror = CurvedMirror(dim=2)
    y = 5 * torch.randn(2000, 2, generator=torch.Generator().manual_seed(9))
    result = mirror.inverse(y)
    floor = ROUNDING_FLOOR * torch.finfo(torch.float32).eps * (1 + y.norm(dim=1))
    assert bool(result.converged.all())
    assert bool((result.residual <= torch.clamp(floor, min=1e-6)).all())
    assert (result.residual > 1e-6).any()  # the floor was needed
