"""samplers.HMC: registered through the entry point, exact on ebmkit.testing's targets, and
each exactness check shown to fail a deliberately wrong kernel (numbers observed in the
docstrings: 4000 chains, seed 0, one CPU core)."""

from __future__ import annotations

import attrs
import ebmkit
import pytest
import torch
from ebmkit import InitBatch, energy_and_grad
from ebmkit.testing import (
    STANDARD_GAUSSIAN,
    GradientCounter,
    SamplerCase,
    check_continuation,
    check_contract,
    check_gaussian_moments,
    check_mixture,
    check_reproducible,
    gaussian_moment_report,
)

from ebmkit_hmc import HMC, kinetic_energy
from ebmkit_hmc.adaptation import AGE

CASES = {case.name: case for case in HMC.testing_cases()}


@attrs.define(kw_only=True)
class PotentialOnlyHMC(HMC):
    """HMC whose MH test compares E alone (the kinetic energy left out of H)."""

    def leapfrog(self, x, momentum, grad, energy, eps, mass):
        proposal, new_momentum, value, new_grad = super().leapfrog(
            x, momentum, grad, energy, eps, mass
        )
        # K(p′) := K(p), so H(x′, p′) − H(x, p) = E(x′) − E(x): the kinetic terms cancel.
        scale = (kinetic_energy(momentum, mass) / kinetic_energy(new_momentum, mass)).sqrt()
        return proposal, new_momentum * ebmkit.batch_view(scale, x), value, new_grad


@attrs.define(kw_only=True)
class FullFirstKickHMC(HMC):
    """HMC whose leapfrog starts with a full momentum step instead of a half one (the map is
    then not reversible, so the MH test on H no longer makes the kernel exact)."""

    def leapfrog(self, x, momentum, grad, energy, eps, mass):
        momentum = momentum - eps * grad
        for index in range(self.n_leapfrog):
            x = x + eps * momentum / mass
            value, grad = energy_and_grad(energy, x)
            momentum = momentum - (0.5 if index == self.n_leapfrog - 1 else 1.0) * eps * grad
        return x, momentum, value, grad


def exact(sampler: HMC, name: str = "case") -> SamplerCase:
    return SamplerCase(name=name, sampler=sampler, exact=True)


def test_registered_through_the_entry_point_only() -> None:
    (component,) = [c for c in ebmkit.components("sampler") if c.name == "HMC"]
    assert component.factory is HMC and component.plugin == "hmc"
    sampler = ebmkit.create("sampler", "HMC", step_size=0.2, n_leapfrog=4)
    assert isinstance(sampler, HMC) and isinstance(sampler, ebmkit.Sampler)


@pytest.mark.parametrize("name", list(CASES))
def test_cases_keep_the_contract_reproduce_and_continue(name: str) -> None:
    check_contract(CASES[name])
    check_reproducible(CASES[name])
    check_continuation(CASES[name])


def test_counts_exactly_l_gradients_per_step() -> None:
    """init: 1; each step: L (∇E at the start is the cached one); a state without ∇E: L + 1."""
    energy = GradientCounter(2)
    sampler = HMC(step_size=0.1, n_leapfrog=4)
    result = sampler.sample(energy, torch.randn(6, 2), 5)
    assert result.n_grad_evals == energy.gradients == 1 + 4 * 5
    state = attrs.evolve(result.state, grad=None)
    counter = GradientCounter(2)
    _, info = sampler.step(state, counter)
    assert info.n_grad_evals == counter.gradients == 5


def test_leapfrog_is_reversible_with_a_second_order_energy_error() -> None:
    """Flip the momentum at the end and integrate again: back at the start (float64). Over
    a fixed time L·ε = 1 the error in H is O(ε²): halving ε divides it by about 4."""
    energy = STANDARD_GAUSSIAN.energy
    x = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    p = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    _, grad = energy_and_grad(energy, x)
    errors = []
    for step_size, n_leapfrog in ((0.05, 20), (0.025, 40)):
        sampler = HMC(step_size=step_size, n_leapfrog=n_leapfrog, mass=(1.0, 3.0))
        mass, eps = sampler.mass_like(x), torch.tensor(step_size, dtype=torch.float64)
        y, q, value, y_grad = sampler.leapfrog(x, p, grad, energy, eps, mass)
        back, p_back, _, _ = sampler.leapfrog(y, -q, y_grad, energy, eps, mass)
        torch.testing.assert_close(back, x, rtol=0, atol=1e-12)
        torch.testing.assert_close(-p_back, p, rtol=0, atol=1e-12)
        gap = value + kinetic_energy(q, mass) - energy(x) - kinetic_energy(p, mass)
        errors.append(gap.abs().max().item())
    assert errors[0] < 0.02 and 3.5 < errors[0] / errors[1] < 4.5


