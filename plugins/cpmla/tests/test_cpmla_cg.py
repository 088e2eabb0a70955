"""Per-chain conjugate gradient and the log-det surrogate (method reference §1, §5.3–5.4).

- CG (§5.4): every chain's solution satisfies ‖Hz − v‖ ≤ atol at the training default
  atol = 1e-3; each chain stops on its own (its result does not depend on its batch).
- Surrogate gradient (§5.3): averaged over ALL 2⁵ Rademacher vectors with an exact solve
  (CG for d iterations at atol = rtol = 0), ∇_ψ mean surrogate equals autograd's
  ∇_ψ log det ∇²G to a relative error < 1e-8 (seen: 5.2e-16). The average over every sign
  vector makes E[vvᵀ] = I exactly, so no Hutchinson noise is left to hide an error.
  Skipping CG (z = v) fails it (relative error 0.65 on this potential, Hessian eigenvalues
  0.22–0.60) while its cosine is still 0.988: a cosine test would have no power. CG at the
  training default atol = 1e-3 is not an exact solve (4.3e-5): not this test's setting.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from cpflow_fixtures import F64, scrambled_icnn

from ebmkit_cpmla.cg import (
    conjugate_gradient,
    hessian_vector_product,
    logdet_surrogate,
    rademacher,
)


def random_spd(n: int, d: int, *, seed: int, low: float, high: float) -> torch.Tensor:
    """n symmetric positive definite d×d matrices, eigenvalues log-spaced in [low, high]."""
    generator = torch.Generator().manual_seed(seed)
    rotation = torch.linalg.qr(torch.randn(n, d, d, generator=generator, dtype=F64))[0]
    spectrum = torch.logspace(
        torch.log10(torch.tensor(low)), torch.log10(torch.tensor(high)), d, dtype=F64
    )
    return rotation @ torch.diag_embed(spectrum.expand(n, d)) @ rotation.mT


def matrix_hvp(matrices: torch.Tensor):  # noqa: ANN201
    return lambda u: (matrices @ u.unsqueeze(2)).squeeze(2)


# --------------------------------------------------------------------------------------
# Conjugate gradient


@pytest.mark.parametrize("spectrum", [(1.0, 10.0), (1e-2, 10.0)])
def test_cpmla_cg_solution_has_residual_below_atol(spectrum: tuple[float, float]) -> None:
    matrices = random_spd(64, 8, seed=0, low=spectrum[0], high=spectrum[1])
    v = rademacher((64, 8), like=matrices, generator=torch.Generator().manual_seed(1))
    result = conjugate_gradient(matrix_hvp(matrices), v, v, max_iterations=32, atol=1e-3)
    true_residual = (matrix_hvp(matrices)(result.solution) - v).norm(dim=1)
    assert bool(result.converged.all())
    assert float(true_residual.max()) <= 1e-3
    assert torch.allclose(true_residual, result.residual_norm, atol=1e-9)
    assert 1 <= int(result.iterations.min()) and int(result.iterations.max()) <= 32


def test_cpmla_cg_reports_a_chain_that_ran_out_of_iterations() -> None:
    matrices = random_spd(4, 8, seed=2, low=1e-3, high=10.0)
    v = torch.ones(4, 8, dtype=F64)
    result = conjugate_gradient(matrix_hvp(matrices), v, max_iterations=2, atol=1e-10)
    assert not bool(result.converged.any())
    assert result.iterations.tolist() == [2, 2, 2, 2]
    assert float(result.residual_norm.min()) > 1e-10


def test_cpmla_cg_stops_each_chain_on_its_own() -> None:
    matrices = random_spd(16, 6, seed=3, low=0.1, high=10.0)
    matrices[:4] = torch.eye(6, dtype=F64)  # these converge in one iteration
    v = rademacher((16, 6), like=matrices, generator=torch.Generator().manual_seed(4))
    start = torch.zeros_like(v)
    together = conjugate_gradient(matrix_hvp(matrices), v, start, max_iterations=6, atol=1e-8)
    assert together.iterations[:4].tolist() == [1, 1, 1, 1]
    assert int(together.iterations[4:].min()) > 1
    order = torch.randperm(16, generator=torch.Generator().manual_seed(5))
    shuffled = conjugate_gradient(
        matrix_hvp(matrices[order]), v[order], start, max_iterations=6, atol=1e-8
    )
    assert torch.equal(shuffled.solution, together.solution[order])
    for i in (0, 7):  # a chain alone gets what it got in the batch
        alone = conjugate_gradient(
            matrix_hvp(matrices[i : i + 1]), v[i : i + 1], start[:1], max_iterations=6, atol=1e-8
        )
        assert torch.allclose(alone.solution[0], together.solution[i], rtol=0, atol=1e-14)
        assert int(alone.iterations[0]) == int(together.iterations[i])


def test_cpmla_cg_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="max_iterations must be >= 0"):
        conjugate_gradient(lambda u: u, torch.ones(1, 2), max_iterations=-1)
    with pytest.raises(ValueError, match="atol and rtol must be >= 0"):
        conjugate_gradient(lambda u: u, torch.ones(1, 2), max_iterations=1, atol=-1.0)


# --------------------------------------------------------------------------------------
# The surrogate gradient, averaged over every Rademacher vector


DIM = 5


def surrogate_case() -> tuple:
    """A curved potential G = 3·I(x) + 0.05/2‖x‖² (d = 5, float64; Hessian eigenvalues
    0.22–0.60 at x, far from I so that H⁻¹ matters), one point x, its parameters."""
    net = scrambled_icnn(DIM, seed=7, hidden=16, depth=3)

    def potential(x: torch.Tensor) -> torch.Tensor:
        return 3.0 * net(x) + 0.025 * x.square().sum(1)

    x = torch.randn(1, DIM, generator=torch.Generator().manual_seed(8), dtype=F64)
    parameters = [p for p in net.parameters() if p.requires_grad]
    return potential, x, parameters


def exact_logdet_gradient(potential, x, parameters) -> torch.Tensor:  # noqa: ANN001
    point = x.clone().requires_grad_(True)
    gradient = torch.autograd.grad(potential(point).sum(), point, create_graph=True)[0]
    columns = [
        hessian_vector_product(gradient, point, create_graph=True)(
            torch.eye(DIM, dtype=F64)[i].expand(1, DIM)
        )
        for i in range(DIM)
    ]
    hessian = torch.stack(columns, 2)[0]
    logdet = torch.linalg.slogdet(hessian).logabsdet
    return flat_gradient(logdet, parameters)


def surrogate_gradient(potential, x, parameters, **cg) -> torch.Tensor:  # noqa: ANN001
    signs = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=DIM)), dtype=F64)
    probes = signs.unsqueeze(1)  # (32, 1, d): every sign vector, one chain
    point = x.clone().requires_grad_(True)
    gradient = torch.autograd.grad(potential(point).sum(), point, create_graph=True)[0]
    surrogate, _ = logdet_surrogate(gradient, point, probes, **cg)
    return flat_gradient(surrogate.sum(), parameters)


def flat_gradient(value: torch.Tensor, parameters: list) -> torch.Tensor:
    """∂value/∂ψ flattened (zeros for a parameter the Hessian does not depend on: a_L)."""
    grads = torch.autograd.grad(value, parameters, allow_unused=True)
    return torch.cat(
        [
            torch.zeros_like(p).flatten() if g is None else g.flatten()
            for g, p in zip(grads, parameters, strict=True)
        ]
    )


def relative_error(estimate: torch.Tensor, exact: torch.Tensor) -> float:
    return float((estimate - exact).norm() / exact.norm())


def test_cpmla_surrogate_gradient_over_all_signs_equals_the_exact_logdet_gradient() -> None:
    potential, x, parameters = surrogate_case()
    exact = exact_logdet_gradient(potential, x, parameters)
    estimate = surrogate_gradient(potential, x, parameters, max_iterations=DIM, atol=0.0)
    assert relative_error(estimate, exact) < 1e-8


def test_cpmla_surrogate_test_fails_without_cg_and_a_cosine_would_not() -> None:
    potential, x, parameters = surrogate_case()
    exact = exact_logdet_gradient(potential, x, parameters)
    no_cg = surrogate_gradient(potential, x, parameters, max_iterations=0, atol=0.0)  # z = v
    cosine = float(no_cg @ exact / (no_cg.norm() * exact.norm()))
    assert relative_error(no_cg, exact) > 0.1
    assert cosine > 0.8  # a cosine test would pass the wrong code


def test_cpmla_surrogate_with_the_training_tolerance_is_not_the_exact_test() -> None:
    potential, x, parameters = surrogate_case()
    exact = exact_logdet_gradient(potential, x, parameters)
    loose = surrogate_gradient(potential, x, parameters, max_iterations=DIM, atol=1e-3)
    assert 1e-8 < relative_error(loose, exact) < 1e-3


def test_cpmla_surrogate_rejects_probes_of_the_wrong_shape() -> None:
    x = torch.zeros(3, 2, requires_grad=True)
    gradient = torch.autograd.grad(x.square().sum(), x, create_graph=True)[0]
    with pytest.raises(ValueError, match=r"probes of shape \(3, 3\)"):
        logdet_surrogate(gradient, x, torch.ones(3, 3))
