r"""The exact-target checks: Gaussian moments from a far start, mixture weights, ULA's bias."""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor

from ebmkit.protocols import Sampler
from ebmkit.records import StepContext
from ebmkit.samplers.langevin import Langevin
from ebmkit.testing.cases import SamplerCase, as_case
from ebmkit.testing.targets import (
    F64,
    FAR_START,
    STANDARD_GAUSSIAN,
    STANDARD_MIXTURE,
    GaussianTarget,
    LangevinMove,
    MixtureTarget,
    langevin_moments,
)

__all__ = [
    "Z_MAX",
    "MixtureReport",
    "MomentReport",
    "check_gaussian_moments",
    "check_mixture",
    "check_moment_power",
    "gaussian_moment_report",
]

Z_MAX = 5.0
"""The statistical tolerance of every check, in standard errors of the i.i.d. final states
(two-sided, |z| < 5: a correct kernel fails one statistic with probability ≈ 6e−7)."""


def _fmt(values: Tensor) -> str:
    return str([round(v, 3) for v in values.flatten().tolist()])


def _acceptance(result_rate: Tensor | None, stats: dict[str, Tensor]) -> dict[str, float]:
    found = {} if result_rate is None else {"acceptance": result_rate.mean().item()}
    found.update(
        {name: value.mean().item() for name, value in stats.items() if name.endswith("acceptance")}
    )
    return found


@attrs.frozen(eq=False, kw_only=True)
class MomentReport:
    """What `check_gaussian_moments` measured.

    Arguments:
        case: the case's label.
        mean, cov: the chains' final sample mean (d,) and covariance (d, d).
        expected_mean, expected_cov: the law they are held to (the target, or an unadjusted
            kernel's exact biased law).
        z_mean, z_cov: the errors of the mean and covariance along the law's principal
            axes (whitened), in standard errors of n i.i.d. draws of that law.
        allowed_mean, allowed_cov: the largest |z| allowed per entry (`z_max`, plus the
            case's bias_tolerance in standard errors).
        acceptance: mean acceptance rates reported by the run, by name.
    """

    case: str
    mean: Tensor
    cov: Tensor
    expected_mean: Tensor
    expected_cov: Tensor
    z_mean: Tensor
    z_cov: Tensor
    allowed_mean: Tensor
    allowed_cov: Tensor
    acceptance: dict[str, float]

    @property
    def max_z(self) -> float:
        """The largest |z| over the mean and covariance entries."""
        return max(self.z_mean.abs().max().item(), self.z_cov.abs().max().item())

    @property
    def passed(self) -> bool:
        """Every |z| is below its allowance."""
        return bool(
            (self.z_mean.abs() < self.allowed_mean).all()
            and (self.z_cov.abs() < self.allowed_cov).all()
        )

    def __str__(self) -> str:
        return (
            f"{self.case}: along the law's principal axes mean z = {_fmt(self.z_mean)} "
            f"(allowed |z| < "
            f"{_fmt(self.allowed_mean)}), cov z = {_fmt(self.z_cov)} (allowed < "
            f"{_fmt(self.allowed_cov)}); mean {_fmt(self.mean)} vs {_fmt(self.expected_mean)}, "
            f"cov {_fmt(self.cov)} vs {_fmt(self.expected_cov)}; acceptance {self.acceptance}"
        )


def _moment_report(
    case: SamplerCase,
    x: Tensor,
    mean: Tensor,
    cov: Tensor,
    bias_tolerance: float,
    z_max: float,
    acceptance: dict[str, float],
) -> MomentReport:
    """z-scores of i.i.d. rows `x` against N(mean, cov), along that law's principal axes.

    With cov = Q Λ Qᵀ, u = Λ^(−1/2) Qᵀ (x − mean) must have mean 0 and covariance I; the SE
    of a mean of u is 1/√n, of a variance √(2/n), of a covariance 1/√n. An O(h) bias (a
    variance inflated along one axis) shows up undiluted there. A bias tolerance b in x's
    units allows b/√λᵢ on uᵢ's mean and b/√(λᵢλⱼ) on u's covariance entry (i, j).
    """
    x = x.to(F64)
    n, d = x.shape
    eigenvalues, axes = torch.linalg.eigh(cov)
    scale = eigenvalues.sqrt()
    u = (x - mean) @ axes / scale
    se_mean = torch.full((d,), 1 / math.sqrt(n), dtype=F64)
    se_cov = (1 + torch.eye(d, dtype=F64)).sqrt() / math.sqrt(n)
    return MomentReport(
        case=case.label,
        mean=x.mean(0),
        cov=torch.cov(x.T).reshape(d, d),
        expected_mean=mean,
        expected_cov=cov,
        z_mean=u.mean(0) / se_mean,
        z_cov=(torch.cov(u.T).reshape(d, d) - torch.eye(d, dtype=F64)) / se_cov,
        allowed_mean=z_max + bias_tolerance / (scale * se_mean),
        allowed_cov=z_max + bias_tolerance / (torch.outer(scale, scale) * se_cov),
        acceptance=acceptance,
    )