@pytest.mark.parametrize(
    "sampler",
    [HMC(step_size=0.5, n_leapfrog=3), HMC(step_size=0.4, n_leapfrog=5, mass=(1.0, 2.5))],
    ids=["unit-mass", "diagonal-mass"],
)
def test_exact_on_the_correlated_gaussian(sampler: HMC) -> None:
    """Observed max |z| 1.1 (unit mass) and < 2 (diagonal mass)."""
    report = check_gaussian_moments(exact(sampler))
    assert report.max_z < 3.5 and report.acceptance["acceptance"] > 0.8


@pytest.mark.parametrize(
    ("wrong", "right"),
    [
        (PotentialOnlyHMC(step_size=0.3, n_leapfrog=3), HMC(step_size=0.3, n_leapfrog=3)),
        (FullFirstKickHMC(step_size=0.5, n_leapfrog=3), HMC(step_size=0.5, n_leapfrog=3)),
    ],
    ids=["mh-without-kinetic-energy", "full-first-kick"],
)
def test_gaussian_check_fails_a_wrong_kernel(wrong: HMC, right: HMC) -> None:
    """Observed max |z|: without K about 23, with a full first kick about 43; right: ~1."""
    report = gaussian_moment_report(exact(wrong, "wrong"))
    assert report.max_z > 10
    with pytest.raises(AssertionError, match="not the target"):
        check_gaussian_moments(exact(wrong, "wrong"))
    check_gaussian_moments(exact(right, "right"))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("wrong", "pattern"),
    [
        (PotentialOnlyHMC(step_size=0.3, n_leapfrog=2), "mode weights or shapes are off"),
        (FullFirstKickHMC(step_size=0.3, n_leapfrog=2), "mode weights or shapes are off"),
    ],
    ids=["mh-without-kinetic-energy", "full-first-kick"],
)
def test_mixture_check_passes_hmc_and_fails_a_wrong_kernel(wrong: HMC, pattern: str) -> None:
    """HMC(0.3, L = 2): crosses ~14 times per chain, mode weights within z 1.3. Wrong: the
    split's P(X < 0) at z ≈ −22 (no K) and ≈ −8 (full first kick)."""
    report = check_mixture(exact(HMC(step_size=0.3, n_leapfrog=2)))
    assert report.crossings_per_chain > 5
    with pytest.raises(AssertionError, match=pattern):
        check_mixture(exact(wrong, "wrong"))


def test_adaptation_reaches_the_target_then_freezes() -> None:
    """Dual averaging over 100 steps: acceptance 0.653 while adapting (target 0.65); then each
    chain keeps ε̄ (median ≈ 0.83), which lags the last iterates: acceptance ≈ 0.83 after."""
    generator = torch.Generator().manual_seed(0)
    x0 = STANDARD_GAUSSIAN.sample(2000, generator)
    sampler = HMC(step_size=0.05, n_leapfrog=3, adapt_steps=100, target_acceptance=0.65)
    adapting = sampler.sample(STANDARD_GAUSSIAN.energy, x0, 100, generator=generator)
    assert abs(adapting.acceptance_rate.mean().item() - 0.65) < 0.03
    assert (adapting.state.owned[AGE] == 100).all()
    step_sizes = adapting.state.step_size
    assert 0.5 < step_sizes.median().item() < 1.2  # grown from 0.05
    start = InitBatch(x=adapting.x, state=adapting.state)
    after = sampler.sample(STANDARD_GAUSSIAN.energy, start, 50, generator=generator)
    assert torch.equal(after.state.step_size, step_sizes)  # frozen: the kernel is exact again
    assert after.acceptance_rate.mean().item() > 0.65


def test_adaptation_acts_only_when_the_context_allows_it() -> None:
    sampler = HMC(step_size=0.05, n_leapfrog=2, adapt_steps=10)
    x0 = torch.zeros(16, 2)
    result = sampler.sample(STANDARD_GAUSSIAN.energy, x0, 5, adapt=False)
    assert (result.state.step_size == 0.05).all() and (result.state.owned[AGE] == 0).all()


def test_exact_once_adaptation_ends() -> None:
    """50 adaptive steps, then 150 exact ones from the far start: max |z| ≈ 1.0."""
    check_gaussian_moments(exact(HMC(step_size=0.05, n_leapfrog=3, adapt_steps=50)))


@pytest.mark.parametrize(
    ("settings", "pattern"),
    [
        ({"step_size": 0.0}, "step_size"),
        ({"step_size": 0.1, "n_leapfrog": 0}, "n_leapfrog"),
        ({"step_size": 0.1, "mass": (1.0, -1.0)}, "samplers.HMC.mass must be > 0"),
        ({"step_size": 0.1, "target_acceptance": 1.0}, "target_acceptance"),
    ],
)
def test_bad_settings_are_refused(settings: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        HMC(**settings)


def test_a_mass_of_the_wrong_length_names_the_fix() -> None:
    sampler = HMC(step_size=0.1, mass=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="3 entries but a sample has 2 coordinates"):
        sampler.sample(STANDARD_GAUSSIAN.energy, torch.zeros(4, 2), 1)
