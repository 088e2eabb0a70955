"""samplers.Composite: its stages' `init`, per-stage repeats, honest costs, states without ∇E."""

from __future__ import annotations

import attrs
import pytest
import torch

from ebmkit.energies.mlp import MLPEnergy
from ebmkit.initializers.noise import Noise
from ebmkit.initializers.persistent import Persistent
from ebmkit.records import ChainState, StepInfo
from ebmkit.samplers.base import EvaluationCounts, MarkovKernel, kept_from_previous
from ebmkit.samplers.composite import Composite
from ebmkit.samplers.langevin import Langevin
from ebmkit.samplers.mala import MALA
from ebmkit.samplers.moves import gaussian_noise, metropolis_accept, select_chains
from ebmkit.testing import (
    GradientCounter,
    LangevinMove,
    SamplerCase,
    check_continuation,
    check_contract,
    check_gaussian_moments,
    check_reproducible,
    finished_round,
    state_differences,
)


def small_energy(seed: int = 0) -> MLPEnergy:
    torch.manual_seed(seed)
    return MLPEnergy(hidden=(16, 16))


def ula_then_mala() -> Composite:
    return Composite(stages={"ula": Langevin(step_size=0.01), "mala": MALA(step_size=0.05)})


def test_chains_a_bank_has_not_run_yet_get_each_stages_configured_step_size_and_move():
    """Bank of 8 drawn 4 at a time: chains 4-7 arrive with ``mala/step_size`` NaN ("not set
    yet"); each stage's `init` resolves it, so they move as chains 0-3 did in their first round.
    (Before the fix: NaN step sizes, acceptance 0 in every round, the chains never moved.)"""
    energy = small_energy()
    sampler = ula_then_mala()
    bank = Persistent(n_chains=8, start=Noise(shape=(2,), low=-2, high=2), shuffle=False)
    generator = torch.Generator().manual_seed(0)
    acceptance = {}
    for index in range(1, 5):
        init = bank.sample(4)
        result = sampler.sample(energy, init, 10, generator=generator)
        bank.update(finished_round(index, init, result))
        acceptance[index] = result.stats["mala/acceptance"]
        if index == 2:  # chains 4-7, first run: they started from "not set" entries
            assert torch.equal(init.indices, torch.arange(4, 8))
            assert init.state.owned["mala/step_size"].isnan().all()
            assert torch.equal(result.state.owned["mala/step_size"], torch.full((4,), 0.05))
            assert not torch.equal(result.x, init.x), "chains 4-7 never moved"
    assert bank.owned["mala/step_size"].isfinite().all()
    for index, rate in acceptance.items():
        assert rate.isfinite().all() and (rate > 0).all(), (index, rate)


# Per-stage repeats ------------------------------------------------------------------------


@attrs.define(kw_only=True)
class Recording(MALA):
    """MALA that records the contexts it is stepped with and reports its repeat number."""

    seen: list = attrs.field(factory=list)

    def step(self, state, energy, *, generator=None, context=None):
        self.seen.append(context)
        new_state, info = super().step(state, energy, generator=generator, context=context)
        stats = {"move": torch.tensor(float(len(self.seen)))}
        return new_state, attrs.evolve(info, stats=stats)


def test_a_repeated_stage_moves_k_times_per_step_on_one_owned_state():
    energy = lambda x: 0.5 * x.square().sum(1)  # noqa: E731
    local = Recording(step_size=0.5, adapt_steps=12)
    kernel = Composite(
        stages={"global": Langevin(step_size=0.05), "local": local}, repeats={"local": 3}
    )
    result = kernel.sample(energy, torch.zeros(64, 2), 5, generator=torch.Generator())
    # One step size and one age for the stage, not one per repeat; the age counts moves.
    assert set(result.state.owned) == {"local/step_size", "local/age"}
    assert torch.equal(result.state.owned["local/age"], torch.full((64,), 15))
    # The step size adapted during the first 12 moves (4 steps) only, shared by the repeats.
    assert not torch.equal(result.state.owned["local/step_size"], torch.full((64,), 0.5))
    # `last` only on the final repeat of the final stage of the last step.
    assert [context.last for context in local.seen] == [False] * 14 + [True]
    assert [context.index for context in local.seen] == [i for i in range(5) for _ in range(3)]
    # Stats per stage averaged over its repeats: moves 1-3, 4-6, ... average 2, 5, ..., 14;
    # then over the 5 steps: 8.
    assert torch.equal(result.stats["local/move"], torch.tensor(8.0))
    assert result.stats["local/acceptance"].shape == (64,)
    # Costs summed over repeats: 2 inits, then per step 1 ULA + 3 MALA gradients (the ULA's
    # ∇E at its new point serves the first MALA move).
    assert result.n_grad_evals == 2 + 5 * (1 + 3)