def gaussian_moment_report(
    case: SamplerCase | Sampler,
    *,
    target: GaussianTarget = STANDARD_GAUSSIAN,
    start: tuple[float, ...] = FAR_START,
    n_chains: int = 4000,
    n_steps: int = 200,
    z_max: float = Z_MAX,
    seed: int = 0,
) -> MomentReport:
    """The run and the numbers of `check_gaussian_moments`, without asserting."""
    case = as_case(case)
    generator = torch.Generator().manual_seed(seed)
    start_point = torch.tensor(start, dtype=F64)
    x0 = start_point.expand(n_chains, target.dim).clone()
    result = case.sampler.sample(target.energy, x0, n_steps, generator=generator)
    if case.langevin_law:
        zero = torch.zeros(target.dim, target.dim, dtype=F64)
        mean, cov = langevin_moments(target, case.langevin_law, n_steps, start_point, zero)
        tolerance = 0.0
    else:
        mean, cov, tolerance = target.mean, target.cov, case.bias_tolerance
    acceptance = _acceptance(result.acceptance_rate, result.stats)
    return _moment_report(case, result.x, mean, cov, tolerance, z_max, acceptance)


def check_gaussian_moments(
    case: SamplerCase | Sampler,
    *,
    target: GaussianTarget = STANDARD_GAUSSIAN,
    start: tuple[float, ...] = FAR_START,
    n_chains: int = 4000,
    n_steps: int = 200,
    z_max: float = Z_MAX,
    seed: int = 0,
) -> MomentReport:
    """Chains started together far out reach the target's mean and covariance.

    Every chain starts at `start` and runs `n_steps` through `sampler.sample`; the final
    states are i.i.d. across chains, so each mean and covariance entry has a known standard
    error. An exact case must match the target, a case with a `langevin_law` its exact
    biased moments after `n_steps` (transient included), a case with only a
    `bias_tolerance` the target within that allowance.

    Arguments:
        case: a SamplerCase, or a bare sampler (held to the target, as exact).
        target: the Gaussian (default `STANDARD_GAUSSIAN`, covariance eigenvalues 1.6, 0.4).
        start: the common starting point (default `FAR_START`).
        n_chains, n_steps: the budget (4000 × 200: SE 0.02 on a mean, 2% on a variance).
        z_max: the tolerance in standard errors.
        seed: seeds the run's generator.

    Returns:
        The MomentReport (z-scores, moments, acceptance).

    Raises:
        AssertionError: some |z| reaches its allowance; the message gives every number.
    """
    case = as_case(case)
    report = gaussian_moment_report(
        case,
        target=target,
        start=start,
        n_chains=n_chains,
        n_steps=n_steps,
        z_max=z_max,
        seed=seed,
    )
    if not report.passed:
        law = "its exact Langevin law" if case.langevin_law else "the target"
        raise AssertionError(
            f"Gaussian moments after {n_steps} steps of {n_chains} chains from {start} are "
            f"not {law}: {report}"
        )
    return report


