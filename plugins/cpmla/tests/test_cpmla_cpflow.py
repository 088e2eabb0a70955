"""flows.CPFlow: the exact tests of the method reference (§5.1–5.3, 5.7) on the flow itself,
its log-dets, its two faces (flow and mirror map), ActNorm's init, and bad input.

Statistics and the wrong variants each test catches (float64 throughout; seen values):

- Convexity: eigvalsh(∇²G) ≥ α(1 − 1e-9) at 256 random points, d ∈ {2, 5, 10}, with
  softplus(w₀) ≈ 1e-13 so only α and the ICNN's own curvature remain (smallest 2.4e-4;
  chords: largest gap −5.5e-5); a negated hidden layer gives −0.064.
- Inverse (default tolerance 1e-6): max‖∇G(∇G*(y)) − y‖ < 1e-6 and max‖∇G*(∇G(x)) − x‖ <
  1e-5, d = 2..16, at init and scrambled (≤ 9.99e-7 and ≤ 3.0e-6; Hessian eigenvalues
  0.31–1.1); a solver stopped after 2 iterations gives 0.24 and 0.53 and is reported.
- Surrogate gradient through the flow's own `loss`: with the probes replaced by all 2⁵
  sign vectors and CG exact, the stochastic loss's gradient equals the exact NLL's
  (relative error 8e-17 < 1e-8); with CG skipped it is 0.26 off (cosine 0.976).
- Log-dets: exact vs slogdet of torch's autograd Hessian < 1e-10 (seen ≤ 9e-16); Lanczos
  (m₁ = 10, d = 16) per probe vs d·v̂ᵀlog(H)v̂ from eigh ≤ 1e-4 (seen 5e-7; Hessian
  spectrum 0.31–1.09, condition 3.5: Lanczos' error decays like ((√κ − 1)/(√κ + 1))^{2m}
  ≈ 1e-7 at m = 10, so 1e-4 leaves room for rounding and the 1e-8 log floor); m = 2 gives
  0.036 and fails; the 64-probe mean lies within 4 of its own standard deviations
  sqrt(2Σ_{i≠j}(log H)ᵢⱼ²/64) of the exact log det (seen |z| ≤ 2.2).
- MLE (§5.7): on N(m, S) in 2-D, Adam 5e-3, the learned ∇G approaches the affine OT map
  S^{−1/2}(x − m): RMS 0.034 < 0.1 in ~6.5 s of CPU; the flow with its log-det dropped: 0.72.
"""

from __future__ import annotations

import functools
import itertools
import math
import time

import pytest
import torch
import torch.nn.functional as F
from cpflow_fixtures import (
    ALPHA,
    F64,
    batched_hessian,
    make_one_weight_negative,
    scrambled_cpflow,
    smallest_hessian_eigenvalue,
    worst_chord_gap,
)

import ebmkit
import ebmkit_cpmla.cpflow as cpflow_module
import ebmkit_cpmla.icnn as icnn_module
from ebmkit.testing import (
    check_flow_invertible,
    check_flow_logdet,
    check_flow_sampling_reproducible,
    check_flow_save_load,
    flow_round,
)
from ebmkit_cpmla.cpflow import CPFlow, CPFlowInverse, InverseSolveError, InverseSolveWarning
from ebmkit_cpmla.mirror import MirrorMap, PotentialMirror
from ebmkit_cpmla.solve import SolveResult


def points(n: int, dim: int, seed: int, scale: float = 2.0) -> torch.Tensor:
    return scale * torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=F64)


# --------------------------------------------------------------------------------------
# Registration and the two faces


def test_cpmla_cpflow_is_registered_and_is_both_a_flow_and_a_mirror_map() -> None:
    assert "CPFlow" in {component.name for component in ebmkit.components("flow")}
    flow = CPFlow(dim=2)
    assert isinstance(flow, ebmkit.Flow) and isinstance(flow, PotentialMirror)
    assert isinstance(flow, MirrorMap) and flow.single_block
    assert flow.exact_log_prob and not CPFlow(dim=2, logdet="stochastic").exact_log_prob