def test_repeats_are_the_composed_langevin_law_and_the_check_sees_a_missing_repeat():
    """Two ULA stages, the fine one twice: exactly the three moves' Langevin law; the same
    stages without the repeat are one fine move short. Five steps from the far start, while
    the mean still decays: max |z| 2.0 with the repeat, 34 without (after 200 steps only
    the stationary bias differs: 1.3 vs 2.4, no power)."""
    fine, coarse = LangevinMove(step_size=0.05), LangevinMove(step_size=0.1)
    law = (coarse, fine, fine)

    def case(repeats: dict[str, int]) -> SamplerCase:
        stages = {"coarse": Langevin(step_size=0.1), "fine": Langevin(step_size=0.05)}
        sampler = Composite(stages=stages, repeats=repeats)
        return SamplerCase(name="law", sampler=sampler, exact=False, langevin_law=law)

    check_gaussian_moments(case({"fine": 2}), n_steps=5)
    with pytest.raises(AssertionError, match="exact Langevin law"):
        check_gaussian_moments(case({}), n_steps=5)


@pytest.mark.parametrize(
    ("repeats", "problem"),
    [
        ({"lokal": 2}, "names 'lokal', which is not a stage"),
        ({"local": 0}, "gives stage 'local' the count 0"),
        ({"local": 2.5}, "gives stage 'local' the count 2.5"),
        ({"local": True}, "gives stage 'local' the count True"),
    ],
)
def test_repeats_naming_no_stage_or_counting_below_one_is_one_clear_error(repeats, problem):
    stages = {"global": Langevin(step_size=0.1), "local": MALA(step_size=0.1)}
    message = (
        rf"samplers\.Composite\.repeats {problem}; the stages are \['global', 'local'\]\. "
        rf".*samplers\.Composite\.repeats = \{{'local': 5\}}"
    )
    with pytest.raises(ValueError, match=message):
        Composite(stages=stages, repeats=repeats)


# States whose ∇E is None, and kernels that count energy-only and flow evaluations ------------


def energy_set_grad_none(kernel, x: torch.Tensor, energy) -> ChainState:
    return attrs.evolve(kernel.init(x, energy), grad=None)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Langevin(step_size=0.1),
        lambda: MALA(step_size=0.3, adapt_steps=5),
        lambda: Composite(stages={"ula": Langevin(step_size=0.1), "mala": MALA(step_size=0.3)}),
        lambda: Composite(stages={"mala": MALA(step_size=0.3), "ula": Langevin(step_size=0.1)}),
    ],
    ids=["langevin", "mala", "ula-then-mala", "mala-then-ula"],
)
def test_a_state_with_energy_but_no_gradient_is_re_evaluated_and_counted(make):
    """The step from (x, E, ∇E = None) equals the step from (x, E, ∇E), bit for bit, and
    counts the one gradient evaluation it made to get ∇E back."""
    kernel = make()
    energy = GradientCounter(2, dtype=torch.float64)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    full = kernel.init(x, energy)
    moves = []
    for state in (full, energy_set_grad_none(kernel, x, energy)):
        before = energy.gradients
        new_state, info = kernel.step(state, energy, generator=torch.Generator().manual_seed(2))
        assert info.n_grad_evals == energy.gradients - before
        moves.append((new_state, info))
    (with_grad, info_with), (without, info_without) = moves
    assert not state_differences(with_grad, without)
    assert info_without.n_grad_evals == info_with.n_grad_evals + 1


