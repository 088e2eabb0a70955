"""Exact targets for every built-in sampler, plus the sampler contract and the move helpers.

Statistical checks use many independent chains and look only at each chain's final state,
so the samples compared are i.i.d. across chains (no autocorrelation to correct for); every
tolerance is a number of standard errors of that i.i.d. sample. Gaussian targets have exact
moments; the unadjusted kernels (ULA / SGLD-style Langevin) are linear on a Gaussian, so
their biased moments at every step follow an exact recursion, computed here in float64.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

from ebmkit.energies.conv import ConvEnergy
from ebmkit.samplers import langevin, moves
from ebmkit.samplers.langevin import Langevin
from ebmkit.samplers.mala import MALA
from ebmkit.samplers.moves import diagonal_gaussian_log_prob, metropolis_accept

F64 = torch.float64
Z = 5.0  # tolerance in standard errors for every statistical check


# --------------------------------------------------------------------------------------
# Targets


@dataclass(frozen=True)
class Gaussian:
    """N(mean, cov) with E(x) = ½ (x − m)ᵀ Σ⁻¹ (x − m)."""

    mean: Tensor
    cov: Tensor

    @classmethod
    def of(cls, mean: list[float], cov: list[list[float]]) -> Gaussian:
        return cls(torch.tensor(mean, dtype=F64), torch.tensor(cov, dtype=F64))

    @property
    def precision(self) -> Tensor:
        return torch.linalg.inv(self.cov)

    def energy(self, x: Tensor) -> Tensor:
        d = x - self.mean
        return 0.5 * ((d @ self.precision) * d).sum(1)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        noise = torch.randn(n, self.mean.numel(), generator=generator, dtype=F64)
        return self.mean + noise @ torch.linalg.cholesky(self.cov).T


@dataclass(frozen=True)
class Mixture1D:
    """Σ_k w_k N(μ_k, s_k²) on the line, E(x) = −log p(x)."""

    weights: tuple[float, ...]
    means: tuple[float, ...]
    stds: tuple[float, ...]

    def energy(self, x: Tensor) -> Tensor:
        w, mu, s = (torch.tensor(v, dtype=x.dtype) for v in (self.weights, self.means, self.stds))
        z = (x.reshape(-1, 1) - mu) / s
        log_terms = torch.log(w) - 0.5 * z.square() - torch.log(s) - 0.5 * math.log(2 * math.pi)
        return -torch.logsumexp(log_terms, 1)

    def cdf(self, t: float) -> float:
        return sum(
            w * 0.5 * (1 + math.erf((t - m) / (s * math.sqrt(2))))
            for w, m, s in zip(self.weights, self.means, self.stds, strict=True)
        )

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        w, mu, s = (torch.tensor(v, dtype=F64) for v in (self.weights, self.means, self.stds))
        k = torch.multinomial(w, n, replacement=True, generator=generator)
        return (mu[k] + s[k] * torch.randn(n, generator=generator, dtype=F64)).unsqueeze(1)


GAUSS_2D = Gaussian.of([1.0, -0.5], [[1.0, 0.8], [0.8, 1.0]])
SIGMA_1D = 1.5
GAUSS_1D = Gaussian.of([0.0], [[SIGMA_1D**2]])
FAR_2D = (6.0, -6.0)
# Well separated: exp(−8) density ratio between barrier and modes, no crossings in a test.
SEPARATED = Mixture1D(weights=(0.25, 0.75), means=(-2.0, 2.0), stds=(0.5, 0.5))


def moment_z_scores(x: Tensor, mean: Tensor, cov: Tensor) -> tuple[Tensor, Tensor]:
    """(mean, covariance) errors of i.i.d. rows `x` in units of their Gaussian standard errors.

    SE of a mean component: sqrt(Σ_ii / n); of a covariance entry: sqrt((Σ_ii Σ_jj + Σ_ij²) / n).
    """
    n, d = x.shape
    z_mean = (x.mean(0) - mean) / torch.sqrt(torch.diagonal(cov) / n)
    empirical = torch.cov(x.T).reshape(d, d)
    variances = torch.diagonal(cov)
    se_cov = torch.sqrt((torch.outer(variances, variances) + cov.square()) / n)
    return z_mean, (empirical - cov) / se_cov


def assert_moments(x: Tensor, mean: Tensor, cov: Tensor) -> None:
    z_mean, z_cov = moment_z_scores(x, mean, cov)
    assert z_mean.abs().max() < Z, f"mean off by {z_mean.tolist()} SE: {x.mean(0).tolist()}"
    assert z_cov.abs().max() < Z, f"cov off by {z_cov.tolist()} SE: {torch.cov(x.T).tolist()}"


def linear_langevin_moments(
    target: Gaussian,
    step_size: float,
    noise_scale: float,
    n_steps: int,
    start_mean: Tensor,
    start_cov: Tensor,
) -> tuple[Tensor, Tensor]:
    """Exact mean and covariance of x − h∇E(x) + σξ after `n_steps` on a Gaussian target.

    With A = I − hΣ⁻¹: mean ← m + A(mean − m), cov ← A cov Aᵀ + σ²I.
    """
    d = target.mean.numel()
    a = torch.eye(d, dtype=F64) - step_size * target.precision
    mean, cov = start_mean.clone(), start_cov.clone()
    for _ in range(n_steps):
        mean = target.mean + a @ (mean - target.mean)
        cov = a @ cov @ a.T + noise_scale**2 * torch.eye(d, dtype=F64)
    return mean, cov


# --------------------------------------------------------------------------------------
# Table: every built-in sampler against an exact Gaussian target


@dataclass(frozen=True)
class GaussianCase:
    sampler: Callable[[], Langevin | MALA]
    target: Gaussian
    start: str  # "far": every chain at FAR_2D; "exact": i.i.d. target samples
    n_steps: int
    n_chains: int = 10_000


GAUSSIAN_CASES = {
    # MALA is exact: the target itself, whatever the step size, clip or noise. (From a far
    # start, every registered sampler: tests/test_sampler_contract.py, via ebmkit.testing.)
    # h·λ_max(Σ⁻¹) = 1.67: ULA at this step would inflate the fast direction's variance 6x.
    "mala-exact-start": GaussianCase(lambda: MALA(step_size=0.3), GAUSS_2D, "exact", 40),
    "mala-grad-clip": GaussianCase(
        lambda: MALA(step_size=0.3, grad_clip=0.5), GAUSS_2D, "exact", 40
    ),
    "mala-noise-scale": GaussianCase(
        lambda: MALA(step_size=0.1, noise_scale=0.8), GAUSS_2D, "exact", 40
    ),
    # Unadjusted kernels: the exact (biased) moments of the linear recursion.
    "ula-big-step": GaussianCase(lambda: Langevin(step_size=0.3), GAUSS_2D, "exact", 40),
    "ula-1d-big-step": GaussianCase(
        lambda: Langevin(step_size=0.5 * SIGMA_1D**2), GAUSS_1D, "exact", 30, 20_000
    ),
    "langevin-noise-scale": GaussianCase(
        lambda: Langevin(step_size=0.05, noise_scale=0.2), GAUSS_2D, "far", 100
    ),
}


def start_points(case: GaussianCase, generator: torch.Generator) -> Tensor:
    if case.start == "far":
        return torch.tensor(FAR_2D, dtype=F64).expand(case.n_chains, 2).clone()
    return case.target.sample(case.n_chains, generator)


def expected_moments(case: GaussianCase, sampler: Langevin | MALA) -> tuple[Tensor, Tensor]:
    if isinstance(sampler, MALA):
        return case.target.mean, case.target.cov
    d = case.target.mean.numel()
    if case.start == "far":
        start_mean, start_cov = torch.tensor(FAR_2D, dtype=F64), torch.zeros(d, d, dtype=F64)
    else:
        start_mean, start_cov = case.target.mean, case.target.cov
    return linear_langevin_moments(
        case.target, sampler.step_size, sampler.noise_scale, case.n_steps, start_mean, start_cov
    )


@pytest.mark.parametrize("name", list(GAUSSIAN_CASES))
def test_sampler_hits_exact_gaussian_moments(name: str) -> None:
    case = GAUSSIAN_CASES[name]
    generator = torch.Generator().manual_seed(1234)
    sampler = case.sampler()
    x0 = start_points(case, generator)
    result = sampler.sample(case.target.energy, x0, case.n_steps, generator=generator)
    mean, cov = expected_moments(case, sampler)
    assert_moments(result.x, mean, cov)
    if isinstance(sampler, MALA):  # the chains really move (an all-reject kernel is "exact")
        assert result.acceptance_rate.mean() > 0.3


def test_moment_check_has_power_against_ula_bias() -> None:
    """ULA at MALA's step 0.3 fails the check against the unbiased target: the check can fail."""
    case = GAUSSIAN_CASES["ula-big-step"]
    generator = torch.Generator().manual_seed(1234)
    result = case.sampler().sample(
        case.target.energy, start_points(case, generator), case.n_steps, generator=generator
    )
    _, z_cov = moment_z_scores(result.x, case.target.mean, case.target.cov)
    assert z_cov.abs().max() > 3 * Z