def test_cpmla_cpflow_inverse_reads_as_a_solve_and_unpacks_as_a_flow_inverse() -> None:
    flow = scrambled_cpflow(3, seed=0)
    z = points(8, 3, 1, 1.0)
    result = flow.inverse(z, start=torch.zeros_like(z))
    assert isinstance(result, SolveResult) and isinstance(result, CPFlowInverse)
    assert not result.x.requires_grad and bool(result.converged.all())
    assert float(result.residual.max()) <= flow.tolerance
    x, log_det = result
    assert torch.equal(x.detach(), result.x)
    assert torch.equal(result[1], log_det)
    z_again, forward_log_det = flow(x.detach())
    assert torch.allclose(z_again, z, atol=1e-6)
    assert torch.allclose(log_det, -forward_log_det, atol=1e-12)
    assert torch.allclose(flow.grad(x.detach()), z_again, rtol=0, atol=1e-14)


def test_cpmla_cpflow_passes_the_core_flow_checks_in_float32_too() -> None:
    (case,) = CPFlow.testing_cases()
    assert check_flow_logdet(case) < 1e-9
    assert check_flow_invertible(case) < 1e-8
    flow32 = scrambled_cpflow(3, seed=1, tolerance=1e-5).float()
    assert check_flow_invertible(flow32, dtype=None) < 1e-3


# --------------------------------------------------------------------------------------
# Convexity of the full potential (§5.1)


def nearly_floor_only(dim: int, seed: int) -> CPFlow:
    """softplus(w₀) ≈ 1e-13: only α and the ICNN's curvature are left."""
    return scrambled_cpflow(dim, seed=seed, quadratic=-30.0, icnn_weight=2.0)


@pytest.mark.parametrize("dim", [2, 5, 10])
def test_cpmla_cpflow_hessian_eigenvalues_are_at_least_alpha(dim: int) -> None:
    for seed in range(2):
        flow = nearly_floor_only(dim, seed)
        smallest = smallest_hessian_eigenvalue(flow.potential, points(256, dim, seed, 2.5))
        assert smallest >= ALPHA * (1 - 1e-9), (seed, smallest)
        a, b = points(512, dim, 10 + seed, 2.5), points(512, dim, 20 + seed, 2.5)
        assert worst_chord_gap(flow.potential, a, b, ALPHA) <= 1e-10


def test_cpmla_cpflow_convexity_check_finds_a_negative_hidden_weight() -> None:
    flow = nearly_floor_only(5, 0)
    make_one_weight_negative(flow.icnn, layer=1)
    assert smallest_hessian_eigenvalue(flow.potential, points(256, 5, 0, 2.5)) < -1e-3


# --------------------------------------------------------------------------------------
# The inverse (§5.2)


def round_trip_errors(flow: CPFlow, dim: int, **solve: object) -> tuple[float, float]:
    y, x = points(256, dim, 100 + dim, 1.0), points(256, dim, 200 + dim, 2.0)
    dual_error = (flow.grad(flow.inverse(y, **solve).x) - y).norm(dim=1).max()
    primal_error = (flow.inverse(flow.grad(x), **solve).x - x).norm(dim=1).max()
    return float(dual_error), float(primal_error)


@pytest.mark.parametrize("dim", [2, 4, 8, 16])
def test_cpmla_cpflow_inverse_round_trips_at_init_and_scrambled(dim: int) -> None:
    fresh = CPFlow(dim=dim, hidden=16).to(F64)
    for flow in (fresh, scrambled_cpflow(dim, seed=dim)):
        dual_error, primal_error = round_trip_errors(flow, dim)
        assert dual_error < 1e-6 and primal_error < 1e-5, (dual_error, primal_error)


def test_cpmla_cpflow_round_trip_fails_and_is_reported_for_a_solver_stopped_early() -> None:
    flow = scrambled_cpflow(8, seed=8)
    dual_error, primal_error = round_trip_errors(flow, 8, max_iterations=2)
    assert dual_error > 1e-4 and primal_error > 1e-4
    with pytest.warns(InverseSolveWarning, match=r"residual ‖∇G\(x\) − z‖ up to .* > tolerance"):
        flow.inverse(points(16, 8, 0, 1.0), max_iterations=2)[0]
    flow.on_unconverged = "raise"
    flow.max_iterations = 2
    with pytest.raises(InverseSolveError, match="raise flows.CPFlow.max_iterations"):
        flow.sample(16, generator=torch.Generator().manual_seed(0))