@attrs.frozen(eq=False, kw_only=True)
class MixtureReport:
    """What `check_mixture` measured.

    Arguments:
        case: the case's label.
        thresholds: the points t where P(X < t) is compared (left mode, split, right mode).
        barrier: the window (a, b) around the split whose mass P(a < X < b) is compared too.
        probabilities, expected: P(X < t) at each threshold, then the barrier's mass, of
            the final states and of the target (`events` names each entry).
        z: their differences in standard errors; allowed: the largest |z| allowed.
        crossings: basin-to-basin moves summed over chains and steps.
        crossed: the fraction of chains that crossed at least once.
        n_chains: the number of chains.
        acceptance: mean acceptance rates, by name.
    """

    case: str
    thresholds: tuple[float, ...]
    barrier: tuple[float, float]
    probabilities: Tensor
    expected: Tensor
    z: Tensor
    allowed: Tensor
    crossings: int
    crossed: float
    n_chains: int
    acceptance: dict[str, float]

    @property
    def crossings_per_chain(self) -> float:
        """Mean number of crossings per chain."""
        return self.crossings / self.n_chains

    @property
    def events(self) -> tuple[str, ...]:
        """What each entry of `probabilities` is the probability of, e.g. ``"X < 0"``."""
        low, high = self.barrier
        return (*(f"X < {t:g}" for t in self.thresholds), f"{low:g} < X < {high:g}")

    @property
    def left_weight(self) -> float:
        """The fraction of chains left of the split between the two modes."""
        return self.probabilities[1].item()

    def __str__(self) -> str:
        return (
            f"{self.case}: P of {list(self.events)}: "
            f"{_fmt(self.probabilities)} vs exact {_fmt(self.expected)}, z = {_fmt(self.z)} "
            f"(allowed |z| < {_fmt(self.allowed)}); crossings {self.crossings} "
            f"({self.crossings_per_chain:.2f} per chain, {self.crossed:.0%} of chains crossed); "
            f"acceptance {self.acceptance}"
        )


def check_mixture(
    case: SamplerCase | Sampler,
    *,
    target: MixtureTarget = STANDARD_MIXTURE,
    n_chains: int = 4000,
    n_steps: int = 400,
    min_crossings_per_chain: float = 2.0,
    barrier: float = 0.15,
    z_max: float = Z_MAX,
    seed: int = 0,
) -> MixtureReport:
    """Chains started in the wrong proportions cross between the modes and reach their weights.

    The chains start at exact draws from the target's modes with the weights reversed
    (0.75 / 0.25 for the default 0.25 / 0.75), so 1/2 of the mass must cross the barrier.
    The chain is driven through `init` and `step` with the contexts `sample` gives (index,
    total, last step, adaptation on), and each step's positions are watched: a crossing is a
    move from one basin (beyond halfway from the split to the first or last mode) to the
    other. The check asserts at least `min_crossings_per_chain` crossings per chain, then
    P(X < t) at the left mode, the split (the mode weights) and the right mode, and the
    barrier's mass P(|X − split| < barrier·gap), against the exact law, each within `z_max`
    binomial standard errors (plus the case's bias_tolerance).

    The barrier's mass is what a wrong acceptance rule moves first: MALA whose MH ratio drops
    the backward proposal density q(x|y) accepts too often, fills the barrier (P(|X| < 0.3)
    z ≈ +11 at step 0.2, +8 at step 0.1, seeds 0–3) while the three CDF points move by
    z ≈ 4–7 at most, near the tolerance. Too narrow a law (a missing noise term) empties it.

    Arguments:
        case: a SamplerCase, or a bare sampler (held to the target, as exact).
        target: the 1-D mixture (default `STANDARD_MIXTURE`); only its first and last modes
            define the split and the basins.
        n_chains, n_steps: the budget (4000 × 400: SE 0.007 on the left weight).
        min_crossings_per_chain: fewer crossings fail the check (the weights would then say
            nothing about mixing between the modes).
        barrier: the half-width of the window around the split, as a fraction of the
            distance between the first and last modes (0.15: |X| < 0.3 on the default).
        z_max: the tolerance in standard errors.
        seed: seeds the starting points and the run's generator.

    Returns:
        The MixtureReport (probabilities, z-scores, crossings).

    Raises:
        AssertionError: too few crossings or some |z| reaches its allowance.
    """
    case = as_case(case)
    sampler, energy = case.sampler, target.energy
    generator = torch.Generator().manual_seed(seed)
    x0 = target.sample(n_chains, generator, weights=target.weights[::-1])
    left, right = target.means[0], target.means[-1]
    split = 0.5 * (left + right)
    low, high = split - 0.25 * (right - left), split + 0.25 * (right - left)

    def basin(x: Tensor, previous: Tensor) -> Tensor:
        return torch.where(x < low, -1, torch.where(x > high, 1, previous))

    state = sampler.init(x0, energy)
    where = basin(x0[:, 0], torch.where(x0[:, 0] < split, -1, 1))
    crossings = torch.zeros(n_chains, dtype=torch.int64)
    acceptance: dict[str, Tensor] = {}
    for index in range(n_steps):
        context = StepContext(index=index, n_steps=n_steps, last=index == n_steps - 1, adapt=True)
        state, info = sampler.step(state, energy, generator=generator, context=context)
        for name, value in info.named_stats().items():
            if name.endswith("acceptance"):
                acceptance[name] = acceptance.get(name, 0.0) + value.detach().mean() / n_steps
        now = basin(state.x[:, 0].detach(), where)
        crossings += now != where
        where = now
    x = state.x.detach().to(F64)[:, 0]
    thresholds = (left, split, right)
    window = (split - barrier * (right - left), split + barrier * (right - left))
    exact = [target.cdf(t) for t in thresholds] + [target.cdf(window[1]) - target.cdf(window[0])]
    expected = torch.tensor(exact, dtype=F64)
    inside = ((x > window[0]) & (x < window[1])).to(F64).mean()
    probabilities = torch.stack([*((x < t).to(F64).mean() for t in thresholds), inside])
    se = torch.sqrt(expected * (1 - expected) / n_chains)
    report = MixtureReport(
        case=case.label,
        thresholds=thresholds,
        barrier=window,
        probabilities=probabilities,
        expected=expected,
        z=(probabilities - expected) / se,
        allowed=z_max + case.bias_tolerance / se,
        crossings=int(crossings.sum()),
        crossed=(crossings > 0).to(F64).mean().item(),
        n_chains=n_chains,
        acceptance={name: value.item() for name, value in acceptance.items()},
    )
    failures = []
    if report.crossings_per_chain < min_crossings_per_chain:
        failures.append(
            f"too few crossings between the modes ({report.crossings_per_chain:.2f} per chain "
            f"< {min_crossings_per_chain}; a larger step or a kernel that mixes is needed)"
        )
    if not (report.z.abs() < report.allowed).all():
        failures.append("the mode weights or shapes are off (P(X < t) or the barrier's mass)")
    if failures:
        raise AssertionError(
            f"mixture {list(target.weights)} after {n_steps} steps of {n_chains} chains "
            f"started in proportions {list(target.weights[::-1])}: {'; '.join(failures)}: "
            f"{report}"
        )
    return report


