"""samplers.MirrorLangevin: the exact tests of the method reference (§5 items 5 and 6).

Wiring (item 5): with G = ½|x|² in closed form one step is ULA bit for bit, through the
generic L-BFGS inverse to 1e-12; with G = ½xᵀAx (A not diagonal, condition number ≥ 4) it is
preconditioned ULA, x ← x − ηA⁻¹∇E + √(2η)A^{−1/2}ε, with the same noise draw. Each wrong
variant of the reference (identity, H^{−1/2} or diagonal noise, ∇E at the dual point, no
noise) is caught by the preconditioned check (A = I could not tell them apart).

Stationarity (item 6): chains started at exact samples must stay at the target; the wrong
variants drift away. Numbers measured with the seeds below are in each test's docstring.
"""

from __future__ import annotations

import math

import pytest
import torch
from cpmla_fixtures import F64, TARGET_COV, TARGET_MEAN, gaussian_energy, gaussian_samples
from torch import Tensor

import ebmkit
from ebmkit import ChainState, Energy, Langevin, energy_and_grad, gaussian_noise
from ebmkit.data.toy import EightGaussians
from ebmkit.testing import (
    SamplerCase,
    check_continuation,
    check_contract,
    check_reproducible,
)
from ebmkit_cpmla.mirror import CurvedMirror, PotentialMirror, QuadraticMirror
from ebmkit_cpmla.mirror_langevin import (
    DUAL,
    MirrorLangevin,
    UnconvergedSolveError,
    UnconvergedSolveWarning,
    attach_implicit_gradient,
)

A = torch.tensor([[3.0, 1.2], [1.2, 1.0]], dtype=F64)  # condition number 7.4


# --------------------------------------------------------------------------------------
# The wrong variants the reference names, each overriding one method