def chain_results_alone_batched_shuffled(flow: CPFlow) -> tuple[torch.Tensor, ...]:
    z = points(12, flow.dim, 0, 1.0).to(flow.w0.dtype)
    order = torch.randperm(12, generator=torch.Generator().manual_seed(1))
    batched = flow.inverse(z).x
    alone = torch.cat([flow.inverse(z[i : i + 1]).x for i in range(12)])
    shuffled = flow.inverse(z[order]).x
    return batched, alone, shuffled[torch.argsort(order)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cpmla_cpflow_chain_is_bit_identical_alone_batched_or_shuffled(monkeypatch, dtype) -> None:  # noqa: ANN001
    flow = scrambled_cpflow(12, seed=1, tolerance=1e-5).to(dtype)
    batched, alone, shuffled = chain_results_alone_batched_shuffled(flow)
    assert torch.equal(batched, alone) and torch.equal(batched, shuffled)
    # the wrong variant: the ICNN's layers as BLAS matmuls (rounding depends on the batch)
    monkeypatch.setattr(icnn_module, "row_linear", lambda x, w, b=None: F.linear(x, w, b))
    batched, alone, shuffled = chain_results_alone_batched_shuffled(flow)
    assert not (torch.equal(batched, alone) and torch.equal(batched, shuffled))


def test_cpmla_cpflow_inverse_is_differentiable_by_implicit_differentiation() -> None:
    flow = scrambled_cpflow(3, seed=2, tolerance=1e-12)
    z = points(4, 3, 5, 1.0).requires_grad_(True)
    x, _ = flow.inverse(z)
    weights = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    (x.square() @ weights).sum().backward()
    analytic = torch.cat([z.grad.flatten(), flow.w1.grad.flatten()])

    def loss(z_value: torch.Tensor) -> float:
        with torch.no_grad():
            return float((flow.inverse(z_value)[0].square() @ weights).sum())

    numeric, step = [], 1e-5
    for i, j in itertools.product(range(4), range(3)):
        plus, minus = z.detach().clone(), z.detach().clone()
        plus[i, j] += step
        minus[i, j] -= step
        numeric.append((loss(plus) - loss(minus)) / (2 * step))
    with torch.no_grad():
        flow.w1 += step
        up = loss(z.detach())
        flow.w1 -= 2 * step
        down = loss(z.detach())
        flow.w1 += step
    numeric.append((up - down) / (2 * step))
    assert torch.allclose(analytic, torch.tensor(numeric, dtype=F64), rtol=1e-7, atol=1e-6)


# --------------------------------------------------------------------------------------
# Log-dets (§5.3)


@pytest.mark.parametrize("dim", [2, 5, 8])
def test_cpmla_cpflow_exact_logdet_equals_slogdet_of_the_autograd_hessian(dim: int) -> None:
    flow = scrambled_cpflow(dim, seed=dim)
    x = points(6, dim, 3)
    with torch.no_grad():
        _, log_det = flow(x)
    expected = torch.stack(
        [
            torch.linalg.slogdet(
                torch.autograd.functional.hessian(lambda v: flow.potential(v[None])[0], row)
            ).logabsdet
            for row in x
        ]
    )
    assert float((log_det - expected).abs().max()) < 1e-10


def lanczos_per_probe_error(flow: CPFlow, x: torch.Tensor, steps: int) -> float:
    """max |flow's Lanczos log-det with one probe − d·v̂ᵀ log(H) v̂| over chains and probe
    seeds, the probe redrawn from a generator with the flow's `probe_seed`."""
    flow.lanczos_steps, flow.n_probes = steps, 1
    hessian = batched_hessian(flow.potential, x)
    eigenvalues, vectors = torch.linalg.eigh(hessian)
    log_h = (vectors * eigenvalues.log()[:, None, :]) @ vectors.mT
    worst = 0.0
    for seed in range(4):
        flow.probe_seed = seed
        with torch.no_grad():
            _, estimate = flow(x)
        probe = cpflow_module.rademacher_probes(x, 1, torch.Generator().manual_seed(seed))[0]
        exact = (probe.unsqueeze(1) @ log_h @ probe.unsqueeze(2)).flatten()
        worst = max(worst, float((estimate - exact).abs().max()))
    return worst


def test_cpmla_cpflow_lanczos_logdet_per_probe_matches_eigh() -> None:
    flow = scrambled_cpflow(16, seed=16, logdet="stochastic")
    x = points(32, 16, 4)
    assert lanczos_per_probe_error(flow, x, steps=10) <= 1e-4
    assert lanczos_per_probe_error(flow, x, steps=2) > 1e-3  # too few steps: caught


def test_cpmla_cpflow_lanczos_logdet_mean_is_within_its_hutchinson_noise() -> None:
    flow = scrambled_cpflow(16, seed=16, logdet="stochastic", n_probes=64)
    x = points(8, 16, 6)
    eigenvalues, vectors = torch.linalg.eigh(batched_hessian(flow.potential, x))
    exact = eigenvalues.log().sum(1)
    log_h = (vectors * eigenvalues.log()[:, None, :]) @ vectors.mT
    off_diagonal = log_h - torch.diag_embed(torch.diagonal(log_h, dim1=1, dim2=2))
    std = (2 * off_diagonal.square().sum((1, 2)) / 64).sqrt()  # Var vᵀAv = 2Σ_{i≠j}A_ij²
    before = torch.get_rng_state()
    with torch.no_grad():
        _, estimate = flow(x)
        assert torch.equal(flow(x)[1], estimate)  # deterministic in x: probes seeded per call
    assert torch.equal(torch.get_rng_state(), before)  # and the global RNG is not drawn from
    assert bool(((estimate - exact).abs() <= 4 * std + 1e-4).all())


# --------------------------------------------------------------------------------------
# The surrogate, through the flow's own loss


def all_sign_probes(like: torch.Tensor, n_probes: int, generator=None) -> torch.Tensor:  # noqa: ANN001
    """Every sign vector of the chains' dimension, for every chain: (2^d, B, d)."""
    signs = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=like.shape[1])), dtype=F64)
    return signs[:, None, :].expand(signs.shape[0], *like.shape).to(like.dtype)


