"""Every registered sampler through the `ebmkit.testing` checks, and the checks' power.

The table is the registry: each registered sampler's `testing_cases()` (core or plugin), so a
new plugin's kernel is covered here without editing this file. The second half shows that
each check fails a deliberately wrong kernel (a wrong MH ratio, ULA's bias, a stuck chain, a
kernel that ignores its generator or the state it continues, ...); the numbers observed are
in the docstrings.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import attrs
import pytest
import torch
from torch import Tensor

import ebmkit
from ebmkit.autograd import energy_and_grad
from ebmkit.records import ChainState, StepContext, StepInfo
from ebmkit.samplers.base import EvaluationCounts, kept_from_previous
from ebmkit.samplers.composite import Composite
from ebmkit.samplers.langevin import Langevin
from ebmkit.samplers.mala import MALA
from ebmkit.samplers.moves import batch_view, gaussian_noise, metropolis_accept, select_chains
from ebmkit.testing import (
    CASES_METHOD,
    STANDARD_GAUSSIAN,
    LangevinMove,
    MixtureTarget,
    SamplerCase,
    check_continuation,
    check_contract,
    check_gaussian_moments,
    check_mixture,
    check_moment_power,
    check_reproducible,
    gaussian_moment_report,
    langevin_moments,
    registered_sampler_cases,
    ula_stationary_covariance,
)

F64 = torch.float64
REGISTERED = registered_sampler_cases()
IDS = [registered.id for registered in REGISTERED]


# --------------------------------------------------------------------------------------
# The table: every registered sampler


def test_every_registered_sampler_offers_cases() -> None:
    names = {component.name for component in ebmkit.components("sampler")}
    assert {registered.sampler for registered in REGISTERED} == names
    problems = [registered.problem for registered in REGISTERED if registered.case is None]
    assert not problems, "\n".join(problems)
    assert {"Langevin", "MALA", "Composite"} <= names


@pytest.mark.parametrize("registered", REGISTERED, ids=IDS)
def test_registered_sampler_reaches_the_gaussian_from_far_away(registered) -> None:
    check_gaussian_moments(registered.get())


@pytest.mark.parametrize("registered", REGISTERED, ids=IDS)
def test_registered_sampler_crosses_between_modes_to_their_weights(registered) -> None:
    check_mixture(registered.get())


@pytest.mark.parametrize("registered", REGISTERED, ids=IDS)
def test_registered_sampler_is_reproducible_from_its_generator(registered) -> None:
    check_reproducible(registered.get())


@pytest.mark.parametrize("registered", REGISTERED, ids=IDS)
def test_registered_sampler_continues_through_a_persistent_bank_bit_for_bit(registered) -> None:
    check_continuation(registered.get())


@pytest.mark.parametrize("registered", REGISTERED, ids=IDS)
def test_registered_sampler_keeps_the_contract(registered) -> None:
    check_contract(registered.get())


# --------------------------------------------------------------------------------------
# The convention: what a registered sampler without cases gets


@dataclass
class FakeComponent:
    name: str
    plugin: str
    factory: Callable


class FakeRegistry:
    def __init__(self, **factories: Callable) -> None:
        self.found = [FakeComponent(name, "fake", factory) for name, factory in factories.items()]

    def components(self, kind: str) -> list[FakeComponent]:
        return self.found


@attrs.define(kw_only=True)
class InheritsItsCases(MALA):
    """A MALA variant that forgot its own `testing_cases` (MALA's are inherited)."""


def test_a_sampler_without_cases_fails_with_what_to_add() -> None:
    found = registered_sampler_cases(FakeRegistry(Bare=lambda: MALA(step_size=0.1)))
    assert [registered.id for registered in found] == ["Bare-no-cases"]
    with pytest.raises(AssertionError, match=rf"'Bare' \(plugin 'fake'\).*`{CASES_METHOD}\(\)`"):
        found[0].get()


def test_inherited_or_broken_cases_are_refused() -> None:
    def broken() -> list:
        raise RuntimeError("oops")

    class Broken:
        testing_cases = staticmethod(broken)

    class Empty:
        testing_cases = staticmethod(list)

    found = registered_sampler_cases(
        FakeRegistry(Child=InheritsItsCases, Broken=Broken, Empty=Empty)
    )
    problems = {registered.sampler: registered.problem for registered in found}
    assert "not a InheritsItsCases" in problems["Child"] and "define it on" in problems["Child"]
    assert "RuntimeError('oops')" in problems["Broken"]
    assert "no cases" in problems["Empty"]


def test_a_case_states_one_law() -> None:
    with pytest.raises(ValueError, match="exact case"):
        SamplerCase(name="x", sampler=MALA(step_size=0.1), exact=True, bias_tolerance=0.1)
    with pytest.raises(ValueError, match="needs its law"):
        SamplerCase(name="x", sampler=Langevin(step_size=0.1), exact=False)
    with pytest.raises(TypeError, match="sampler instance"):
        SamplerCase(name="x", sampler=Langevin, exact=True)


# --------------------------------------------------------------------------------------
# Wrong kernels: each check must fail one


@attrs.define(kw_only=True)
class SymmetricRatioMALA(MALA):
    """MALA whose MH ratio drops the proposal densities q(x|y)/q(y|x) (the classic bug)."""

    def step(self, state, energy, *, generator=None, context=None):
        x, step_size = state.x, state.step_size
        noise = batch_view(self._noise(step_size), x)
        mean = self._drift_mean(x, state.grad, step_size)
        proposal = mean + noise * gaussian_noise(x, generator)
        proposal_energy, proposal_grad = energy_and_grad(energy, proposal)
        accepted, probability = metropolis_accept(state.energy - proposal_energy, generator)
        new_state = ChainState(
            x=select_chains(accepted, proposal, x),
            energy=torch.where(accepted, proposal_energy, state.energy),
            grad=select_chains(accepted, proposal_grad, state.grad),
            step_size=step_size,
            owned=state.owned,
        )
        info = StepInfo(acceptance_prob=probability, accepted=accepted, step_size=step_size)
        return new_state, info


def test_gaussian_check_fails_mala_with_a_wrong_mh_ratio() -> None:
    """Observed: covariance z ≈ −19 and −22 along the principal axes (variances halved)."""
    wrong = SamplerCase(name="no-q", sampler=SymmetricRatioMALA(step_size=0.2), exact=True)
    report = gaussian_moment_report(wrong)
    assert report.z_cov.diagonal().max() < -15
    with pytest.raises(AssertionError, match="not the target"):
        check_gaussian_moments(wrong)
    right = check_gaussian_moments(MALA(step_size=0.2))  # a bare sampler: held as exact
    assert right.max_z < 2  # the same budget, the same seed, the right ratio: |z| ≈ 1.3


def test_gaussian_check_fails_a_stuck_chain() -> None:
    """MALA at step 0.005 is exact but has not left the far start: mean z ≈ −47."""
    stuck = SamplerCase(name="tiny", sampler=MALA(step_size=0.005), exact=True)
    with pytest.raises(AssertionError, match="mean z"):
        check_gaussian_moments(stuck)


def test_moment_check_has_power_against_ula_bias() -> None:
    """ULA at step 0.2 held to the target: the narrow axis's variance 0.4 → 0.533 is z ≈ 15.

    Held to its exact law (the `langevin_moments` recursion) the same run passes, and the
    law's limit is the closed form σ²λ²/(h(2λ − h)) on each principal axis.
    """
    biased, lawful = check_moment_power(step_size=0.2)
    assert biased.max_z > 10 and not biased.passed
    assert lawful.passed and lawful.max_z < 3
    start_mean, start_cov = torch.tensor((5.0, -5.0), dtype=F64), torch.zeros(2, 2, dtype=F64)
    moves = (LangevinMove(step_size=0.2),)
    _, limit = langevin_moments(STANDARD_GAUSSIAN, moves, 400, start_mean, start_cov)
    closed = ula_stationary_covariance(STANDARD_GAUSSIAN.cov, 0.2)
    torch.testing.assert_close(limit, closed, rtol=1e-12, atol=0)
    eigenvalues = torch.linalg.eigvalsh(closed)
    torch.testing.assert_close(eigenvalues, torch.tensor([0.4 / 0.75, 1.6 / 0.9375], dtype=F64))
    # ULA at half the step still misses the target (z ≈ 6.4): the check resolves h = 0.1.
    half = SamplerCase(name="ula-0.1", sampler=Langevin(step_size=0.1), exact=True)
    assert gaussian_moment_report(half).max_z > 5
    # Too small a budget cannot see the bias, and says so.
    with pytest.raises(AssertionError, match="cannot see ULA's O\\(h\\) bias"):
        check_moment_power(step_size=0.2, n_chains=200)


def test_langevin_law_check_fails_a_wrong_noise_scale() -> None:
    """SGLD-style Langevin (σ = 0.2 ≠ √(2h)) held to ULA's law: far too narrow (z ≈ −20)."""
    sgld = Langevin(step_size=0.05, noise_scale=0.2)
    claimed = (LangevinMove(step_size=0.05),)
    wrong = SamplerCase(name="sgld", sampler=sgld, exact=False, langevin_law=claimed)
    with pytest.raises(AssertionError, match="its exact Langevin law"):
        check_gaussian_moments(wrong)
    actual = (LangevinMove(step_size=0.05, noise_scale=0.2),)
    right = SamplerCase(name="sgld", sampler=sgld, exact=False, langevin_law=actual)
    check_gaussian_moments(right)


def test_ula_stationary_covariance_refuses_a_diverging_step() -> None:
    with pytest.raises(ValueError, match="diverges"):
        ula_stationary_covariance(STANDARD_GAUSSIAN.cov, 0.8)


def test_mixture_check_fails_a_wrong_mh_ratio_and_ula_bias() -> None:
    """Wrong ratio: P(X < 0) = 0.13 vs 0.257 (z ≈ −18). ULA at 0.2 as exact: 0.319 (z ≈ 9)."""
    for sampler, pattern in (
        (SymmetricRatioMALA(step_size=0.2), "mode weights or shapes are off"),
        (Langevin(step_size=0.2), "mode weights or shapes are off"),
    ):
        with pytest.raises(AssertionError, match=pattern):
            check_mixture(SamplerCase(name="wrong", sampler=sampler, exact=True))


def test_mixture_check_fails_chains_that_do_not_cross() -> None:
    """MALA at step 0.005: 0.48 crossings per chain (< 2). On the mixture the STANLEY tests
    used before (0.2·N(−2, .5²) + 0.8·N(2, .5²), barrier e⁻⁸) MALA at 0.15 makes 39 crossings
    among 4000 chains in 400 steps (0.01 per chain): a weights check there has no power."""
    with pytest.raises(AssertionError, match="too few crossings"):
        check_mixture(SamplerCase(name="tiny", sampler=MALA(step_size=0.005), exact=True))
    separated = MixtureTarget(weights=(0.2, 0.8), means=(-2.0, 2.0), stds=(0.5, 0.5))
    with pytest.raises(AssertionError, match=r"crossings 39 \(0\.01 per chain"):
        check_mixture(MALA(step_size=0.15), target=separated)


@attrs.define(kw_only=True)
class GlobalRandomLangevin(Langevin):
    """Langevin that draws its noise from the global RNG, ignoring the generator passed in."""

    def move(self, state: ChainState, generator: torch.Generator | None = None) -> Tensor:
        return super().move(state, None)


def test_reproducibility_check_fails_a_kernel_that_ignores_its_generator() -> None:
    torch.manual_seed(0)
    with pytest.raises(AssertionError, match="two runs seeded 0 differ: x:.*global torch RNG"):
        check_reproducible(GlobalRandomLangevin(step_size=0.1))


def test_reproducibility_check_fails_a_kernel_deaf_to_the_seed() -> None:
    """Noise-free Langevin is gradient descent: every seed gives the same chains."""
    with pytest.raises(AssertionError, match="runs seeded 0 and 1 end at the same x"):
        check_reproducible(Langevin(step_size=0.1, noise_scale=0.0))


@attrs.define(kw_only=True)
class ForgetfulMALA(MALA):
    """MALA whose `init` ignores the state it continues (its adapted step sizes and ages)."""

    def init(self, x: Tensor, energy, *, previous: ChainState | None = None) -> ChainState:
        return super().init(x, energy)


def test_continuation_check_fails_a_kernel_that_ignores_the_continued_state() -> None:
    """Adapting for 15 steps, halves of 10: the second half restarts the adaptation."""
    pattern = r"step_size: 64 of 64 entries differ.*owned\['age'\]"
    with pytest.raises(AssertionError, match=pattern):
        check_continuation(ForgetfulMALA(step_size=0.1, adapt_steps=15))
    check_continuation(MALA(step_size=0.1, adapt_steps=15))


@attrs.define(kw_only=True)
class StageBlindComposite(Composite):
    """Composite as it was before issue 13: `init` evaluates E and ∇E itself and never runs
    its stages' `init`, so a persistent bank's "not set yet" entries stay NaN."""

    def init_with_cost(self, x, energy, *, previous=None):
        _, owned = kept_from_previous(x, previous)
        value, grad = energy_and_grad(energy, x)
        state = ChainState(x=x, energy=value, grad=grad, owned=owned)
        return state, EvaluationCounts(n_grad_evals=1)


def test_continuation_check_fails_a_composite_that_skips_its_stages_init() -> None:
    """The bank is twice the batch, so the compared chains arrive with ``local/step_size`` NaN
    ("not set yet"): the stage-blind Composite runs MALA with NaN steps (never accepting)."""
    stages = {"global": MALA(step_size=0.4), "local": MALA(step_size=0.1, adapt_steps=15)}
    pattern = r"not set yet.*owned\['global/step_size'\]: 64 of 64 entries differ"
    with pytest.raises(AssertionError, match=pattern):
        check_continuation(StageBlindComposite(stages=stages))
    check_continuation(Composite(stages=stages))


@attrs.define(kw_only=True)
class OwnedOnlyMALA(MALA):
    """MALA whose step keeps only the `owned` entries it made itself."""

    def step(self, state, energy, *, generator=None, context=None):
        new_state, info = super().step(state, energy, generator=generator, context=context)
        mine = {key: value for key, value in new_state.owned.items() if key == "age"}
        return attrs.evolve(new_state, owned=mine), info


@attrs.define(kw_only=True)
class OvercountingLangevin(Langevin):
    """Langevin that reports one gradient evaluation more than it makes per step."""

    def step(self, state, energy, *, generator=None, context=None):
        new_state, info = super().step(state, energy, generator=generator, context=context)
        return new_state, attrs.evolve(info, n_grad_evals=info.n_grad_evals + 1)


@attrs.define(kw_only=True)
class UncountedScoringLangevin(Langevin):
    """Langevin that also scores E at its new point without a gradient and does not say so."""

    def step(self, state, energy, *, generator=None, context=None):
        new_state, info = super().step(state, energy, generator=generator, context=context)
        with torch.no_grad():
            energy(new_state.x)
        return new_state, info


@attrs.define(kw_only=True)
class GradientAssumingLangevin(Langevin):
    """Langevin that takes ∇E from the state unchecked (fails on a state whose ∇E is None)."""

    def step(self, state, energy, *, generator=None, context=None):
        x = self.move(state, generator)
        value, grad = energy_and_grad(energy, x)
        new_state = ChainState(x=x, energy=value, grad=grad, owned=state.owned)
        info = StepInfo(acceptance_prob=None, accepted=None, step_size=torch.scalar_tensor(0.1))
        return new_state, info


@attrs.define(kw_only=True)
class GraphKeepingLangevin(Langevin):
    """Langevin whose `sample` always keeps the graph, whatever `differentiable` says."""

    def sample(self, energy, start, n_steps=None, *, generator=None, differentiable=False):
        return super().sample(energy, start, n_steps, generator=generator, differentiable=True)


@pytest.mark.parametrize(
    ("sampler", "pattern"),
    [
        (OwnedOnlyMALA(step_size=0.1), r"lone step dropped owned\['ebmkit.testing/foreign'\]"),
        (OvercountingLangevin(step_size=0.1), "n_grad_evals = 6 but .* differentiated 3 times"),
        (GraphKeepingLangevin(step_size=0.1), "keeps an autograd graph"),
        (Langevin(step_size=1e30), "NaN or inf"),
        (
            UncountedScoringLangevin(step_size=0.1),
            "n_energy_evals = 0 but the energy was evaluated 3 times without a gradient",
        ),
        (
            GradientAssumingLangevin(step_size=0.1),
            r"a lone step from ∇E = None raised TypeError",
        ),
    ],
    ids=[
        "drops-foreign-owned",
        "overcounts-gradients",
        "keeps-the-graph",
        "blows-up",
        "hides-energy-evaluations",
        "assumes-a-gradient",
    ],
)
def test_contract_check_fails_a_broken_kernel(sampler, pattern: str) -> None:
    with pytest.raises(AssertionError, match=pattern):
        check_contract(sampler)


def test_mixture_check_drives_steps_with_the_contexts_of_sample() -> None:
    """The mixture check calls `step` itself (to watch every step); a kernel sees the same
    contexts as in `sample`: indices 0..n−1, the total, `last` once, adaptation on."""
    seen: list[StepContext] = []

    @attrs.define(kw_only=True)
    class Recording(MALA):
        def step(self, state, energy, *, generator=None, context=None):
            seen.append(context)
            return super().step(state, energy, generator=generator, context=context)

    sampler = Recording(step_size=0.2)
    check_mixture(sampler, n_chains=10, n_steps=5, min_crossings_per_chain=0, z_max=math.inf)
    assert [c.index for c in seen] == list(range(5)) and {c.n_steps for c in seen} == {5}
    assert [c.last for c in seen] == [False] * 4 + [True] and all(c.adapt for c in seen)
