r"""Independent Metropolis–Hastings with a flow as the proposal (flow-MCMC's global move)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import attrs
import torch

from ebmkit import (
    ChainState,
    Energy,
    EvaluationCounts,
    StepContext,
    StepInfo,
    metropolis_accept,
    select_chains,
)
from ebmkit_flow_mcmc.densities import (
    LATENT,
    LOG_PROB,
    cached_scores,
    energy_only,
    flow_validator,
    graph_switch,
    propose,
    split_tilt,
    testing_flow,
)
from ebmkit_flow_mcmc.independence import IndependenceMove

if TYPE_CHECKING:
    from ebmkit.testing import SamplerCase

__all__ = ["FlowIMH"]


@attrs.define(kw_only=True)
class FlowIMH(IndependenceMove):
    """Independent Metropolis–Hastings: propose from the flow, accept by the exact MH ratio.

    Each step, every chain draws z ~ N(0, I) from the generator, proposes x' = T(z) with
    log λ(x') = log N(z) − log|det ∂T/∂z|, and accepts with probability min(1, A),

        log A = [−E(x') − log λ(x')] − [−E(x) − log λ(x)],

    which leaves exp(−E) invariant for any exact flow (a flow equal to the target accepts
    everything). E(x) and log λ(x) are cached (``state.energy`` and
    ``extras["flow/log_prob"]``), made by `init`, so a persistent chain is re-scored after
    every energy or flow update; after a move they hold the accepted values. ∇E is never
    needed: the state leaves ``grad`` None (a following gradient kernel evaluates it).
    On the tilted energy E − log λ of `FlowMCMC(tilt=True)` with the same flow, λ cancels
    and the ratio is computed as E(x) − E(x').

    One step costs one energy-only evaluation and one flow pass (plus a flow pass when the
    cache must be recomputed after another kernel moved x). A non-finite proposal stops the
    run with an error naming the flow (one host synchronisation per step).

    Arguments:
        flow: the proposal, an exact flow (``exact_log_prob`` True), referenced, never
            trained here (the trainer trains it as a Learnable).
        n_steps: default number of steps for `sample`.

    References:
        Gabrié, Rotskoff & Vanden-Eijnden (2022), Adaptive Monte Carlo augmented with
        normalizing flows, PNAS. Grenioux, Moulines & Gabrié (2023), Balanced training of
        energy-based models with adaptive flow sampling, arXiv:2306.00684.

    Example:
        >>> from ebmkit.flows import ElementwiseAffine
        >>> flow = ElementwiseAffine(event_shape=None, loc=0.5, scale=1.5).freeze()
        >>> result = FlowIMH(flow=flow).sample(lambda x: 0.5 * x.square().sum(1),
        ...                                    torch.zeros(4, 2), 10)
        >>> result.n_grad_evals, result.n_energy_evals, result.n_flow_evals
        (0, 11, 11)
    """

    flow: object = attrs.field(validator=flow_validator("samplers.FlowIMH"))
    n_steps: int = attrs.field(default=100, validator=attrs.validators.ge(0))

    component = "samplers.FlowIMH"

    @classmethod
    def testing_cases(cls) -> list[SamplerCase]:
        """One exact case: the off-centre elementwise flow 0.5 + 1.5·z (`testing_flow`)."""
        from ebmkit.testing import SamplerCase

        return [SamplerCase(name="off-centre", sampler=cls(flow=testing_flow()), exact=True)]

    def step(
        self,
        state: ChainState,
        energy: Energy,
        *,
        generator: torch.Generator | None = None,
        context: StepContext | None = None,
    ) -> tuple[ChainState, StepInfo]:
        """One independent MH move of every chain."""
        base, tilted = split_tilt(energy, self.flow)
        value, log_prob, latent, cost = cached_scores(
            state, base, tilted, self.flow, self.component
        )
        x = state.x
        proposal, z, proposal_log_prob = propose(self.flow, x, generator, self.component)
        proposal_energy = energy_only(base, proposal)
        with graph_switch():
            if tilted:  # value = E − log λ: the target's λ cancels the proposal's
                log_ratio = (value + log_prob) - proposal_energy
                # outside λ's support the tilted target is 0: any proposal is accepted
                log_ratio = torch.where(torch.isneginf(log_prob), math.inf, log_ratio)
                proposal_value = proposal_energy - proposal_log_prob
            else:
                log_ratio = (value + log_prob) - (proposal_energy + proposal_log_prob)
                proposal_value = proposal_energy
        accepted, acceptance_prob = metropolis_accept(log_ratio, generator)
        cost = cost + EvaluationCounts(n_energy_evals=1, n_flow_evals=1)
        new_state = ChainState(
            x=select_chains(accepted, proposal, x),
            energy=torch.where(accepted, proposal_value, value),
            grad=None,
            step_size=state.step_size,
            extras={LOG_PROB: torch.where(accepted, proposal_log_prob, log_prob)},
            owned={**state.owned, LATENT: select_chains(accepted, z.to(x.dtype), latent)},
        )
        info = self.move_info(acceptance_prob, accepted, cost, x)
        return new_state, info