def loss_gradient(flow: CPFlow, x: torch.Tensor) -> torch.Tensor:
    flow.zero_grad()
    flow.loss(flow_round(x))["loss"].backward()
    return torch.cat([p.grad.flatten() for p in flow.parameters() if p.requires_grad])


@pytest.mark.parametrize(("cg_steps", "agrees"), [(5, True), (0, False)])
def test_cpmla_cpflow_stochastic_loss_gradient_over_all_signs_is_the_exact_nll_gradient(
    monkeypatch, cg_steps: int, agrees: bool
) -> None:
    monkeypatch.setattr(cpflow_module, "rademacher_probes", all_sign_probes)
    settings = dict(icnn_weight=2.0, quadratic=-3.0)
    exact = scrambled_cpflow(5, seed=3, **settings)
    stochastic = scrambled_cpflow(
        5, seed=3, logdet="stochastic", cg_atol=0.0, cg_max_iterations=cg_steps, **settings
    )
    x = points(4, 5, 9, 1.5)
    expected = loss_gradient(exact, x)
    error = float((loss_gradient(stochastic, x) - expected).norm() / expected.norm())
    assert (error < 1e-8) if agrees else (error > 0.1), error


def test_cpmla_stochastic_cpflow_learns_resumes_and_samples_like_any_flow() -> None:
    flow = scrambled_cpflow(4, seed=5, logdet="stochastic", n_probes=2, tolerance=1e-10)
    check_flow_save_load(flow)  # the surrogate's probes come from the checkpointed RNG
    check_flow_sampling_reproducible(flow)  # sampling draws no probes
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        losses = flow.learn(flow_round(points(32, 4, 1)))
    assert set(losses) == {"loss", "base_nll", "cg_iterations", "cg_residual"}
    assert all(bool(torch.isfinite(value)) for value in losses.values())
    assert 1 <= float(losses["cg_iterations"]) <= 4 and float(losses["cg_residual"]) < 1e-3


# --------------------------------------------------------------------------------------
# Maximum likelihood on a 2-D Gaussian (§5.7)

MEAN = torch.tensor([0.5, -0.5], dtype=F64)
COVARIANCE = torch.tensor([[1.0, 0.4], [0.4, 0.6]], dtype=F64)


class LogDetDropped(CPFlow):
    """The wrong variant: forward's log-det is 0 (the Jacobian term forgotten)."""

    def _log_det(self, point, gradient, keep):  # noqa: ANN001, ANN202
        return torch.zeros(point.shape[0], dtype=point.dtype)


