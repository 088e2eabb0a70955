r"""Unadjusted Langevin (ULA / SGLD-style): x ← x − h∇E(x) + σξ."""

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
from ebmkit.samplers.moves import clip_gradient, gaussian_noise, ula_noise_scale
from ebmkit.samplers.validators import check_clamp

if TYPE_CHECKING:
    from ebmkit.testing import SamplerCase

__all__ = ["Langevin"]


@attrs.define(kw_only=True)
class Langevin(MarkovKernel):
    """Unadjusted Langevin: x ← x − step_size·∇E(x) + noise_scale·ξ, ξ ~ N(0, I).

    With `noise_scale = sqrt(2·step_size)` (the default) this is ULA, exact as step_size → 0
    with an O(step_size) bias; research scripts set the noise apart (SGLD-style, e.g.
    step_size 1, noise 0.01) to trade exactness for short-run speed.

    Arguments:
        step_size: h > 0.
        noise_scale: σ ≥ 0; default sqrt(2h).
        n_steps: default number of steps for `sample`.
        grad_clip: clamp each gradient component to [−grad_clip, grad_clip] (None: off).
        clamp: keep x inside (low, high) after every move, e.g. (−1, 1) for images.
        compile: compute E and ∇E with `torch.compile` (compiled once per energy, chain
            shape, dtype and device; the first call takes seconds to tens of seconds on a
            CPU). Same random numbers, samples equal to eager within float rounding; where
            compiling cannot work it runs eagerly after one warning. A setting, not state.

    References:
        Roberts & Tweedie (1996), Exponential convergence of Langevin distributions.
        Welling & Teh (2011), Bayesian learning via stochastic gradient Langevin dynamics.

    Example:
        >>> sampler = Langevin(step_size=0.01, n_steps=10)
        >>> sampler.sample(lambda x: 0.5 * x.square().sum(1), torch.zeros(4, 2)).x.shape
        torch.Size([4, 2])
    """

    step_size: float = attrs.field(converter=float, validator=attrs.validators.gt(0.0))
    noise_scale: float | None = attrs.field(
        default=None,
        converter=attrs.converters.optional(float),
        validator=attrs.validators.optional(attrs.validators.ge(0.0)),
    )
    n_steps: int = attrs.field(default=100, validator=attrs.validators.ge(0))
    grad_clip: float | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.gt(0.0))
    )
    clamp: tuple[float, float] | None = attrs.field(
        default=None, converter=attrs.converters.optional(tuple), validator=check_clamp
    )
    compile: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    _compiled: CompiledGradient | None = attrs.field(
        init=False, default=None, repr=False, eq=False
    )

    def __attrs_post_init__(self) -> None:
        if self.noise_scale is None:
            self.noise_scale = ula_noise_scale(self.step_size)

    @classmethod
    def testing_cases(cls) -> list[SamplerCase]:
        """ULA at step 0.1 for `ebmkit.testing`: held to its exact biased law on a Gaussian,
        and to the mixture's weights within 0.03 (its O(h) bias there is about 0.02)."""
        from ebmkit.testing import LangevinMove, SamplerCase

        ula = SamplerCase(
            name="ula",
            sampler=Langevin(step_size=0.1),
            exact=False,
            langevin_law=(LangevinMove(step_size=0.1),),
            bias_tolerance=0.03,
        )
        return [ula]

    def init(self, x: Tensor, energy: Energy, *, previous: ChainState | None = None) -> ChainState:
        """Chains at `x` with E and ∇E cached; what other kernels own in `previous` is kept."""
        step_size, owned = kept_from_previous(x, previous)
        value, grad = self._energy_and_grad(energy, x)
        return ChainState(x=x, energy=value, grad=grad, step_size=step_size, owned=owned)

    def _energy_and_grad(self, energy: Energy, x: Tensor) -> tuple[Tensor, Tensor]:
        """E and ∇E at x: compiled when `compile` is set, else `energy_and_grad`."""
        if not self.compile:
            return energy_and_grad(energy, x)
        if self._compiled is None:
            self._compiled = CompiledGradient("samplers.Langevin")
        return self._compiled(energy, x)

    def move(self, state: ChainState, generator: torch.Generator | None = None) -> Tensor:
        """The Langevin proposal x − h·∇E(x) + σξ (clipped / clamped as configured)."""
        x = state.x
        drift = clip_gradient(state.grad, self.grad_clip)
        proposal = x - self.step_size * drift + self.noise_scale * gaussian_noise(x, generator)
        if self.clamp is not None:
            proposal = proposal.clamp(*self.clamp)
        return proposal

    def step(
        self,
        state: ChainState,
        energy: Energy,
        *,
        generator: torch.Generator | None = None,
        context: StepContext | None = None,
    ) -> tuple[ChainState, StepInfo]:
        """One ULA move; on the run's last step the gradient at the final point is skipped.

        The new state carries no extras (x moved, so every cache is stale) but keeps what
        other kernels own (`step_size`, `owned`), so Langevin composes with adaptive kernels.
        A state without ∇E (E alone may be set, e.g. after an independence move) is
        re-evaluated first: one more gradient, counted.
        """
        context = LONE_STEP if context is None else context
        n_grad_evals = 0
        if state.grad is None:  # evaluate E and ∇E here (E alone may be set: it is redone)
            state, n_grad_evals = self.init(state.x, energy, previous=state), 1
        step_size, owned = state.step_size, state.owned
        x = self.move(state, generator)
        del state  # free the old E/∇E before the next gradient (see MarkovKernel.step)
        if context.last:  # nothing needs ∇E at the last point: skip that gradient evaluation
            new_state = ChainState(x=x, energy=None, grad=None, step_size=step_size, owned=owned)
        else:
            value, grad = self._energy_and_grad(energy, x)
            new_state = ChainState(x=x, energy=value, grad=grad, step_size=step_size, owned=owned)
            n_grad_evals += 1
        info = StepInfo(
            acceptance_prob=None,
            accepted=None,
            step_size=torch.scalar_tensor(self.step_size),
            n_grad_evals=n_grad_evals,
        )
        return new_state, info
