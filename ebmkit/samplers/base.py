r"""The chain loop every kernel shares: `sample` runs `init` then `n_steps` transitions."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ebmkit.protocols import Energy
from ebmkit.records import ChainState, SampleResult, StepInfo

__all__ = ["MarkovKernel"]


class MarkovKernel:
    """Base of the built-in samplers: subclasses give `init` and `_transition`.

    The loop keeps every per-chain statistic as a tensor (no `.item()`, no host sync) and
    never keeps an autograd graph from one step to the next.
    """

    n_steps: int
    step_size: float

    def init(self, x: Tensor, energy: Energy) -> ChainState:
        raise NotImplementedError

    def scale_step_size(self, factor: float) -> None:
        """Step size h ← factor·h and noise σ ← sqrt(factor)·σ (when set apart from h).

        σ²/(2h), the temperature the chains sample at, stays as configured: ULA's default
        σ = sqrt(2h) stays exact, an SGLD-style (h, σ) pair keeps its ratio.
        """
        if not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"a step-size factor must be finite and > 0, got {factor}")
        self.step_size = self.step_size * factor
        if getattr(self, "noise_scale", None) is not None:
            self.noise_scale = self.noise_scale * math.sqrt(factor)

    def step(
        self, state: ChainState, energy: Energy, *, generator: torch.Generator | None = None
    ) -> tuple[ChainState, StepInfo]:
        """One transition of every chain (index −1: outside `sample`'s burn-in schedule)."""
        return self._transition(state, energy, -1, 0, generator, final=False)

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
        """Transition number `index` of `n_steps` in a `sample` run, or −1 for a lone `step`.

        `final` allows leaving E/∇E unevaluated at the last point (nothing needs them).
        Inside `sample` the kernel holds the only reference to `state`, so it may drop it
        (``del state``) once the proposal is made, freeing the old ∇E before the next one.
        """
        raise NotImplementedError

    def sample(
        self,
        energy: Energy,
        x0: Tensor,
        n_steps: int | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> SampleResult:
        """Run `n_steps` (default `self.n_steps`) transitions of every chain from `x0`.

        Arguments:
            energy: maps (B, ...) to (B,).
            x0: starting points (B, ...), floating point.
            n_steps: number of transitions; 0 returns the start.
            generator: random source (default: the global torch RNG).

        Returns:
            SampleResult with the final x (detached), the last state, per-chain acceptance
            rate (MH kernels), gradient evaluations and the energy trace.
        """
        n_steps = self.n_steps if n_steps is None else n_steps
        if n_steps < 0:
            raise ValueError(f"n_steps must be >= 0, got {n_steps}")
        if not x0.is_floating_point():
            raise TypeError(f"chains must start from a floating-point tensor, got {x0.dtype}")
        state = self.init(x0.detach(), energy)
        n_grad_evals = 1
        acceptance_sum: Tensor | None = None
        step_size = (
            state.step_size
            if state.step_size is not None
            else torch.as_tensor(getattr(self, "step_size", float("nan")))
        )
        # The loop hands each state over to `_transition` (popped from `current`, so no
        # reference stays here): a kernel that no longer needs the old E/∇E can free them
        # before it evaluates the next gradient, as a hand-written loop does.
        # The trace is written into one tensor: a small tensor kept per step would pin heap
        # blocks between the big activations and make the allocator return/refault pages.
        energy_trace = state.energy.new_empty(n_steps)
        current = [state]
        del state
        for index in range(n_steps):
            torch.sum(current[0].energy, 0, out=energy_trace[index])
            transition = self._transition(
                current.pop(), energy, index, n_steps, generator, final=index == n_steps - 1
            )
            current.append(transition[0])
            info = transition[1]
            del transition
            n_grad_evals += info.n_grad_evals
            step_size = info.step_size
            if info.acceptance_prob is not None:
                acceptance_sum = (
                    info.acceptance_prob
                    if acceptance_sum is None
                    else acceptance_sum + info.acceptance_prob
                )
        (state,) = current
        energy_trace /= state.x.shape[0]  # sums to means, once
        return SampleResult(
            x=state.x.detach(),
            state=state,
            acceptance_rate=None if acceptance_sum is None else acceptance_sum / n_steps,
            n_grad_evals=n_grad_evals,
            energy_trace=energy_trace,
            step_size=step_size,
        )