def ot_map_rms_after_fit(flow_class: type, steps: int = 280) -> tuple[float, float]:
    """RMS of ∇G(x) − S^{−1/2}(x − m) over 2000 test points after `steps` Adam steps on
    fresh batches of 256, and the CPU seconds the fit took (process time: other processes on
    the machine do not count).

    Adam 5e-3 (the reference's toy rate), its rate ×0.2 after 180 steps (the reference's toy
    has StepLR(2000, 0.5) over far longer fits): at a constant rate the batch noise keeps
    the RMS wandering between 0.04 and 0.13. Seen with the schedule: 0.034 (this seed),
    0.039–0.043 (three others), 6–7 s of CPU.
    """
    eigenvalues, vectors = torch.linalg.eigh(COVARIANCE)
    root_inverse = (vectors / eigenvalues.sqrt()) @ vectors.T
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        schedule = functools.partial(torch.optim.lr_scheduler.StepLR, step_size=180, gamma=0.2)
        flow = flow_class(dim=2, hidden=16, depth=2, learning_rate=5e-3, scheduler=schedule)
        flow.to(F64)
        generator = torch.Generator().manual_seed(1)
        factor = torch.linalg.cholesky(COVARIANCE)
        start = time.process_time()
        for index in range(steps):
            batch = MEAN + torch.randn(256, 2, generator=generator, dtype=F64) @ factor.T
            flow.learn(flow_round(batch, index=index + 1))
        seconds = time.process_time() - start
    test = MEAN + torch.randn(2000, 2, generator=generator, dtype=F64) @ factor.T
    with torch.no_grad():
        z, _ = flow(test)
    rms = float((z - (test - MEAN) @ root_inverse).square().sum(1).mean().sqrt())
    return rms, seconds


@pytest.mark.slow
def test_cpmla_cpflow_mle_learns_the_affine_ot_map_of_a_gaussian() -> None:
    rms, seconds = ot_map_rms_after_fit(CPFlow)
    assert rms < 0.1 and seconds < 10, (rms, seconds)


@pytest.mark.slow
def test_cpmla_cpflow_mle_check_fails_without_the_logdet() -> None:
    rms, _ = ot_map_rms_after_fit(LogDetDropped)
    assert rms > 0.3, rms


# --------------------------------------------------------------------------------------
# ActNorm's data-dependent init


def test_cpmla_cpflow_actnorm_initialises_on_the_first_data_batch_not_on_solver_iterates() -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        flow = CPFlow(dim=2, hidden=8, depth=3).to(F64)
    flow.inverse(points(8, 2, 0))[0]  # the solver evaluates G at many iterates
    flow.sample(4, generator=torch.Generator().manual_seed(0))
    flow(points(8, 2, 1))
    assert not flow.initialized
    data = points(64, 2, 2, 3.0) + 5.0
    flow.learn(flow_round(data))
    assert flow.initialized and "icnn.initialized" in flow.state_dict()["module"]
    after_first = {k: v.clone() for k, v in flow.icnn.output_actnorm.state_dict().items()}
    flow.learn(flow_round(points(64, 2, 3)))  # a second batch does not initialise again
    bias = flow.icnn.output_actnorm.bias
    assert torch.equal(bias, after_first["bias"])  # frozen, set once from the data
    assert not bias.requires_grad


# --------------------------------------------------------------------------------------
# Bad input


def test_cpmla_cpflow_rejects_a_negative_alpha_and_bad_settings() -> None:
    with pytest.raises(ValueError, match=r"alpha is the floor on ∇²G and must be >= 0, got -0.1"):
        CPFlow(dim=2, alpha=-0.1)
    with pytest.raises(ValueError, match="logdet must be one of"):
        CPFlow(dim=2, logdet="bruteforce")
    with pytest.raises(ValueError, match="reverse_kl_weight > 0 needs the inverse's exact"):
        CPFlow(dim=2, logdet="stochastic", reverse_kl_weight=0.2)


def test_cpmla_cpflow_warns_when_the_quadratic_floor_is_almost_zero() -> None:
    flow = CPFlow(dim=2, alpha=0.0).to(F64)
    with torch.no_grad():
        flow.w0.fill_(-30.0)  # softplus ≈ 9e-14
    with pytest.warns(RuntimeWarning, match=r"softplus\(w0\) \+ alpha = 9.36e-14 < 1e-06"):
        flow(points(4, 2, 0))
    floor_only = scrambled_cpflow(2, seed=0, quadratic=-30.0)  # α = 1e-4 keeps it quiet
    assert float(floor_only.quadratic_weight().detach()) >= ALPHA
    floor_only(points(4, 2, 0))