@attrs.define(kw_only=True)
class GaussianIMH(MarkovKernel):
    """Independence MH with a fixed N(0, scale²I) proposal standing in for a flow: it scores
    E without a gradient and never needs ∇E, caches log q(x) in ``extras["imh/log_q"]``, and
    counts one flow pass per proposal (and per log q(x) it has to recompute)."""

    scale: float = 1.5
    n_steps: int = 10

    @classmethod
    def testing_cases(cls) -> list[SamplerCase]:
        return [SamplerCase(name="imh", sampler=cls(), exact=True)]

    def _log_q(self, x: torch.Tensor) -> torch.Tensor:
        return -0.5 * (x / self.scale).square().flatten(1).sum(1)

    def init(self, x, energy, *, previous=None):
        step_size, owned = kept_from_previous(x, previous)
        with torch.no_grad():
            value = energy(x)
        extras = {"imh/log_q": self._log_q(x)}
        return ChainState(
            x=x, energy=value, grad=None, step_size=step_size, extras=extras, owned=owned
        )

    def init_cost(self, state: ChainState) -> EvaluationCounts:
        return EvaluationCounts(n_energy_evals=1, n_flow_evals=1)

    def step(self, state, energy, *, generator=None, context=None):
        n_flow_evals, log_q = 1, state.extras.get("imh/log_q")
        if log_q is None:  # a local move dropped the cache: the same pass as `init`
            log_q, n_flow_evals = self._log_q(state.x), 2
        proposal = self.scale * gaussian_noise(state.x, generator)
        with torch.no_grad():
            proposal_energy = energy(proposal)
        proposal_log_q = self._log_q(proposal)
        log_ratio = state.energy - proposal_energy + log_q - proposal_log_q
        accepted, probability = metropolis_accept(log_ratio, generator)
        new_state = ChainState(
            x=select_chains(accepted, proposal, state.x),
            energy=torch.where(accepted, proposal_energy, state.energy),
            grad=None,  # never needed here; a gradient-based stage re-evaluates it
            step_size=state.step_size,
            extras={"imh/log_q": torch.where(accepted, proposal_log_q, log_q)},
            owned=state.owned,
        )
        info = StepInfo(
            acceptance_prob=probability,
            accepted=accepted,
            step_size=torch.scalar_tensor(self.scale),
            n_grad_evals=0,
            n_energy_evals=1,
            n_flow_evals=n_flow_evals,
        )
        return new_state, info


def imh_then_mala() -> Composite:
    stages = {"global": GaussianIMH(), "local": MALA(step_size=0.2, adapt_steps=30)}
    return Composite(stages=stages, repeats={"local": 2})


@pytest.mark.parametrize("make", [GaussianIMH, imh_then_mala], ids=["imh", "imh-then-mala"])
def test_a_kernel_without_gradients_keeps_the_contract_alone_and_as_a_stage(make):
    """The design lets a flow kernel report energy-only and flow evaluations, leave ∇E None,
    and compose: ebmkit.testing's checks hold for it alone and under Composite."""
    case = SamplerCase(name="toy", sampler=make(), exact=True)
    check_contract(case)
    check_continuation(case)
    check_reproducible(case)


def test_costs_of_a_global_then_local_composite_add_up():
    energy = GradientCounter(2, dtype=torch.float64)
    result = imh_then_mala().sample(energy, torch.zeros(32, 2, dtype=torch.float64), 4)
    # init: IMH 1 energy + 1 flow, MALA 1 gradient. Each step: IMH 1 energy + 1 proposal + 1
    # log q(x) (MALA moved x and dropped the cache; not on the first step); MALA 1 ∇E at the
    # IMH's state (it left ∇E None) + 2 proposals.
    assert (result.n_grad_evals, result.n_energy_evals) == (1 + 4 * 3, 1 + 4)
    assert result.n_flow_evals == 1 + 1 + 3 * 2
    assert result.n_grad_evals == energy.gradients
    assert result.n_energy_evals == energy.energy_only
