r"""Iterated sampling-importance-resampling (i-SIR) with a normalizing flow as the proposal."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import attrs
import torch
from torch import Tensor

from ebmkit import (
    ChainState,
    Energy,
    EvaluationCounts,
    StepContext,
    StepInfo,
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

__all__ = ["ISIR", "pick_by_weight"]


def pick_by_weight(log_weights: Tensor, generator: torch.Generator | None) -> Tensor:
    """One index per row, drawn with probability ∝ exp(log_weights) (the Gumbel-max trick).

    Arguments:
        log_weights: (B, N) unnormalised log-weights; NaN counts as −inf (never picked).
        generator: the random source.

    Returns:
        (B,) int64 indices.

    Example:
        >>> log_weights = torch.tensor([[0.0, -math.inf], [-math.inf, 0.0]])
        >>> pick_by_weight(log_weights, torch.Generator().manual_seed(0)).tolist()
        [0, 1]
    """
    log_weights = torch.where(torch.isnan(log_weights), -math.inf, log_weights)
    uniform = torch.rand(
        log_weights.shape, generator=generator, device=log_weights.device, dtype=torch.float64
    )
    gumbel = -torch.log(-torch.log(uniform))
    return torch.argmax(log_weights.to(torch.float64) + gumbel, dim=1)


def _take(candidates: list[Tensor], index: Tensor) -> Tensor:
    """Per chain b, candidates[index[b]][b]."""
    stacked = torch.stack(candidates, dim=1)
    rows = torch.arange(index.shape[0], device=index.device)
    return stacked[rows, index]


@attrs.define(kw_only=True)
class ISIR(IndependenceMove):
    """i-SIR: the current state and N − 1 flow proposals, one picked by importance weight.

    Each step, every chain draws N − 1 proposals x_j = T(z_j), z_j ~ N(0, I), keeps its
    current x as candidate 0, and moves to candidate j with probability w_j / Σ w, where

        w_j ∝ exp(−E(x_j)) / λ(x_j).

    Keeping the current state among the candidates is what makes the kernel leave exp(−E)
    invariant (with N = 2 it is a Barker-type independence move). E and log λ are cached as
    in `FlowIMH` (``state.energy``, ``extras["flow/log_prob"]``); ∇E is left None. The
    reported acceptance is 1 − w_0/Σw, the probability of leaving the current state. One
    step costs N − 1 energy-only evaluations and N − 1 flow passes, each on the chains'
    batch. On the tilted energy E − log λ of `FlowMCMC(tilt=True)` the weights are exp(−E).

    Arguments:
        flow: the proposal, an exact flow (``exact_log_prob`` True).
        n_particles: N ≥ 2, the candidates per chain (the current state included).
        n_steps: default number of steps for `sample`.

    References:
        Andrieu, Lee & Vihola (2018), Uniform ergodicity of the iterated conditional SMC and
        geometric ergodicity of particle Gibbs samplers, Bernoulli. Samsonov, Lagutin, Gabrié,
        Durmus, Naumov & Moulines (2022), Local-global MCMC kernels: the best of both worlds
        (Ex²MCMC), NeurIPS.

    Example:
        >>> from ebmkit.flows import ElementwiseAffine
        >>> flow = ElementwiseAffine(event_shape=None, loc=0.5, scale=1.5).freeze()
        >>> result = ISIR(flow=flow, n_particles=4).sample(
        ...     lambda x: 0.5 * x.square().sum(1), torch.zeros(4, 2), 10)
        >>> result.n_grad_evals, result.n_energy_evals, result.n_flow_evals
        (0, 31, 31)
    """

    flow: object = attrs.field(validator=flow_validator("samplers.ISIR"))
    n_particles: int = attrs.field(
        default=4, validator=[attrs.validators.instance_of(int), attrs.validators.ge(2)]
    )
    n_steps: int = attrs.field(default=100, validator=attrs.validators.ge(0))

    component = "samplers.ISIR"

    @classmethod
    def testing_cases(cls) -> list[SamplerCase]:
        """One exact case: N = 4 with the off-centre elementwise flow 0.5 + 1.5·z."""
        from ebmkit.testing import SamplerCase

        sampler = cls(flow=testing_flow(), n_particles=4)
        return [SamplerCase(name="off-centre-4", sampler=sampler, exact=True)]

    def step(
        self,
        state: ChainState,
        energy: Energy,
        *,
        generator: torch.Generator | None = None,
        context: StepContext | None = None,
    ) -> tuple[ChainState, StepInfo]:
        """One i-SIR move of every chain: N − 1 proposals, one candidate picked by weight."""
        base, tilted = split_tilt(energy, self.flow)
        value, log_prob, latent, cost = cached_scores(
            state, base, tilted, self.flow, self.component
        )
        x = state.x
        with graph_switch():  # log w = −U − log λ (π ∝ exp(−U)); = −E when U = E − log λ
            current_weight = -(value + log_prob)
        points, latents, log_probs = [x], [latent], [log_prob]
        values, log_weights = [value], [current_weight]
        for _ in range(self.n_particles - 1):
            proposal, z, proposal_log_prob = propose(self.flow, x, generator, self.component)
            proposal_energy = energy_only(base, proposal)
            with graph_switch():
                if tilted:
                    values.append(proposal_energy - proposal_log_prob)
                    log_weights.append(-proposal_energy)
                else:
                    values.append(proposal_energy)
                    log_weights.append(-(proposal_energy + proposal_log_prob))
            points.append(proposal)
            latents.append(z.to(x.dtype))
            log_probs.append(proposal_log_prob)
        cost = cost + EvaluationCounts(
            n_energy_evals=self.n_particles - 1, n_flow_evals=self.n_particles - 1
        )
        stacked_weights = torch.stack(log_weights, dim=1).detach()
        index = pick_by_weight(stacked_weights, generator)
        normalised = torch.softmax(
            torch.where(stacked_weights.isnan(), -math.inf, stacked_weights), dim=1
        )
        moved = index != 0
        new_state = ChainState(
            x=_take(points, index),
            energy=_take(values, index),
            grad=None,
            step_size=state.step_size,
            extras={LOG_PROB: _take(log_probs, index)},
            owned={**state.owned, LATENT: _take(latents, index)},
        )
        # a chain outside λ's support (log λ(x) = −∞, untilted) has weight +∞: it stays
        moving = torch.where(stacked_weights[:, 0].isposinf(), 0.0, 1 - normalised[:, 0])
        info = self.move_info(moving.to(x.dtype), moved, cost, x)
        return new_state, info
