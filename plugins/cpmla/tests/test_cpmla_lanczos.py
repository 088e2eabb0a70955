"""Per-chain Lanczos against eigh (method reference §1 and §5 item 3), float64.

- m = d: each probe's d·v̂ᵀlog(H)v̂ and H^{1/2}v equal the eigh values to 1e-6 (measured
  3e-8 for the log, set by the 1e-8 floor on the eigenvalues, and 5e-15 for the root).
- m = 10, d = 64, spectrum in [1, 10]: per probe |SLQ(v) − vᵀlog(H)v| ≤ 1e-4 (measured
  3e-6; the reference 7e-6). A mean over probes would be Hutchinson noise, not this test.
"""

from __future__ import annotations

import pytest
import torch
from cpmla_fixtures import F64, batched_times, matrix_function, random_spd

from ebmkit_cpmla.lanczos import (
    lanczos_logdet,
    lanczos_quadrature,
    lanczos_sqrt_times,
    lanczos_tridiagonal,
    rademacher_probes,
)


def _probe(batch: int, dim: int, seed: int) -> torch.Tensor:
    like = torch.zeros(batch, dim, dtype=F64)
    return rademacher_probes(like, 1, torch.Generator().manual_seed(seed))


def _quadratic_form(matrices: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (v.unsqueeze(1) @ matrices @ v.unsqueeze(-1)).flatten()


@pytest.mark.parametrize("dim", [2, 5, 12])
def test_m_equal_d_gives_each_probe_exactly(dim) -> None:
    matrices, eigenvalues, vectors = random_spd(6, dim, 0.3, 20.0, seed=dim)
    hvp = batched_times(matrices)
    probes = _probe(6, dim, seed=dim)
    log_h = matrix_function(eigenvalues, vectors, torch.log)
    estimate = lanczos_logdet(hvp, probes, steps=dim)
    assert (estimate - _quadratic_form(log_h, probes[0])).abs().max() < 1e-6
    root = matrix_function(eigenvalues, vectors, torch.sqrt)
    expected = (root @ probes[0].unsqueeze(-1)).squeeze(-1)
    assert (lanczos_sqrt_times(hvp, probes[0], dim) - expected).abs().max() < 1e-6
    tri = lanczos_tridiagonal(hvp, probes[0], dim)
    assert torch.allclose(torch.linalg.eigvalsh(tri.matrix), eigenvalues.sort(1).values)
    gram = tri.basis @ tri.basis.mT
    assert torch.allclose(gram, torch.eye(dim, dtype=F64).expand_as(gram), atol=1e-12)


def test_ten_steps_give_each_probe_to_1e_4_on_a_spectrum_in_1_to_10() -> None:
    matrices, eigenvalues, vectors = random_spd(8, 64, 1.0, 10.0, seed=0)
    probes = _probe(8, 64, seed=1)
    log_h = matrix_function(eigenvalues, vectors, torch.log)
    estimate = lanczos_logdet(batched_times(matrices), probes, steps=10)
    error = (estimate - _quadratic_form(log_h, probes[0])).abs().max()
    assert error <= 1e-4, error


def test_several_probes_average_and_each_chain_keeps_its_own_matrix() -> None:
    matrices, eigenvalues, vectors = random_spd(3, 4, 0.5, 4.0, seed=2)
    probes = rademacher_probes(torch.zeros(3, 4, dtype=F64), 5, torch.Generator().manual_seed(0))
    log_h = matrix_function(eigenvalues, vectors, torch.log)
    expected = torch.stack([_quadratic_form(log_h, probe) for probe in probes]).mean(0)
    batch = lanczos_logdet(batched_times(matrices), probes, 4)
    assert (batch - expected).abs().max() < 1e-6
    one = lanczos_logdet(batched_times(matrices[1:2]), probes[:, 1:2], 4)
    assert (one - batch[1]).abs().max() < 1e-12


def test_an_exhausted_krylov_space_stays_exact_and_finite() -> None:
    """H with two distinct eigenvalues: β vanishes after two steps; m = d keeps going."""
    _, _, vectors = random_spd(2, 6, 1.0, 2.0, seed=3)
    eigenvalues = torch.tensor([1.0, 1.0, 1.0, 4.0, 4.0, 4.0], dtype=F64).expand(2, 6)
    matrices = matrix_function(eigenvalues, vectors, lambda t: t)
    v = _probe(2, 6, seed=4)[0]
    root = matrix_function(eigenvalues, vectors, torch.sqrt)
    result = lanczos_sqrt_times(batched_times(matrices), v, 6)
    assert torch.isfinite(result).all()
    assert (result - (root @ v.unsqueeze(-1)).squeeze(-1)).abs().max() < 1e-10
    log_h = matrix_function(eigenvalues, vectors, torch.log)
    value = lanczos_quadrature(batched_times(matrices), v, 6, torch.log)
    assert (value - _quadratic_form(log_h, v)).abs().max() < 1e-10


def test_image_shaped_vectors_and_bad_input() -> None:
    matrices, eigenvalues, vectors = random_spd(2, 12, 1.0, 3.0, seed=5)

    def hvp(v: torch.Tensor) -> torch.Tensor:
        return batched_times(matrices)(v.flatten(1)).reshape(v.shape)

    v = torch.randn(2, 3, 2, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    root = matrix_function(eigenvalues, vectors, torch.sqrt)
    expected = (root @ v.flatten(1).unsqueeze(-1)).reshape(v.shape)
    assert (lanczos_sqrt_times(hvp, v, 12) - expected).abs().max() < 1e-10
    with pytest.raises(ValueError, match="steps >= 1"):
        lanczos_tridiagonal(hvp, v, 0)
    with pytest.raises(ValueError, match=r"\(P, B, \.\.\.\)"):
        lanczos_logdet(batched_times(matrices), torch.ones(2, 12, dtype=F64), 3)
