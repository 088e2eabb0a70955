"""The flow caches are never stale (method reference §2.4, item 7), and continued chains are
bit-identical.

The cached E (``state.energy``) and log λ (``extras["flow/log_prob"]``) must equal fresh
evaluations after an energy update, a flow update and a local move; a stale cache biases
the MH ratio (the authors' `GlobalLocal` keeps the IMH cache across MALA moves). Each check
is shown to catch a kernel that keeps a stale cache. A chain continued through a persistent
bank equals one run without a break, bit for bit, also with a nonlinear flow, where log λ
computed by a forward pass differs in its last bits from the value the proposal was scored
with: that is why the proposal's latent is carried in `owned` (shown by dropping it).
"""

from __future__ import annotations

import attrs
import pytest
import torch
from flow_mcmc_fixtures import F64, UNBALANCED, ParametricMixture, SinhAffine, StaleCacheMALA

import ebmkit
from ebmkit.flows import Affine, ElementwiseAffine
from ebmkit.initializers.persistent import Persistent
from ebmkit.samplers.mala import MALA
from ebmkit.testing import SamplerCase, check_continuation, finished_round
from ebmkit_flow_mcmc import ISIR, LATENT, LOG_PROB, FlowIMH, FlowMCMC, NeutraMCMC


def assert_fresh(state, energy, flow) -> None:
    """The state's cached E and log λ (when present) are the values at its x, now."""
    torch.testing.assert_close(state.energy, energy(state.x).detach(), rtol=0, atol=1e-10)
    if LOG_PROB in state.extras:
        fresh = flow.log_prob(state.x).detach()
        torch.testing.assert_close(state.extras[LOG_PROB], fresh, rtol=0, atol=1e-10)


@attrs.define(kw_only=True)
class StaleInitIMH(FlowIMH):
    """Wrong: `init` keeps the cache a continued state brings (E and log λ not re-scored)."""

    def init_with_cost(self, x, energy, *, previous=None):
        state, cost = super().init_with_cost(x, energy, previous=previous)
        if previous is not None and LOG_PROB in previous.extras:
            state = attrs.evolve(state, energy=previous.energy, extras=dict(previous.extras))
        return state, cost


def stage_owned(state, stage: str) -> dict[str, torch.Tensor]:
    """What a Composite stage owns, without its prefix."""
    prefix = f"{stage}/"
    return {k[len(prefix) :]: v for k, v in state.owned.items() if k.startswith(prefix)}


