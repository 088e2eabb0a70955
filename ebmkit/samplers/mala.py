r"""Metropolis-adjusted Langevin (MALA): the Langevin proposal with an MH correction."""

from __future__ import annotations

import attrs
import torch
from torch import Tensor

from ebmkit.autograd import energy_and_grad
from ebmkit.protocols import Energy
from ebmkit.records import ChainState, StepInfo
from ebmkit.samplers.base import MarkovKernel
from ebmkit.samplers.moves import (
    batch_view,
    clip_gradient,
    gaussian_noise,
    metropolis_accept,
    select_chains,
)

__all__ = ["MALA", "MALAState"]

MALAState = ChainState


@attrs.define(kw_only=True)
class MALA(MarkovKernel):
    """MALA: propose y = x − h·∇E(x) + σξ, accept with min(1, π(y)q(x|y) / π(x)q(y|x)).

    Exact for any step size: the chain leaves exp(−E) invariant. Per-chain acceptance is
    reported. With `adapt_steps > 0`, each chain's step size follows the Robbins–Monro rule
    log h ← log h + adaptation_rate·(α − target_acceptance) during the first `adapt_steps`
    steps of every `sample` call only (burn-in), then stays fixed so the chain is exact.

    Arguments:
        step_size: h > 0 (the starting value when adapting).
        noise_scale: σ ≥ 0; default sqrt(2h) (the Langevin diffusion). Any σ > 0 gives an
            exact kernel; with adaptation σ must stay sqrt(2h), so it cannot be set.
        n_steps: default number of steps for `sample`.
        grad_clip: clamp each drift component to [−grad_clip, grad_clip]; applied to both
            directions of the MH ratio, so the kernel stays exact.
        adapt_steps: number of burn-in steps that adapt the step size.
        target_acceptance: the acceptance the adaptation aims at (0.574 is optimal for MALA
            in high dimension, Roberts & Rosenthal 1998).
        adaptation_rate: the Robbins–Monro gain on log h.

    References:
        Roberts & Tweedie (1996), Exponential convergence of Langevin distributions and
        their discrete approximations.

    Example:
        >>> sampler = MALA(step_size=0.1, n_steps=10)
        >>> result = sampler.sample(lambda x: 0.5 * x.square().sum(1), torch.zeros(4, 2))
        >>> result.acceptance_rate.shape
        torch.Size([4])
    """

    step_size: float = attrs.field(converter=float, validator=attrs.validators.gt(0.0))
    noise_scale: float | None = attrs.field(
        default=None,
        converter=attrs.converters.optional(float),
        validator=attrs.validators.optional(attrs.validators.gt(0.0)),
    )
    n_steps: int = attrs.field(default=100, validator=attrs.validators.ge(0))
    grad_clip: float | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.gt(0.0))
    )
    adapt_steps: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    target_acceptance: float = attrs.field(
        default=0.574, validator=[attrs.validators.gt(0.0), attrs.validators.lt(1.0)]
    )
    adaptation_rate: float = attrs.field(default=0.05, validator=attrs.validators.gt(0.0))

    def __attrs_post_init__(self) -> None:
        if self.adapt_steps and self.noise_scale is not None:
            raise ValueError(
                f"MALA adapts the step size with noise_scale = sqrt(2·step_size), but "
                f"noise_scale={self.noise_scale} was set; drop noise_scale or set adapt_steps=0"
            )

    def init(self, x: Tensor, energy: Energy) -> ChainState:
        """Chains at `x` with E, ∇E and the per-chain step size cached."""
        value, grad = energy_and_grad(energy, x)
        step_size = torch.full(x.shape[:1], self.step_size, device=x.device, dtype=x.dtype)
        return ChainState(x=x, energy=value, grad=grad, step_size=step_size)

    def _noise(self, step_size: Tensor) -> Tensor:
        if self.noise_scale is not None:
            return torch.full_like(step_size, self.noise_scale)
        return torch.sqrt(2 * step_size)

    def _drift_mean(self, x: Tensor, grad: Tensor, step_size: Tensor) -> Tensor:
        return x - batch_view(step_size, x) * clip_gradient(grad, self.grad_clip)

    def _transition(
        self,
        state: ChainState,
        energy: Energy,
        index: int,
        n_steps: int,
        generator: torch.Generator | None,
        *,
        final: bool,
    ) -> tuple[ChainState, StepInfo]:
        x, step_size = state.x, state.step_size
        noise = batch_view(self._noise(step_size), x)
        forward_mean = self._drift_mean(x, state.grad, step_size)
        proposal = forward_mean + noise * gaussian_noise(x, generator)
        proposal_energy, proposal_grad = energy_and_grad(energy, proposal)
        reverse_mean = self._drift_mean(proposal, proposal_grad, step_size)
        variance = noise.square()
        # The Gaussian normalisers are equal both ways (same σ per chain), so they cancel.
        log_forward = -((proposal - forward_mean).square() / (2 * variance)).flatten(1).sum(1)
        log_reverse = -((x - reverse_mean).square() / (2 * variance)).flatten(1).sum(1)
        log_ratio = state.energy - proposal_energy + log_reverse - log_forward
        accepted, acceptance_prob = metropolis_accept(log_ratio, generator)
        if 0 <= index < self.adapt_steps:
            step_size = torch.exp(
                torch.log(step_size)
                + self.adaptation_rate * (acceptance_prob - self.target_acceptance)
            )
        new_state = ChainState(
            x=select_chains(accepted, proposal, x),
            energy=torch.where(accepted, proposal_energy, state.energy),
            grad=select_chains(accepted, proposal_grad, state.grad),
            step_size=step_size,
        )
        info = StepInfo(
            acceptance_prob=acceptance_prob,
            accepted=accepted,
            step_size=step_size,
            n_grad_evals=1,
        )
        return new_state, info
