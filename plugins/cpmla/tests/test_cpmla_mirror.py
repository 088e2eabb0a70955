"""Mirror maps: the generic autograd paths of `PotentialMirror` against closed forms, the
fixed curved G of the stationarity tests, errors, registration."""

from __future__ import annotations

import pytest
import torch
from cpmla_fixtures import F64, TARGET_COV, TARGET_MEAN, gaussian_samples

import ebmkit
from ebmkit_cpmla.lanczos import rademacher_probes
from ebmkit_cpmla.mirror import (
    CurvedMirror,
    MirrorMap,
    PotentialMirror,
    QuadraticMirror,
    check_mirror_shape,
)
from ebmkit_cpmla.solve import potential_gradient, potential_hessian

MATRIX = torch.tensor([[2.0, 0.8, 0.1], [0.8, 1.0, -0.3], [0.1, -0.3, 0.6]], dtype=F64)


class GenericQuadratic(PotentialMirror):
    """½xᵀAx written as a potential only: every other method is the base class's."""

    event_shape = (3,)

    def potential(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((x.unsqueeze(1) * MATRIX).sum(-1) * x).sum(1)


def _points(batch: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_the_generic_paths_equal_the_closed_forms() -> None:
    closed, generic = QuadraticMirror(matrix=MATRIX), GenericQuadratic()
    x, v = _points(4, 3, 0), _points(4, 3, 1)
    assert isinstance(closed, MirrorMap) and isinstance(generic, MirrorMap)
    assert torch.allclose(generic.potential(x), closed.potential(x), atol=1e-14)
    assert torch.allclose(generic.grad(x), closed.grad(x), atol=1e-14)
    assert torch.allclose(generic.hvp(x, v), closed.hvp(x, v), atol=1e-14)
    assert torch.allclose(generic.hessian(x), closed.hessian(x), atol=1e-14)
    root = closed.sqrt_hessian_times(x, v)
    assert torch.allclose(generic.sqrt_hessian_times(x, v), root, atol=1e-12)
    lanczos = generic.sqrt_hessian_times(x, v, method="lanczos", steps=3)
    assert torch.allclose(lanczos, root, atol=1e-10)
    assert torch.allclose(generic.hessian_diagonal(x), closed.hessian_diagonal(x), atol=1e-14)
    assert torch.allclose(generic.log_det_hessian(x), closed.log_det_hessian(x), atol=1e-12)
    slq = generic.log_det_hessian(
        x, method="lanczos", steps=3, n_probes=2, generator=torch.Generator().manual_seed(0)
    )
    probes = rademacher_probes(x, 2, torch.Generator().manual_seed(0))
    eigenvalues, vectors = torch.linalg.eigh(MATRIX)
    log_matrix = (vectors * eigenvalues.log()) @ vectors.T
    expected = ((probes @ log_matrix) * probes).sum(-1).mean(0)  # per probe: exact at m = D
    assert torch.allclose(slq, expected, atol=1e-6)
    y = closed.grad(x)
    assert (generic.inverse(y).x - closed.inverse(y).x).abs().max() < 1e-6
    assert torch.allclose(closed.inverse(y).x, x, atol=1e-14)


def test_the_quadratic_mirror_is_per_coordinate_at_any_shape_and_alpha_adds_a_floor() -> None:
    mirror = QuadraticMirror(scale=1.0, alpha=0.25)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    assert mirror.event_shape is None
    assert torch.equal(mirror.grad(x), 1.25 * x)
    assert torch.allclose(mirror.inverse(mirror.grad(x)).x, x, rtol=1e-6, atol=0)
    assert torch.allclose(mirror.sqrt_hessian_times(x, x), 1.25**0.5 * x)
    assert torch.allclose(mirror.log_det_hessian(x), torch.full((2,), 48 * 0.22314355))
    per_coordinate = QuadraticMirror(scale=[1.0, 4.0])
    assert per_coordinate.event_shape == (2,)
    assert per_coordinate.grad(torch.ones(1, 2)).tolist() == [[1.0, 4.0]]
    assert per_coordinate.hessian(torch.ones(2, 2)).shape == (2, 2, 2)


def test_the_curved_mirror_spans_over_5x_over_the_target_with_off_diagonals() -> None:
    """Measured on 4000 target draws: eigenvalues 0.37 to 6.5, H₀₁ 0.07 to 2.3 (mean 1.17)."""
    mirror = CurvedMirror(dim=2)
    x = gaussian_samples(TARGET_MEAN, TARGET_COV, 4000, seed=0)
    hessian = mirror.hessian(x)
    eigenvalues = torch.linalg.eigvalsh(hessian)
    floor = mirror.base * (1 - mirror.coupling)  # A's smallest eigenvalue
    assert eigenvalues.min() >= floor - 1e-12
    assert eigenvalues.max() / eigenvalues.min() >= 5
    assert hessian[:, 0, 1].abs().mean() > 0.3


def test_the_curved_mirror_closed_forms_equal_autograd_of_its_potential() -> None:
    mirror = CurvedMirror(dim=3, seed=1)
    x, v = _points(6, 3, 6), _points(6, 3, 7)
    grad = potential_gradient(mirror.potential, x)[1]
    assert torch.allclose(mirror.grad(x), grad, atol=1e-13)
    hessian = potential_hessian(mirror.potential, x)
    assert torch.allclose(mirror.hessian(x), hessian, atol=1e-13)
    assert torch.allclose(mirror.hvp(x, v), (hessian @ v.unsqueeze(-1)).squeeze(-1), atol=1e-13)
    on_graph = mirror.grad(x.requires_grad_(True), create_graph=True)
    (back,) = torch.autograd.grad(on_graph.sum(), x)
    assert torch.allclose(back, hessian.sum(1), atol=1e-13)


def test_the_two_by_two_closed_form_root_equals_eigh() -> None:
    mirror = CurvedMirror(dim=2)
    x, v = _points(6, 2, 8), _points(6, 2, 9)
    eigenvalues, vectors = torch.linalg.eigh(mirror.hessian(x))
    root = (vectors * eigenvalues.sqrt()[:, None, :]) @ vectors.mT
    expected = (root @ v.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(mirror.sqrt_hessian_times(x, v), expected, atol=1e-13)


def test_the_curved_mirror_noise_squares_to_the_hessian() -> None:
    mirror = CurvedMirror(dim=2)
    x, v = _points(5, 2, 2), _points(5, 2, 3)
    twice = mirror.sqrt_hessian_times(x, mirror.sqrt_hessian_times(x, v))
    assert torch.allclose(twice, mirror.hvp(x, v), atol=1e-12)
    lanczos = mirror.sqrt_hessian_times(x, v, method="lanczos", steps=2)
    assert torch.allclose(lanczos, mirror.sqrt_hessian_times(x, v), atol=1e-12)


def test_the_hutchinson_diagonal_averages_to_the_diagonal_above_the_exact_limit() -> None:
    mirror = CurvedMirror(dim=12, coupling=0.0)  # small off-diagonals: the clamp stays off
    mirror.exact_dim_limit = 4
    x = _points(1, 12, 4).expand(4000, 12)
    estimate = mirror.hessian_diagonal(x, generator=torch.Generator().manual_seed(0))
    exact = torch.diagonal(mirror.hessian(x[:1]), dim1=1, dim2=2)[0]
    assert bool((estimate >= mirror.diagonal_floor).all())
    assert (estimate.mean(0) - exact).abs().max() < 0.05


def test_bad_mirrors_are_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="alpha is a floor.*got -0.1.*QuadraticMirror.alpha"):
        QuadraticMirror(alpha=-0.1)
    with pytest.raises(ValueError, match="every scale must be finite and > 0"):
        QuadraticMirror(scale=[1.0, 0.0])
    with pytest.raises(ValueError, match="positive definite"):
        QuadraticMirror(matrix=[[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match="symmetric"):
        QuadraticMirror(matrix=[[1.0, 0.5], [0.0, 1.0]])
    with pytest.raises(ValueError, match="CurvedMirror needs"):
        CurvedMirror(base=0.0)
    with pytest.raises(ValueError, match="method must be one of"):
        CurvedMirror().sqrt_hessian_times(torch.zeros(1, 2), torch.zeros(1, 2), method="x")
    message = r"its mirror CurvedMirror has event_shape \(3,\) but the chains are \(2,\).*dim = 2"
    with pytest.raises(ValueError, match=message):
        check_mirror_shape(CurvedMirror(dim=3), torch.zeros(4, 2), "samplers.MirrorLangevin")
    check_mirror_shape(QuadraticMirror(), torch.zeros(4, 3, 2, 2), "samplers.MirrorLangevin")


def test_mirrors_are_registered_and_configurable() -> None:
    names = {component.name for component in ebmkit.components("mirror")}
    assert {"QuadraticMirror", "CurvedMirror"} <= names
    mirror = ebmkit.create("mirror", "QuadraticMirror", scale=2.0, alpha=0.5)
    assert torch.equal(mirror.grad(torch.ones(1, 2)), torch.full((1, 2), 2.5))


def test_mirrors_save_and_load_bit_for_bit() -> None:
    mirror = CurvedMirror(dim=3, seed=7)
    fresh = CurvedMirror(dim=3, seed=8)
    fresh.load_state_dict(mirror.state_dict())
    x = _points(3, 3, 5)
    assert torch.equal(fresh.grad(x), mirror.grad(x))