def test_cpmla_cpflow_names_itself_and_the_fix_for_a_wrong_dimension() -> None:
    flow = CPFlow(dim=2)
    message = r"flows.CPFlow is built for vectors of dim = 2 .* set flows.CPFlow.dim = 3"
    with pytest.raises(ValueError, match=message):
        flow(torch.zeros(4, 3))
    with pytest.raises(ValueError, match=message):
        flow.inverse(torch.zeros(4, 3))
    with pytest.raises(ValueError, match=message):
        flow.grad(torch.zeros(4, 3))  # the mirror face checks too
    with pytest.raises(ValueError, match="images are not supported"):
        flow.log_prob(torch.zeros(4, 1, 2, 2))


def test_cpmla_stochastic_cpflow_is_refused_by_a_kernel_needing_exact_densities() -> None:
    flow_mcmc = pytest.importorskip("ebmkit_flow_mcmc")
    with pytest.raises(ValueError, match="exact_log_prob = False"):
        flow_mcmc.FlowIMH(flow=CPFlow(dim=2, logdet="stochastic"))
    with torch.no_grad():
        assert math.isfinite(float(CPFlow(dim=2).log_prob(torch.zeros(1, 2))))


def test_cpmla_cpflow_starts_chains_through_the_flow_initializer() -> None:
    from ebmkit.initializers.flow import Flow

    flow = scrambled_cpflow(2, seed=4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        batch = Flow(flow=flow).sample(8)
    assert batch.x.shape == (8, 2) and not batch.x.requires_grad
    assert torch.allclose(flow.grad(batch.x), batch.latents, atol=1e-6)


def test_cpmla_gin_builds_a_cpflow_for_the_flow_initializer() -> None:
    import textwrap

    import gin

    ebmkit.get_registry()
    gin.clear_config()
    try:
        gin.parse_config(
            textwrap.dedent(
                """
                initializers.Flow.flow = @flows.CPFlow()
                flows.CPFlow.dim = 2
                flows.CPFlow.hidden = 8
                flows.CPFlow.logdet = "stochastic"
                flows.CPFlow.alpha = 1e-4
                flows.CPFlow.learning_rate = 5e-3
                """
            )
        )
        initializer = gin.get_configurable("initializers.Flow")()
    finally:
        gin.clear_config()
    flow = initializer.flow
    assert isinstance(flow, CPFlow) and flow.icnn.hidden == 8 and not flow.exact_log_prob
    assert flow.learning_rate == 5e-3 and flow.alpha == 1e-4


# --------------------------------------------------------------------------------------
# The mirror face inside samplers.MirrorLangevin


def test_cpmla_a_mirror_langevin_step_with_a_cpflow_is_the_update_by_hand() -> None:
    from cpmla_fixtures import TARGET_COV, TARGET_MEAN, gaussian_energy, gaussian_samples

    from ebmkit_cpmla.mirror_langevin import MirrorLangevin

    flow = scrambled_cpflow(2, seed=4, tolerance=1e-10)
    energy = gaussian_energy(TARGET_MEAN, TARGET_COV)
    sampler = MirrorLangevin(mirror=flow, step_size=0.05, noise="exact")
    x = gaussian_samples(TARGET_MEAN, TARGET_COV, 16, seed=3)
    state = sampler.init(x, energy)
    moved, info = sampler.step(state, energy, generator=torch.Generator().manual_seed(5))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=F64)
    gradient = torch.autograd.functional.jacobian(lambda v: energy(v).sum(), x)
    y = flow.grad(x) - 0.05 * gradient + math.sqrt(0.1) * flow.sqrt_hessian_times(x, noise)
    assert torch.allclose(flow.grad(moved.x), y, rtol=0, atol=1e-9)  # x′ = ∇G*(y′)
    assert torch.allclose(moved.x, flow.inverse(y, x).x, rtol=0, atol=1e-9)
    assert float(info.stats["solve/residual"]) <= 1e-10


def test_cpmla_gin_shares_one_cpflow_between_the_initializer_and_mirror_langevin() -> None:
    import textwrap

    import gin

    ebmkit.get_registry()
    gin.clear_config()
    try:
        gin.parse_config(
            textwrap.dedent(
                """
                initializers.Flow.flow = @cpflow/singleton()
                cpflow/singleton.constructor = @flows.CPFlow
                samplers.MirrorLangevin.mirror = @cpflow/singleton()
                flows.CPFlow.dim = 2
                flows.CPFlow.hidden = 8
                """
            )
        )
        initializer = gin.get_configurable("initializers.Flow")()
        sampler = gin.get_configurable("samplers.MirrorLangevin")()
    finally:
        gin.clear_config()
    assert isinstance(initializer.flow, CPFlow) and sampler.mirror is initializer.flow