@pytest.mark.parametrize("step_over_variance", [0.5, 0.2])
def test_ula_stationary_variance_has_the_known_bias(step_over_variance: float) -> None:
    """x ← x − h x/σ² + sqrt(2h)ξ is AR(1): stationary variance σ² / (1 − h/(2σ²)) exactly."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(7)
    sigma2 = SIGMA_1D**2
    h = step_over_variance * sigma2
    n_chains, n_steps = 20_000, 80  # contraction (1 − h/σ²)^(2·80) < 1e−15
    x0 = GAUSS_1D.sample(n_chains, generator)
    x = Langevin(step_size=h).sample(GAUSS_1D.energy, x0, n_steps, generator=generator).x
    biased = sigma2 / (1 - h / (2 * sigma2))
    assert biased == pytest.approx(2 * h / (1 - (1 - h / sigma2) ** 2))
    se = math.sqrt(2 / n_chains)  # relative SE of a Gaussian sample variance
    variance = x.var().item()
    assert abs(variance / biased - 1) < Z * se
    assert abs(variance / sigma2 - 1) > 8 * se  # measurably not the target's σ²
    assert abs(x.mean().item()) < Z * math.sqrt(biased / n_chains)


# --------------------------------------------------------------------------------------
# MALA on a two-component mixture: the mode weights


def assert_cdf(x: Tensor, target: Mixture1D, thresholds: tuple[float, ...]) -> None:
    n = x.shape[0]
    for t in thresholds:
        p = target.cdf(t)
        fraction = (x < t).double().mean().item()
        se = math.sqrt(p * (1 - p) / n)
        assert abs(fraction - p) < Z * se, f"P(X<{t}) = {fraction}, exact {p} (SE {se})"


def test_mala_keeps_separated_mixture_from_exact_samples() -> None:
    """Invariance: the whole CDF (mode weights and each mode's shape) stays exact.

    The barrier (density ratio e⁻⁸) means chains do not cross between modes here; the
    thresholds inside each mode check that the within-mode law is exact too.
    """
    generator = torch.Generator().manual_seed(11)
    x0 = SEPARATED.sample(20_000, generator)
    result = MALA(step_size=0.1).sample(SEPARATED.energy, x0, 100, generator=generator)
    assert result.acceptance_rate.mean() > 0.5
    assert 0.25 == pytest.approx(SEPARATED.cdf(0.0), abs=1e-4)
    assert_cdf(result.x, SEPARATED, (-2.5, -2.0, -1.5, 0.0, 1.5, 2.0, 2.5))


# --------------------------------------------------------------------------------------
# MALA step-size adaptation


def test_mala_adaptation_targets_acceptance_then_freezes_and_stays_exact() -> None:
    adapt, after = 300, 300
    sampler = MALA(step_size=0.01, adapt_steps=adapt, target_acceptance=0.574)
    x0 = GAUSS_2D.sample(10_000, torch.Generator().manual_seed(3))

    def run(n_steps: int):
        return sampler.sample(
            GAUSS_2D.energy, x0, n_steps, generator=torch.Generator().manual_seed(4)
        )

    half, adapted, full = run(adapt // 2), run(adapt), run(adapt + after)
    # The same seed makes the first `adapt` steps of the three runs identical.
    assert not torch.equal(half.step_size, adapted.step_size)  # changes during adaptation
    assert torch.equal(adapted.step_size, full.step_size)  # and never after
    assert adapted.step_size.median() > 0.1  # far from the poor start 0.01
    # Mean acceptance over the `after` post-adaptation steps only.
    post = (full.acceptance_rate * (adapt + after) - adapted.acceptance_rate * adapt) / after
    assert post.mean().item() == pytest.approx(0.574, abs=0.05)
    assert_moments(full.x, GAUSS_2D.mean, GAUSS_2D.cov)


# --------------------------------------------------------------------------------------
# The contract every built-in sampler keeps


class Counting(nn.Module):
    """Wraps an energy and counts its evaluations (each one is followed by one gradient)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return self.inner(x)


class Quadratic(nn.Module):
    """E(x) = ½|x|² + w·x with a learnable w (so parameter .grad can be checked)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(-1, 1, dim))

    def forward(self, x: Tensor) -> Tensor:
        flat = x.flatten(1)
        return 0.5 * flat.square().sum(1) + flat @ self.weight


SAMPLERS = {
    "langevin": lambda: Langevin(step_size=0.01, n_steps=7),
    "mala": lambda: MALA(step_size=0.01, n_steps=7),
}
EXTRA_EVALS = {"langevin": 0, "mala": 1}  # Langevin skips ∇E at the last point; MALA's init


@pytest.mark.parametrize("kind", list(SAMPLERS))
@pytest.mark.parametrize("shape", [(2,), (3, 4, 4)])
def test_sample_result_shapes_and_detached(kind: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    energy = ConvEnergy(channels=(4, 8)) if len(shape) == 3 else Quadratic(shape[0])
    x0 = torch.randn(5, *shape, requires_grad=True)
    result = SAMPLERS[kind]().sample(energy, x0)
    assert result.x.shape == x0.shape and result.x.dtype == x0.dtype
    assert result.x.grad_fn is None and not result.x.requires_grad
    assert torch.equal(result.state.x, result.x)
    assert result.energy_trace.shape == (7,)
    assert result.energy_trace[0] == energy(x0).mean()
    assert all(p.grad is None for p in energy.parameters())
    assert x0.grad is None
    if kind == "mala":
        assert result.acceptance_rate.shape == (5,)
        assert ((result.acceptance_rate >= 0) & (result.acceptance_rate <= 1)).all()
        assert result.step_size.shape == (5,)
    else:
        assert result.acceptance_rate is None
        assert result.step_size.shape == ()


@pytest.mark.parametrize("kind", list(SAMPLERS))
@pytest.mark.parametrize("n_steps", [0, 1, 5])
def test_n_grad_evals_counts_real_evaluations(kind: str, n_steps: int) -> None:
    torch.manual_seed(0)
    energy = Counting(Quadratic(3))
    result = SAMPLERS[kind]().sample(energy, torch.randn(4, 3), n_steps)
    assert result.n_grad_evals == energy.calls
    if n_steps > 0:
        assert result.n_grad_evals == n_steps + EXTRA_EVALS[kind]


@pytest.mark.parametrize("kind", list(SAMPLERS))
def test_same_seed_is_bit_identical(kind: str) -> None:
    x0 = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    runs = []
    for _ in range(2):
        torch.manual_seed(42)
        runs.append(SAMPLERS[kind]().sample(Quadratic(3), x0).x)
    assert torch.equal(runs[0], runs[1])
    torch.manual_seed(43)
    assert not torch.equal(runs[0], SAMPLERS[kind]().sample(Quadratic(3), x0).x)


@pytest.mark.parametrize("kind", list(SAMPLERS))
def test_sample_rejects_bad_calls(kind: str) -> None:
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="n_steps"):
        SAMPLERS[kind]().sample(Quadratic(2), torch.randn(3, 2), -1)
    with pytest.raises(TypeError, match="floating-point"):
        SAMPLERS[kind]().sample(Quadratic(2), torch.zeros(3, 2, dtype=torch.long))


# --------------------------------------------------------------------------------------
# Langevin options, checked against hand computation


def test_langevin_without_noise_is_gradient_descent() -> None:
    """noise_scale = 0: x_k = (1 − h)^k x_0 on E = ½|x|², and a hand loop on a quartic."""
    torch.manual_seed(0)
    x0 = torch.randn(5, 2, dtype=F64)
    h, n = 0.1, 12
    sampler = Langevin(step_size=h, noise_scale=0.0)
    result = sampler.sample(lambda x: 0.5 * x.square().sum(1), x0, n)
    torch.testing.assert_close(result.x, (1 - h) ** n * x0, rtol=1e-13, atol=0)
    # The trace is the mean energy at the start of each step: ½|x0|²·(1 − h)^(2k).
    factors = (1 - h) ** (2 * torch.arange(n, dtype=F64))
    expected_trace = 0.5 * x0.square().sum(1).mean() * factors
    torch.testing.assert_close(result.energy_trace, expected_trace, rtol=1e-13, atol=0)

    expected = x0.clone()
    for _ in range(n):  # E = Σ x⁴/4 + x₀x₁, ∇E = x³ + (x₁, x₀)
        expected = expected - h * (expected**3 + expected.flip(1))
    x = sampler.sample(lambda x: 0.25 * x.pow(4).sum(1) + x.prod(1), x0, n).x
    torch.testing.assert_close(x, expected, rtol=1e-13, atol=1e-15)


def test_langevin_frees_the_previous_gradient_before_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Inside `sample` at most one ∇E is alive: the old one is freed before the next is made.

    (A hand loop `(g,) = grad(...)` still holds the old g while computing the new one; ebmkit
    must hold no more, so its peak memory per step is no worse.)
    """
    real = langevin.energy_and_grad
    earlier: list[weakref.ref[Tensor]] = []
    alive_at_call: list[int] = []

    def tracking(energy: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
        alive_at_call.append(sum(ref() is not None for ref in earlier))
        value, grad = real(energy, x)
        earlier.append(weakref.ref(grad))
        return value, grad

    monkeypatch.setattr(langevin, "energy_and_grad", tracking)
    Langevin(step_size=0.1).sample(lambda x: 0.5 * x.square().sum(1), torch.zeros(4, 2), 6)
    assert alive_at_call == [0] * 6


def test_langevin_noise_scale_is_independent_of_step_size() -> None:
    """One step from x0 is x0 − h∇E + σξ with the generator's ξ, for the σ given."""
    x0 = torch.randn(6, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    h, sigma = 0.05, 0.7
    x = Langevin(step_size=h, noise_scale=sigma).sample(
        lambda x: 0.5 * x.square().sum(1), x0, 1, generator=torch.Generator().manual_seed(2)
    )
    xi = torch.randn(6, 3, dtype=F64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(x.x, x0 - h * x0 + sigma * xi, rtol=1e-14, atol=1e-15)
    assert Langevin(step_size=h).noise_scale == pytest.approx(math.sqrt(2 * h))


def test_langevin_grad_clip_clamps_the_drift() -> None:
    x0 = torch.tensor([[3.0, -0.2], [-5.0, 0.4]], dtype=F64)
    h, sigma, limit = 0.1, 0.3, 1.0

    def energy(x: Tensor) -> Tensor:  # ∇E = 2x: components ±6, ±10 get clipped, ±0.4/0.8 not
        return x.square().sum(1)

    x = Langevin(step_size=h, noise_scale=sigma, grad_clip=limit).sample(
        energy, x0, 1, generator=torch.Generator().manual_seed(3)
    )
    xi = torch.randn(2, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    drift = torch.tensor([[1.0, -0.4], [-1.0, 0.8]], dtype=F64)
    torch.testing.assert_close(x.x, x0 - h * drift + sigma * xi, rtol=1e-14, atol=1e-15)


def test_langevin_clamp_keeps_samples_in_range() -> None:
    torch.manual_seed(0)
    x0 = torch.rand(2000, 2) * 2 - 1

    def run(clamp: tuple[float, float] | None, n_steps: int) -> Tensor:
        sampler = Langevin(step_size=0.05, noise_scale=0.5, clamp=clamp)
        return sampler.sample(
            lambda x: -x.sum(1), x0, n_steps, generator=torch.Generator().manual_seed(0)
        ).x

    free, clamped = run(None, 10), run((-1.0, 1.0), 10)
    assert free.abs().max() > 1.5  # without the clamp the chains leave the box
    assert clamped.min() >= -1 and clamped.max() <= 1
    assert (clamped == 1).sum() > 100  # and it is the clamp that holds them
    # One step: the clamped move is exactly the free move clamped.
    assert torch.equal(run((-1.0, 1.0), 1), run(None, 1).clamp(-1.0, 1.0))


@pytest.mark.parametrize(
    "make",
    [
        lambda: Langevin(step_size=0.0),
        lambda: Langevin(step_size=-0.1),
        lambda: Langevin(step_size=0.1, clamp=(1.0, -1.0)),
        lambda: Langevin(step_size=0.1, clamp=(0.0, 0.0)),
        lambda: Langevin(step_size=0.1, noise_scale=-1.0),
        lambda: Langevin(step_size=0.1, grad_clip=0.0),
        lambda: MALA(step_size=0.0),
        lambda: MALA(step_size=-1.0),
        lambda: MALA(step_size=0.1, adapt_steps=10, noise_scale=0.5),
        lambda: MALA(step_size=0.1, target_acceptance=1.0),
    ],
    ids=[
        "langevin-step-0",
        "langevin-step-neg",
        "langevin-clamp-reversed",
        "langevin-clamp-empty",
        "langevin-noise-neg",
        "langevin-grad-clip-0",
        "mala-step-0",
        "mala-step-neg",
        "mala-adapt-with-noise-scale",
        "mala-target-1",
    ],
)
def test_bad_arguments_raise_value_error(make: Callable[[], object]) -> None:
    torch.manual_seed(0)
    with pytest.raises(ValueError):
        make()


# --------------------------------------------------------------------------------------
# Moves


def test_metropolis_accept_rejects_nan_and_accepts_sure_moves() -> None:
    generator = torch.Generator().manual_seed(0)
    log_ratio = torch.tensor([math.nan, math.inf, 0.0, 5.0, -math.inf] * 1000)
    accepted, prob = metropolis_accept(log_ratio, generator)
    accepted, prob = accepted.reshape(1000, 5), prob.reshape(1000, 5)
    assert not accepted[:, 0].any() and (prob[:, 0] == 0).all()
    assert accepted[:, 1:4].all() and (prob[:, 1:4] == 1).all()
    assert (prob[:, 4] == 0).all()


def test_metropolis_accept_rate_matches_probability() -> None:
    generator = torch.Generator().manual_seed(0)
    n = 100_000
    accepted, prob = metropolis_accept(torch.full((n,), math.log(0.3)), generator)
    torch.testing.assert_close(prob, torch.full((n,), 0.3))
    se = math.sqrt(0.3 * 0.7 / n)
    assert abs(accepted.double().mean().item() - 0.3) < Z * se


def test_metropolis_accept_never_takes_a_zero_probability_move(monkeypatch) -> None:
    """A uniform draw of exactly 0 (probability 2⁻²⁴ per float32 draw) must not accept a move
    whose log-ratio is −inf (e.g. a proposal with infinite energy)."""
    torch.manual_seed(0)
    monkeypatch.setattr(moves.torch, "rand", lambda *args, **kwargs: torch.zeros(args[0]))
    accepted, prob = metropolis_accept(torch.full((4,), -math.inf))
    assert (prob == 0).all()
    assert not accepted.any()


def test_diagonal_gaussian_log_prob_matches_torch_normal() -> None:
    generator = torch.Generator().manual_seed(0)
    y = torch.randn(4, 3, 2, dtype=F64, generator=generator)
    mean = torch.randn(4, 3, 2, dtype=F64, generator=generator)
    variance = torch.rand(4, 3, 2, dtype=F64, generator=generator) + 0.1
    expected = torch.distributions.Normal(mean, variance.sqrt()).log_prob(y).flatten(1).sum(1)
    torch.testing.assert_close(diagonal_gaussian_log_prob(y, mean, variance), expected)
    per_chain = torch.rand(4, 1, 1, dtype=F64, generator=generator) + 0.1  # broadcast variance
    expected = torch.distributions.Normal(mean, per_chain.sqrt()).log_prob(y).flatten(1).sum(1)
    torch.testing.assert_close(diagonal_gaussian_log_prob(y, mean, per_chain), expected)


def test_lone_mala_step_does_not_adapt() -> None:
    """Adaptation is a burn-in schedule of `sample`; chains driven by init + step keep the
    sampler's step size, so they stay exact."""
    generator = torch.Generator().manual_seed(0)
    sampler = MALA(step_size=0.05, adapt_steps=3)
    state = sampler.init(GAUSS_2D.sample(50, generator), GAUSS_2D.energy)
    for _ in range(5):
        state, info = sampler.step(state, GAUSS_2D.energy, generator=generator)
        assert torch.equal(state.step_size, torch.full((50,), 0.05, dtype=F64))
        assert 0 < info.acceptance_prob.mean() < 1


def test_mala_zero_steps_reports_per_chain_step_sizes() -> None:
    result = MALA(step_size=0.1).sample(GAUSS_2D.energy, torch.zeros(5, 2, dtype=F64), 0)
    assert result.step_size.shape == (5,)
    assert torch.equal(result.x, torch.zeros(5, 2, dtype=F64))


@pytest.mark.parametrize("kind", ["Langevin", "MALA"])
def test_scale_step_size_keeps_the_temperature(kind: str) -> None:
    """h ← f·h and σ ← sqrt(f)·σ: ULA's σ = sqrt(2h) stays exact, a set-apart σ keeps σ²/2h."""
    make = {"Langevin": Langevin, "MALA": MALA}[kind]
    default = make(step_size=0.02)
    default.scale_step_size(0.5)
    assert default.step_size == 0.01
    if kind == "Langevin":  # its default noise is filled in at construction
        assert default.noise_scale == pytest.approx(math.sqrt(2 * 0.01), rel=1e-15)
    else:  # MALA keeps None: sqrt(2h) from the current h
        assert default.noise_scale is None
    apart = make(step_size=1.0, noise_scale=0.01)
    apart.scale_step_size(0.25)
    assert (apart.step_size, apart.noise_scale) == (0.25, 0.005)
    apart.scale_step_size(1.0)
    assert (apart.step_size, apart.noise_scale) == (0.25, 0.005)
    for bad in (0.0, -0.5, math.inf, math.nan):
        with pytest.raises(ValueError, match="finite and > 0"):
            apart.scale_step_size(bad)