def check_moment_power(
    *,
    step_size: float = 0.2,
    target: GaussianTarget = STANDARD_GAUSSIAN,
    min_z: float = 3 * Z_MAX,
    **budget: int,
) -> tuple[MomentReport, MomentReport]:
    """The Gaussian check has power: it fails unadjusted Langevin at a step with O(h) bias.

    ULA at `step_size` is run twice through `check_gaussian_moments`: held to the target
    (as if exact) it must fail with some |z| ≥ `min_z`; held to its exact biased law
    (`LangevinMove(step_size)`, whose stationary covariance is `ula_stationary_covariance`)
    it must pass. Call it with the budget a sampler's own check uses to show that budget
    resolves an O(h) bias.

    Arguments:
        step_size: ULA's h (default 0.2: the narrow direction's variance 0.4 becomes 0.53).
        target: the Gaussian.
        min_z: how far the biased chains must miss the target, in standard errors.
        budget: `n_chains`, `n_steps`, `seed` passed on to `check_gaussian_moments`.

    Returns:
        (the failing report against the target, the passing report against the law).

    Raises:
        AssertionError: the check missed the bias, or ULA missed its own law.
    """
    sampler = Langevin(step_size=step_size)
    as_exact = SamplerCase(name=f"ula-{step_size}-as-exact", sampler=sampler, exact=True)
    biased = gaussian_moment_report(as_exact, target=target, **budget)
    if biased.passed or biased.max_z < min_z:
        raise AssertionError(
            f"the Gaussian moment check cannot see ULA's O(h) bias at step_size {step_size} "
            f"with the budget {budget or '(defaults)'}: largest |z| {biased.max_z:.1f} < "
            f"{min_z}: {biased}"
        )
    law = SamplerCase(
        name=f"ula-{step_size}",
        sampler=sampler,
        exact=False,
        langevin_law=(LangevinMove(step_size=step_size),),
    )
    return biased, check_gaussian_moments(law, target=target, **budget)