def one_round(sampler, energy, x0: torch.Tensor, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return sampler.sample(energy, x0, 3, generator=generator)


@pytest.mark.parametrize("kernel", [FlowIMH, ISIR])
def test_caches_are_rescored_after_an_energy_update(kernel) -> None:
    flow = Affine(dim=1, loc=1.0, scale=3.0).freeze()
    energy = ParametricMixture()
    x0 = UNBALANCED.sample(100, torch.Generator().manual_seed(0))
    first = one_round(kernel(flow=flow), energy, x0)
    with torch.no_grad():
        energy.logits.copy_(torch.tensor([0.3, -0.7], dtype=F64))  # an energy step
    batch = ebmkit.InitBatch(x=first.x, state=first.state)
    state = kernel(flow=flow).init(batch.x, energy, previous=batch.state)
    assert_fresh(state, energy, flow)
    stale = StaleInitIMH(flow=flow).init(batch.x, energy, previous=batch.state)
    with pytest.raises(AssertionError):
        assert_fresh(stale, energy, flow)


def test_caches_are_rescored_after_a_flow_update() -> None:
    flow = ElementwiseAffine(event_shape=None, loc=1.0, scale=3.0, fit_on="samples")
    flow.double()
    x0 = UNBALANCED.sample(100, torch.Generator().manual_seed(0))
    sampler = FlowMCMC(flow=flow, local=MALA(step_size=0.1), local_steps=2)
    bank = Persistent(n_chains=100, start=_Fixed(x0), shuffle=False)
    batch = bank.sample(100)
    result = one_round(sampler, UNBALANCED.energy, batch)
    imh = one_round(FlowIMH(flow=flow), UNBALANCED.energy, x0)  # ends with the IMH cache
    before = {name: value.detach().clone() for name, value in flow.named_parameters()}
    losses = flow.learn(finished_round(1, batch, result))  # one Adam step of forward KL
    assert "forward_kl" in losses
    assert any(not torch.equal(before[n], p) for n, p in flow.named_parameters())
    bank.update(finished_round(1, batch, result))
    batch = bank.sample(100)
    state = sampler.init(batch.x, UNBALANCED.energy, previous=batch.state)
    assert_fresh(state, UNBALANCED.energy, flow)
    # the proposals' latents no longer reproduce x under the updated flow: all re-derived
    assert bool(state.owned[f"global/{LATENT}"].isnan().all())
    state = FlowIMH(flow=flow).init(imh.x, UNBALANCED.energy, previous=imh.state)
    assert_fresh(state, UNBALANCED.energy, flow)
    stale = StaleInitIMH(flow=flow).init(imh.x, UNBALANCED.energy, previous=imh.state)
    with pytest.raises(AssertionError):
        assert_fresh(stale, UNBALANCED.energy, flow)


@attrs.define
class _Fixed:
    x: torch.Tensor

    def sample(self, n: int) -> ebmkit.InitBatch:
        return ebmkit.InitBatch(x=self.x[:n].clone())

    def update(self, round) -> None:
        return None


def test_caches_are_dropped_or_rescored_after_a_local_move() -> None:
    flow = Affine(dim=1, loc=1.0, scale=3.0).freeze()
    x0 = UNBALANCED.sample(200, torch.Generator().manual_seed(0))
    sampler = FlowMCMC(flow=flow, local=MALA(step_size=0.1), local_steps=3)
    state = sampler.init(x0, UNBALANCED.energy)
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):  # each step ends with local moves
        state, _ = sampler.step(state, UNBALANCED.energy, generator=generator)
        assert_fresh(state, UNBALANCED.energy, flow)
        # and the global move that follows scores the moved chains afresh
        imh = FlowIMH(flow=flow)
        view = attrs.evolve(state, owned=stage_owned(state, "global"))
        moved, _ = imh.step(view, UNBALANCED.energy, generator=torch.Generator())
        assert_fresh(moved, UNBALANCED.energy, flow)
    # Power: a local kernel handing on the IMH cache after moving x leaves it stale
    stale = FlowMCMC(flow=flow, local=StaleCacheMALA(step_size=0.1), local_steps=3)
    state, _ = stale.step(
        stale.init(x0, UNBALANCED.energy), UNBALANCED.energy, generator=generator
    )
    with pytest.raises(AssertionError):
        assert_fresh(state, UNBALANCED.energy, flow)


# --------------------------------------------------------------------------------------
# Continued chains are bit-identical


def continuation_cases() -> list:
    nonlinear = SinhAffine.seeded(2, seed=2).freeze()
    mala = MALA(step_size=0.1, adapt_steps=25)
    samplers = {
        "imh-sinh": FlowIMH(flow=nonlinear),
        "isir-sinh": ISIR(flow=nonlinear, n_particles=3),
        "flow-mcmc-sinh": FlowMCMC(flow=nonlinear, local=mala, local_steps=2),
        "flow-mcmc-tilt-sinh": FlowMCMC(flow=nonlinear, local=mala, local_steps=2, tilt=True),
        "neutra-sinh": NeutraMCMC(flow=nonlinear, local=mala),
    }
    return [pytest.param(sampler, id=name) for name, sampler in samplers.items()]


@pytest.mark.parametrize("sampler", continuation_cases())
def test_a_chain_continued_through_a_persistent_bank_is_bit_identical(sampler) -> None:
    check_continuation(SamplerCase(name="continued", sampler=sampler, exact=True))


@attrs.define(kw_only=True)
class LatentDroppedIMH(FlowIMH):
    """Wrong: does not carry the proposal's latent, so a continued chain re-scores log λ(x)
    by a forward pass (equal to the proposal's value only up to rounding)."""

    def step(self, state, energy, *, generator=None, context=None):
        new_state, info = super().step(state, energy, generator=generator, context=context)
        unknown = torch.full_like(new_state.x, float("nan"))
        return attrs.evolve(new_state, owned={**new_state.owned, LATENT: unknown}), info


def test_continuation_check_sees_a_kernel_that_drops_the_latent() -> None:
    sampler = LatentDroppedIMH(flow=SinhAffine.seeded(2, seed=2).freeze())
    with pytest.raises(AssertionError, match="flow/log_prob"):
        check_continuation(SamplerCase(name="latent-dropped", sampler=sampler, exact=True))