class IdentityNoise(MirrorLangevin):
    def noise_term(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        return gaussian_noise(x, generator)


class InverseRootNoise(MirrorLangevin):
    def noise_term(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        eps = gaussian_noise(x, generator)
        eigenvalues, vectors = torch.linalg.eigh(self.mirror.hessian(x))
        root = (vectors * eigenvalues.rsqrt()[:, None, :]) @ vectors.mT
        return (root @ eps.unsqueeze(-1)).squeeze(-1)


class NoNoise(MirrorLangevin):
    def noise_term(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        return torch.zeros_like(x)


class DoubledNoise(MirrorLangevin):
    """The noise variance doubled (scale ×√2): sampling at temperature 2."""

    def noise_term(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        return math.sqrt(2) * super().noise_term(x, generator)


class GradientAtDual(MirrorLangevin):
    """The ICLR text's typo: ∇E taken at the dual point y instead of x."""

    def drift(self, state: ChainState, energy: Energy) -> tuple[Tensor, int]:
        return energy_and_grad(energy, state.extras[DUAL])[1], 1


def _variants(mirror: object, step_size: float, **settings: object) -> dict[str, MirrorLangevin]:
    made = {
        name: kind(mirror=mirror, step_size=step_size, **settings)
        for name, kind in (
            ("correct", MirrorLangevin),
            ("identity noise", IdentityNoise),
            ("inverse-root noise", InverseRootNoise),
            ("no noise", NoNoise),
            ("gradient at y", GradientAtDual),
        )
    }
    made["diagonal noise"] = MirrorLangevin(
        mirror=mirror, step_size=step_size, noise="diagonal", **settings
    )
    return made


# --------------------------------------------------------------------------------------
# Item 5: the wiring


def _one_step(sampler: object, x: Tensor, energy: Energy, seed: int) -> Tensor:
    state = sampler.init(x, energy)
    new_state, _ = sampler.step(state, energy, generator=torch.Generator().manual_seed(seed))
    return new_state.x


ENERGY = gaussian_energy(TARGET_MEAN, TARGET_COV)


def test_a_step_with_the_closed_form_identity_mirror_is_ula_bit_for_bit() -> None:
    x = gaussian_samples(TARGET_MEAN, TARGET_COV, 64, seed=0)
    mirror_step = _one_step(MirrorLangevin(mirror=QuadraticMirror(), step_size=0.05), x, ENERGY, 1)
    ula_step = _one_step(Langevin(step_size=0.05), x, ENERGY, 1)
    assert torch.equal(mirror_step, ula_step)
    floored = MirrorLangevin(mirror=QuadraticMirror(alpha=0.25), step_size=0.05)
    slower = Langevin(step_size=0.05 / 1.25)  # the α floor: ULA with step η/(1 + α)
    assert (_one_step(floored, x, ENERGY, 1) - _one_step(slower, x, ENERGY, 1)).abs().max() < 1e-12


class HalfSquare(PotentialMirror):
    """G = ½|x|² from its potential alone: ∇G*, H^{1/2} through the generic paths."""

    event_shape = (2,)

    def potential(self, x: Tensor) -> Tensor:
        return 0.5 * (x * x).sum(1)


def test_a_step_through_the_generic_solver_is_ula_to_1e_12() -> None:
    x = gaussian_samples(TARGET_MEAN, TARGET_COV, 64, seed=0)
    generic = MirrorLangevin(mirror=HalfSquare(), step_size=0.05, tolerance=1e-13)
    lanczos = MirrorLangevin(mirror=HalfSquare(), step_size=0.05, noise="lanczos")
    ula_step = _one_step(Langevin(step_size=0.05), x, ENERGY, 1)
    assert (_one_step(generic, x, ENERGY, 1) - ula_step).abs().max() < 1e-12
    assert (_one_step(lanczos, x, ENERGY, 1) - ula_step).abs().max() < 1e-12


def _preconditioned_ula(x: Tensor, seed: int, step_size: float) -> Tensor:
    _, grad = energy_and_grad(ENERGY, x)
    eps = gaussian_noise(x, torch.Generator().manual_seed(seed))
    eigenvalues, vectors = torch.linalg.eigh(A)
    inverse_root = (vectors * eigenvalues.rsqrt()) @ vectors.T
    return (
        x - step_size * grad @ torch.linalg.inv(A) + math.sqrt(2 * step_size) * eps @ inverse_root
    )


def test_a_full_quadratic_mirror_is_preconditioned_ula_and_the_wrong_variants_are_not() -> None:
    """Largest |Δx| over 64 chains at η = 0.05: the correct step 1.8e-15 (closed form) and
    8.9e-14 (generic solver at tolerance 1e-13); identity noise 0.80, H^{−1/2} noise 2.03,
    no noise 1.67, ∇E at y 1.67, diagonal noise 0.96."""
    x = gaussian_samples(TARGET_MEAN, TARGET_COV, 64, seed=0)
    expected = _preconditioned_ula(x, seed=1, step_size=0.05)
    gaps = {
        name: (_one_step(sampler, x, ENERGY, 1) - expected).abs().max().item()
        for name, sampler in _variants(QuadraticMirror(matrix=A), 0.05).items()
    }

    class Generic(PotentialMirror):
        event_shape = (2,)

        def potential(self, x: Tensor) -> Tensor:
            return 0.5 * ((x.unsqueeze(1) * A).sum(-1) * x).sum(1)

    generic = MirrorLangevin(mirror=Generic(), step_size=0.05, tolerance=1e-13)
    gaps["correct, generic"] = (_one_step(generic, x, ENERGY, 1) - expected).abs().max().item()
    assert gaps["correct"] < 1e-12 and gaps["correct, generic"] < 1e-12, gaps
    wrong = {name: gap for name, gap in gaps.items() if not name.startswith("correct")}
    assert min(wrong.values()) > 0.1, gaps


# --------------------------------------------------------------------------------------
# Item 6: stationarity


def _moment_errors(sampler: MirrorLangevin, n_chains: int, n_steps: int) -> tuple[float, float]:
    x0 = gaussian_samples(TARGET_MEAN, TARGET_COV, n_chains, seed=10)
    result = sampler.sample(ENERGY, x0, n_steps, generator=torch.Generator().manual_seed(11))
    mean_error = (result.x.mean(0) - TARGET_MEAN).abs().max().item()
    cov_error = (torch.cov(result.x.T) - TARGET_COV).abs().max().item()
    return mean_error, cov_error


CORRECT_STEPS = 300
WRONG_STEPS = 100


@pytest.mark.slow
def test_stationarity_on_a_correlated_gaussian_with_a_curved_mirror() -> None:
    """4000 chains from exact samples of N(μ, [[1, .6], [.6, .5]]), `CurvedMirror()`
    (eigenvalues 0.37–6.5 over the target, off-diagonals up to 2.3), η = 1e-2, exact noise:
    |Δmean| ≤ 0.08 and |ΔΣ| ≤ 0.1 (largest entry).

    Fewer steps than the reference's 1000 (which cost ~90 s per kernel here): the correct
    kernel runs `CORRECT_STEPS` = 300, each wrong one `WRONG_STEPS` = 100, where all are
    already caught. Measured (max |Δmean|, max |ΔΣ|): correct (0.004, 0.013) at 300 steps,
    (0.002, 0.014) at 1000; at 100 steps: diagonal noise (0.010, 0.138), identity noise
    (0.016, 0.305), H^{−1/2} noise (0.016, 0.364), no noise (0.018, 0.418), ∇E at y
    (0.332, 0.731); diagonal noise at 1000 steps (0.001, 0.218)."""
    variants = _variants(CurvedMirror(), 1e-2)
    errors = {"correct": _moment_errors(variants.pop("correct"), 4000, CORRECT_STEPS)}
    assert errors["correct"][0] <= 0.08 and errors["correct"][1] <= 0.1, errors
    for name, sampler in variants.items():
        errors[name] = _moment_errors(sampler, 4000, WRONG_STEPS)
        assert errors[name][0] > 0.08 or errors[name][1] > 0.1, (name, errors)


@pytest.mark.slow
def test_the_diagonal_noise_bias_does_not_vanish_as_the_step_shrinks() -> None:
    """G = ½xᵀAx, 4000 chains from exact samples of N(μ, [[1, .6], [.6, .5]]), over the same
    time ηn = 3: max |ΔΣ| with diagonal noise 0.271 at η = 1e-2 and 0.271 at η = 5e-3
    (0.284 at 2e-2, 0.272 at 2.5e-3), with exact noise 0.014 and 0.019 (the noise level).
    The diagonal noise changes the diffusion itself, so shrinking η cannot remove it."""
    errors = {}
    for step_size, n_steps in ((1e-2, 300), (5e-3, 600)):
        for noise in ("diagonal", "exact"):
            mirror = QuadraticMirror(matrix=A)
            sampler = MirrorLangevin(mirror=mirror, step_size=step_size, noise=noise)
            errors[noise, step_size] = _moment_errors(sampler, 4000, n_steps)[1]
    assert errors["exact", 1e-2] < 0.05 and errors["exact", 5e-3] < 0.05, errors
    assert errors["diagonal", 1e-2] > 0.2 and errors["diagonal", 5e-3] > 0.2, errors
    assert errors["diagonal", 5e-3] > 0.8 * errors["diagonal", 1e-2], errors


# --------------------------------------------------------------------------------------
# Item 6: eight Gaussians (CP-Flow's: radius 4/1.414, std 0.5/1.414)

EIGHT = EightGaussians(n_samples=8, radius=4 / 1.414, std=0.5 / 1.414).mixture


def _eight_energy(x: Tensor) -> Tensor:
    return -EIGHT.log_density(x).to(x.dtype)


def _nearest_centre_second_moment(x: Tensor) -> float:
    distances = (x[:, None, :] - EIGHT.means[None]).square().sum(-1)
    return distances.min(1).values.mean().item()


def _eight_moment(sampler: MirrorLangevin, n_steps: int) -> float:
    x0 = EIGHT.sample(4000, torch.Generator().manual_seed(20))
    result = sampler.sample(
        _eight_energy, x0, n_steps, generator=torch.Generator().manual_seed(21)
    )
    return _nearest_centre_second_moment(result.x)


WRONG_EIGHT_STEPS = 150


@pytest.mark.slow
def test_stationarity_on_eight_gaussians_with_a_full_quadratic_mirror() -> None:
    """4000 chains from exact samples, G = ½xᵀAx (A = [[3, 1.2], [1.2, 1]]), η = 1e-2,
    exact noise, 1000 steps: E‖x − μ_nearest‖² = 0.26 ± 0.03 (exact 2σ² = 0.25).

    Measured: correct 0.259. The wrong variants run `WRONG_EIGHT_STEPS` = 150 steps (at 1000
    in brackets): identity noise 0.361 (0.354), H^{−1/2} noise 0.720 (0.744), no noise
    0.0001 (0.0000), ∇E at y 3.22 (6.03), diagonal noise 0.516 (0.515), doubled noise
    variance 0.490 (0.475)."""
    variants = _variants(QuadraticMirror(matrix=A), 1e-2)
    variants["doubled noise"] = DoubledNoise(mirror=QuadraticMirror(matrix=A), step_size=1e-2)
    moments = {"correct": _eight_moment(variants.pop("correct"), 1000)}
    assert abs(moments["correct"] - 0.26) <= 0.03, moments
    for name, sampler in variants.items():
        moments[name] = _eight_moment(sampler, WRONG_EIGHT_STEPS)
        assert abs(moments[name] - 0.26) > 0.03, (name, moments)


# --------------------------------------------------------------------------------------
# The Metropolis option


class DeterminantDropped(MirrorLangevin):
    """The MH ratio without det H(x′): q read as a density in y instead of in x."""

    def log_proposal_density(
        self, to_dual: Tensor, mean: Tensor, cholesky: Tensor, target_cholesky: Tensor
    ) -> Tensor:
        return super().log_proposal_density(to_dual, mean, cholesky, cholesky)


def _moment_z(x: Tensor) -> tuple[float, float]:
    """The largest |z| of the sample mean and covariance entries against N(μ, Σ)."""
    n, variances = x.shape[0], TARGET_COV.diagonal()
    z_mean = ((x.mean(0) - TARGET_MEAN) / (variances / n).sqrt()).abs().max().item()
    se_cov = ((variances[:, None] * variances[None, :] + TARGET_COV.square()) / n).sqrt()
    z_cov = ((torch.cov(x.T) - TARGET_COV) / se_cov).abs().max().item()
    return z_mean, z_cov


@pytest.mark.slow
def test_the_metropolis_option_is_exact_and_needs_the_determinant() -> None:
    """Target N(μ, [[1, .6], [.6, .5]]), η = 0.1, 2000 chains from exact samples, 50 steps:
    every mean/covariance z below 5 with the curved mirror and with G = ½xᵀAx; dropping
    det H(x′) from q is caught with the curved mirror (its Hessian varies).

    Measured (z mean, z cov; acceptance): curved (0.42, 0.30; 0.82), quadratic A
    (1.63, 0.70; 0.45), determinant dropped (9.8, 23.1; 0.82). The reference's 0.89 at η = 0.1
    (0.67 at 0.3) is for a 2-D Gaussian and quadratic mirror it does not state; ours give 0.82
    (0.51) with the curved G, 0.45 (0.10) with A, 0.78 (0.32) with G = ½|x|², 0.99 (0.94)
    with A = Σ⁻¹."""
    x0 = gaussian_samples(TARGET_MEAN, TARGET_COV, 2000, seed=30)
    found = {}
    for name, sampler in (
        ("curved", MirrorLangevin(mirror=CurvedMirror(), step_size=0.1, metropolis=True)),
        (
            "quadratic",
            MirrorLangevin(mirror=QuadraticMirror(matrix=A), step_size=0.1, metropolis=True),
        ),
        ("no det", DeterminantDropped(mirror=CurvedMirror(), step_size=0.1, metropolis=True)),
    ):
        result = sampler.sample(ENERGY, x0, 50, generator=torch.Generator().manual_seed(31))
        found[name] = (*_moment_z(result.x), result.acceptance_rate.mean().item())
    assert max(found["curved"][:2]) < 5 and max(found["quadratic"][:2]) < 5, found
    assert max(found["no det"][:2]) > 5, found
    assert 0.75 < found["curved"][2] < 0.9 and 0.35 < found["quadratic"][2] < 0.55, found


# --------------------------------------------------------------------------------------
# The contract: the dual is a cache, costs, stats, continuation through the solver


def test_the_registered_cases_keep_the_contract_and_continue_bit_for_bit() -> None:
    for case in MirrorLangevin.testing_cases():
        check_contract(case)
        check_reproducible(case)
        check_continuation(case)


def test_a_curved_mirror_continues_bit_for_bit_through_the_solver() -> None:
    for noise in ("exact", "lanczos", "diagonal"):
        sampler = MirrorLangevin(mirror=CurvedMirror(), step_size=0.05, noise=noise)
        case = SamplerCase(name=noise, sampler=sampler, exact=False, bias_tolerance=0.1)
        check_continuation(case, n_chains=16, n_steps=4)
        check_reproducible(case, n_chains=16, n_steps=4)


def test_the_dual_is_a_cache_recomputed_under_the_current_mirror() -> None:
    x = gaussian_samples(TARGET_MEAN, TARGET_COV, 8, seed=3)
    first = MirrorLangevin(mirror=QuadraticMirror(scale=2.0), step_size=0.05)
    result = first.sample(ENERGY, ebmkit.InitBatch(x=x, latents=torch.full_like(x, 1e6)), 3)
    assert result.state.owned == {} and DUAL not in result.state.extras  # last point: no cache
    state = first.init(x, ENERGY)
    assert torch.equal(state.extras[DUAL], 2 * x)
    changed = MirrorLangevin(mirror=QuadraticMirror(scale=3.0), step_size=0.05)
    continued = changed.init(x, ENERGY, previous=state)
    assert torch.equal(continued.extras[DUAL], 3 * x)
    stepped, _ = first.step(state, ENERGY, generator=torch.Generator().manual_seed(0))
    assert torch.equal(stepped.extras[DUAL], 2 * stepped.x)


def test_a_float32_run_through_the_solver_converges_without_warnings() -> None:
    """Warnings are errors in this suite: no chain may be reported unconverged."""
    x = gaussian_samples(TARGET_MEAN, TARGET_COV, 1000, seed=12).float()
    sampler = MirrorLangevin(mirror=CurvedMirror(), step_size=1e-2)
    result = sampler.sample(ENERGY, x, 20, generator=torch.Generator().manual_seed(0))
    assert result.x.dtype == torch.float32 and bool(torch.isfinite(result.x).all())


def test_the_sampler_is_registered_and_built_by_name() -> None:
    names = {component.name for component in ebmkit.components("sampler")}
    assert "MirrorLangevin" in names
    sampler = ebmkit.create("sampler", "MirrorLangevin", mirror=CurvedMirror(), n_steps=3)
    assert isinstance(sampler, MirrorLangevin) and sampler.noise == "exact"


def test_costs_and_solve_stats_are_reported() -> None:
    sampler = MirrorLangevin(mirror=CurvedMirror(), step_size=0.05)
    x = gaussian_samples(TARGET_MEAN, TARGET_COV, 16, seed=4)
    result = sampler.sample(ENERGY, x, 5, generator=torch.Generator().manual_seed(0))
    assert result.n_grad_evals == 5  # init + 4 (the last point's gradient is skipped)
    assert result.n_flow_evals == 1 + 5 + 4  # ∇G in init, 5 solves, ∇G at 4 new points
    assert result.stats["solve/residual"] <= 1e-6
    assert 1 <= result.stats["solve/iterations"] <= 10


# --------------------------------------------------------------------------------------
# Differentiable runs: implicit gradient of x = ∇G*(y)


@pytest.mark.parametrize("dim", [2, 70])  # a dense solve; conjugate gradient above D = 64
def test_the_implicit_gradient_of_the_inverse_equals_finite_differences(dim) -> None:
    mirror = CurvedMirror(dim=dim, seed=dim)
    mirror.tolerance = 1e-12
    mirror.max_iterations = 500
    generator = torch.Generator().manual_seed(5)
    y = torch.randn(3, dim, generator=generator, dtype=F64, requires_grad=True)
    weights = torch.randn(3, dim, generator=generator, dtype=F64)
    x = attach_implicit_gradient(y, mirror.inverse(y).x, mirror)
    (grad,) = torch.autograd.grad((weights * x).sum(), y)
    h = 1e-6
    for i in range(min(dim, 4)):
        shift = torch.zeros_like(y)
        shift[:, i] = h
        ahead = (weights * mirror.inverse(y.detach() + shift).x).sum(1)
        behind = (weights * mirror.inverse(y.detach() - shift).x).sum(1)
        assert torch.allclose(grad[:, i], (ahead - behind) / (2 * h), atol=1e-7)


def test_a_differentiable_run_with_a_quadratic_mirror_equals_finite_differences() -> None:
    """With G = ½xᵀAx every term is exact (H^{1/2} does not depend on x)."""
    sampler = MirrorLangevin(mirror=QuadraticMirror(matrix=A), step_size=0.05)
    x0 = gaussian_samples(TARGET_MEAN, TARGET_COV, 4, seed=6).requires_grad_(True)

    def final(start: Tensor, differentiable: bool) -> Tensor:
        generator = torch.Generator().manual_seed(7)
        run = sampler.sample(ENERGY, start, 3, generator=generator, differentiable=differentiable)
        return run.x.sum()

    (grad,) = torch.autograd.grad(final(x0, True), x0)
    h = 1e-6
    for i in range(2):
        shift = torch.zeros_like(x0)
        shift[:, i] = h
        numeric = (final(x0.detach() + shift, False) - final(x0.detach() - shift, False)) / (2 * h)
        # each chain moves alone: the summed loss's derivative in chain b's start is per row
        assert abs(grad[:, i].sum().item() - numeric.item()) < 1e-6


# --------------------------------------------------------------------------------------
# Bad input


class TwoBlocks(QuadraticMirror):
    single_block = False


def test_bad_settings_and_mirrors_are_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="alpha is a floor"):
        MirrorLangevin(mirror=QuadraticMirror(alpha=-0.5))
    with pytest.raises(TypeError, match="must be a mirror map"):
        MirrorLangevin(mirror=torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="several blocks.*noise='diagonal'"):
        MirrorLangevin(mirror=TwoBlocks())
    with pytest.raises(ValueError, match="metropolis=True needs a mirror"):
        MirrorLangevin(mirror=TwoBlocks(), noise="diagonal", metropolis=True)
    MirrorLangevin(mirror=TwoBlocks(), noise="diagonal")  # the heuristic is allowed
    with pytest.raises(ValueError, match="needs noise='exact'"):
        MirrorLangevin(mirror=QuadraticMirror(), noise="lanczos", metropolis=True)
    with pytest.raises(ValueError, match="noise must be one of"):
        MirrorLangevin(mirror=QuadraticMirror(), noise="full")
    sampler = MirrorLangevin(mirror=CurvedMirror(dim=3))
    message = r"samplers.MirrorLangevin: its mirror CurvedMirror has event_shape \(3,\).*\(2,\)"
    with pytest.raises(ValueError, match=message):
        sampler.sample(ENERGY, torch.zeros(4, 2, dtype=F64), 1)


def test_a_failed_inverse_solve_warns_with_its_residual_or_raises() -> None:
    x = gaussian_samples(TARGET_MEAN, TARGET_COV, 8, seed=8)
    settings = {"mirror": CurvedMirror(), "step_size": 0.1, "tolerance": 1e-14}
    sampler = MirrorLangevin(max_iterations=1, **settings)
    with pytest.warns(UnconvergedSolveWarning, match=r"residual ‖∇G\(x\) − y‖ up to \d"):
        sampler.sample(ENERGY, x, 1, generator=torch.Generator().manual_seed(0))
    strict = MirrorLangevin(max_iterations=1, on_unconverged="raise", **settings)
    with pytest.raises(UnconvergedSolveError, match="max_iterations \\(now 1\\)"):
        strict.sample(ENERGY, x, 1, generator=torch.Generator().manual_seed(0))
