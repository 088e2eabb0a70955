r"""Metropolis-adjusted Langevin (MALA): the Langevin proposal with an MH correction."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
import torch
from torch import Tensor

from ebmkit.autograd import energy_and_grad
from ebmkit.protocols import Energy
from ebmkit.records import LONE_STEP, ChainState, StepContext, StepInfo
from ebmkit.samplers.base import MarkovKernel, kept_from_previous
from ebmkit.samplers.compiled import CompiledGradient
from ebmkit.samplers.moves import (
    batch_view,
    clip_gradient,
    gaussian_noise,
    metropolis_accept,
    select_chains,
)

if TYPE_CHECKING:
    from ebmkit.testing import SamplerCase

__all__ = ["MALA"]

AGE = "age"
"""`owned` key of the per-chain count of adaptive steps taken (only when adapting)."""


@attrs.define(kw_only=True)
class MALA(MarkovKernel):
    """MALA: propose y = x − h·∇E(x) + σξ, accept with min(1, π(y)q(x|y) / π(x)q(y|x)).

    Exact for any step size: the chain leaves exp(−E) invariant. Per-chain acceptance is
    reported. With `adapt_steps > 0`, each chain's step size follows the Robbins–Monro rule
    log h ← log h + adaptation_rate·(α − target_acceptance) during the first `adapt_steps`
    steps of the chain's life (burn-in; counted per chain in ``owned["age"]``, so a
    persistent chain continued over several rounds adapts once, as one long run would),
    then stays fixed so the chain is exact. Adaptation acts only when the step context
    says it is on (`sample(adapt=True)`, the default, or a composing kernel's context).

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
        compile: compute E and ∇E with `torch.compile` (compiled once per energy, chain
            shape, dtype and device; the first call takes seconds to tens of seconds on a
            CPU). Same random numbers, samples equal to eager within float rounding (an MH
            decision at a knife's edge may flip); where compiling cannot work it runs
            eagerly after one warning. A setting, not state.

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
    compile: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    _compiled: CompiledGradient | None = attrs.field(
        init=False, default=None, repr=False, eq=False
    )

    def __attrs_post_init__(self) -> None:
        if self.adapt_steps and self.noise_scale is not None:
            raise ValueError(
                f"MALA adapts the step size with noise_scale = sqrt(2·step_size), but "
                f"noise_scale={self.noise_scale} was set; drop noise_scale or set adapt_steps=0"
            )

    @classmethod
    def testing_cases(cls) -> list[SamplerCase]:
        """Exact cases for `ebmkit.testing`: plain, adapting for 15 steps (so N + N = 2N
        continuation with N = 10 carries adapted step sizes and ages), and a clipped drift."""
        from ebmkit.testing import SamplerCase

        return [
            SamplerCase(name="mala", sampler=MALA(step_size=0.2), exact=True),
            SamplerCase(name="adaptive", sampler=MALA(step_size=0.1, adapt_steps=15), exact=True),
            SamplerCase(name="grad-clip", sampler=MALA(step_size=0.2, grad_clip=2.0), exact=True),
        ]

    def init(self, x: Tensor, energy: Energy, *, previous: ChainState | None = None) -> ChainState:
        """Chains at `x` with E, ∇E and the per-chain step size cached.

        A continued chain (`previous`) keeps its adapted step size and age; a NaN step size
        (a persistent bank's "not set yet") becomes the configured one.
        """
        step_size, owned = kept_from_previous(x, previous)
        if step_size is None:
            step_size = self._initial_step_sizes(x)
        elif previous is not None:  # NaN marks a chain whose step size is not set yet
            step_size = torch.where(step_size.isnan(), self.step_size, step_size)
        if self.adapt_steps and AGE not in owned:
            owned[AGE] = torch.zeros(x.shape[:1], device=x.device, dtype=torch.int64)
        value, grad = self._energy_and_grad(energy, x)
        return ChainState(x=x, energy=value, grad=grad, step_size=step_size, owned=owned)

    def _energy_and_grad(self, energy: Energy, x: Tensor) -> tuple[Tensor, Tensor]:
        """E and ∇E at x: compiled when `compile` is set, else `energy_and_grad`."""
        if not self.compile:
            return energy_and_grad(energy, x)
        if self._compiled is None:
            self._compiled = CompiledGradient("samplers.MALA")
        return self._compiled(energy, x)

    def _initial_step_sizes(self, x: Tensor) -> Tensor:
        return torch.full(x.shape[:1], self.step_size, device=x.device, dtype=x.dtype)

    def _noise(self, step_size: Tensor) -> Tensor:
        if self.noise_scale is not None:
            return torch.full_like(step_size, self.noise_scale)
        return torch.sqrt(2 * step_size)

    def _drift_mean(self, x: Tensor, grad: Tensor, step_size: Tensor) -> Tensor:
        return x - batch_view(step_size, x) * clip_gradient(grad, self.grad_clip)

    def step(
        self,
        state: ChainState,
        energy: Energy,
        *,
        generator: torch.Generator | None = None,
        context: StepContext | None = None,
    ) -> tuple[ChainState, StepInfo]:
        """One MALA transition; adapts the step sizes of chains still in burn-in if allowed.

        A state without ∇E (the final point of an unadjusted run, or one an independence
        move left with E only) is re-evaluated first: one more gradient, counted.
        """
        context = LONE_STEP if context is None else context
        n_grad_evals = 1
        if state.grad is None:  # evaluate E and ∇E here (E alone may be set: it is redone)
            state, n_grad_evals = self.init(state.x, energy, previous=state), 2
        elif state.step_size is None:  # a state another kernel made: MALA's own parts start
            state = attrs.evolve(state, step_size=self._initial_step_sizes(state.x))
        x, step_size, owned = state.x, state.step_size, state.owned
        noise = batch_view(self._noise(step_size), x)
        forward_mean = self._drift_mean(x, state.grad, step_size)
        proposal = forward_mean + noise * gaussian_noise(x, generator)
        proposal_energy, proposal_grad = self._energy_and_grad(energy, proposal)
        reverse_mean = self._drift_mean(proposal, proposal_grad, step_size)
        variance = noise.square()
        # The Gaussian normalisers are equal both ways (same σ per chain), so they cancel.
        log_forward = -((proposal - forward_mean).square() / (2 * variance)).flatten(1).sum(1)
        log_reverse = -((x - reverse_mean).square() / (2 * variance)).flatten(1).sum(1)
        log_ratio = state.energy - proposal_energy + log_reverse - log_forward
        accepted, acceptance_prob = metropolis_accept(log_ratio, generator)
        if self.adapt_steps and context.adapt:
            step_size, owned = self._adapt(step_size, owned, acceptance_prob)
        new_state = ChainState(
            x=select_chains(accepted, proposal, x),
            energy=torch.where(accepted, proposal_energy, state.energy),
            grad=select_chains(accepted, proposal_grad, state.grad),
            step_size=step_size,
            owned=owned,
        )
        info = StepInfo(
            acceptance_prob=acceptance_prob,
            accepted=accepted,
            step_size=step_size,
            n_grad_evals=n_grad_evals,
        )
        return new_state, info

    def _adapt(
        self, step_size: Tensor, owned: dict[str, Tensor], acceptance_prob: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Robbins–Monro on log h for the chains younger than `adapt_steps`; ages + 1."""
        age = owned.get(AGE)
        if age is None:  # a state started by another kernel: its chains are new to MALA
            age = torch.zeros_like(step_size, dtype=torch.int64)
        adapted = torch.exp(
            torch.log(step_size)
            + self.adaptation_rate * (acceptance_prob - self.target_acceptance)
        )
        step_size = torch.where(age < self.adapt_steps, adapted, step_size)
        return step_size, {**owned, AGE: age + 1}
