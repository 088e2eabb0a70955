r"""Plain records passed between components: chain states, step context and diagnostics, rounds."""

from __future__ import annotations

from typing import Any

import attrs
import torch
from torch import Tensor

__all__ = ["ChainState", "InitBatch", "Round", "SampleResult", "StepContext", "StepInfo"]


def _moved(tensors: dict[str, Tensor], device: torch.device | str) -> dict[str, Tensor]:
    return {name: value.to(device) for name, value in tensors.items()}


@attrs.frozen(eq=False, kw_only=True)
class ChainState:
    """The state of a batch of Markov chains, caching E and ∇E at `x` so kernels never recompute.

    Two kinds of per-chain data ride along, and the difference matters when kernels compose
    or chains persist across rounds:

    - `extras` are *caches*: functions of `x` and of the energy or a learned map (STANLEY's
      Γ(x), a flow's log-density at x). A kernel that moves `x` drops every extra it does not
      recompute, and `init(x, energy, previous=...)` recomputes them from scratch.
    - `step_size` and `owned` belong to the *kernel*: adapted per-chain step sizes, a
      chain's age. They survive moves and are what a persistent chain carries from one
      round to the next.

    A coordinate that is a function of `x` and a learned map (a dual point y = ∇G(x), a flow
    latent z = T⁻¹(x)) is not state that persists as is: the map changes between rounds, so
    `init` re-derives it under the current map. Keep it as a cache in `extras`; or, where a
    bit-identical continuation needs it carried, in `owned`, re-derived by `init` whenever
    the map no longer reproduces `x` (T(z) ≠ x).

    Arguments:
        x: current positions, shape (B, ...).
        energy: E(x), shape (B,); None when not evaluated yet (the last state of an unadjusted
            run, which needs no gradient: `init(previous=...)` evaluates it when the chain
            continues).
        grad: ∇ₓE(x), shape of `x`; None when not evaluated: always when `energy` is None,
            and possibly with `energy` set, after a kernel that moves without it (an
            independence MH move scores E alone). A kernel that needs ∇E and finds None
            evaluates it itself and counts that evaluation in its StepInfo.
        step_size: per-chain step sizes (B,) when a kernel adapts them, else None.
        extras: caches at `x` (dropped when `x` moves unless recomputed).
        owned: per-chain tensors (B, ...) the kernel owns and carries across moves and rounds.
    """

    x: Tensor
    energy: Tensor | None
    grad: Tensor | None
    step_size: Tensor | None = None
    extras: dict[str, Tensor] = attrs.field(factory=dict)
    owned: dict[str, Tensor] = attrs.field(factory=dict)

    @property
    def batch_size(self) -> int:
        """The number of chains B."""
        return self.x.shape[0]

    def to(self, device: torch.device | str) -> ChainState:
        """The same state with every tensor on `device`."""

        def move(value: Tensor | None) -> Tensor | None:
            return None if value is None else value.to(device)

        return ChainState(
            x=self.x.to(device),
            energy=move(self.energy),
            grad=move(self.grad),
            step_size=move(self.step_size),
            extras=_moved(self.extras, device),
            owned=_moved(self.owned, device),
        )


@attrs.frozen(eq=False, kw_only=True)
class StepContext:
    """Where a transition sits in its run, so a kernel called by another behaves as in `sample`.

    Arguments:
        index: 0-based step number within the run; −1 for a lone `step` call.
        n_steps: the run's total number of steps; 0 when unknown.
        last: this is the run's last step (nothing after it needs ∇E at the final point).
            A kernel composing stages passes ``last=False`` to every stage but the final one.
        adapt: adaptation is on (e.g. MALA's Robbins–Monro step-size rule may act).
    """

    index: int = -1
    n_steps: int = 0
    last: bool = False
    adapt: bool = False


LONE_STEP = StepContext()
"""The context of a `step` call made outside any run: no adaptation, not a last step."""


@attrs.frozen(eq=False, kw_only=True)
class StepInfo:
    """Diagnostics of one transition; never fed back into the chain.

    Arguments:
        acceptance_prob: Metropolis–Hastings acceptance probabilities (B,), None if unadjusted.
        accepted: which chains moved (B,) bool, None if unadjusted.
        step_size: the step size used (scalar or (B,) tensor).
        n_grad_evals: gradient evaluations (E with ∇E, one batch each) this step cost,
            including one the kernel made because the state it got had ∇E None.
        n_energy_evals: energy-only evaluations (no gradient) this step cost, e.g. an
            independence MH move scoring its proposal.
        n_flow_evals: flow passes (forward or inverse, one batch each) this step cost.
            `MarkovKernel.sample` adds the three counts over the steps, `init` included.
        stats: further named diagnostics, scalar or (B,) tensors (e.g. ``global/acceptance``,
            ``local/acceptance``, ``solve/residual``); `sample` averages each over the run.
    """

    acceptance_prob: Tensor | None
    accepted: Tensor | None
    step_size: Tensor
    n_grad_evals: int = 1
    n_energy_evals: int = 0
    n_flow_evals: int = 0
    stats: dict[str, Tensor] = attrs.field(factory=dict)

    def named_stats(self) -> dict[str, Tensor]:
        """Every diagnostic by name: ``acceptance`` (MH kernels), ``step_size`` and `stats`.

        What a kernel composing stages reports for each stage, under the stage's prefix.
        """
        named = {"step_size": self.step_size}
        if self.acceptance_prob is not None:
            named["acceptance"] = self.acceptance_prob
        named.update(self.stats)
        return named


@attrs.frozen(eq=False, kw_only=True)
class SampleResult:
    """What `Sampler.sample` returns: the final states and per-run statistics.

    Arguments:
        x: final positions (B, ...), detached (unless the run was differentiable).
        state: the last ChainState (to continue the chains).
        acceptance_rate: per-chain mean acceptance probability (B,), None if unadjusted.
        n_grad_evals: gradient evaluations spent over the run, `init` included (its cost is
            the kernel's `init_cost`: one gradient for a kernel that evaluates E and ∇E, the
            sum of the stages' for `samplers.Composite`).
        n_energy_evals: energy-only evaluations (no gradient) spent over the run, `init`
            included. Budgets compare the three counts side by side.
        n_flow_evals: flow passes spent over the run, `init` included.
        energy_trace: mean energy of the chains at the start of each step, shape (n_steps,).
        step_size: the final step size (scalar or (B,) tensor).
        stats: each of the steps' `StepInfo.stats` averaged over the steps that reported it.
    """

    x: Tensor
    state: ChainState
    acceptance_rate: Tensor | None
    n_grad_evals: int
    energy_trace: Tensor
    step_size: Tensor
    stats: dict[str, Tensor] = attrs.field(factory=dict)
    n_energy_evals: int = 0
    n_flow_evals: int = 0


@attrs.frozen(eq=False, kw_only=True)
class InitBatch:
    """Where chains start, plus whatever the initializer needs to learn from later.

    Arguments:
        x: starting positions (B, ...).
        latents: latent codes that produced `x` (generator / flow initializers), else None.
        indices: buffer or bank slots the chains came from, else None.
        state: a ChainState to continue (persistent chains): the sampler keeps what its
            kernel owns (adapted step sizes, ...) and recomputes E, ∇E and every cache.
        extras: any other initializer-specific tensors.
    """

    x: Tensor
    latents: Tensor | None = None
    indices: Tensor | None = None
    state: ChainState | None = None
    extras: dict[str, Tensor] = attrs.field(factory=dict)

    def to(self, device: torch.device | str) -> InitBatch:
        """The starting points (and the state to continue) on `device`; the rest stays."""
        if self.x.device == torch.device(device) and (
            self.state is None or self.state.x.device == torch.device(device)
        ):
            return self
        state = None if self.state is None else self.state.to(device)
        return attrs.evolve(self, x=self.x.to(device), state=state)


@attrs.frozen(eq=False, kw_only=True)
class Round:
    """The facts of one training round, shared by the trainer, initializers and Learnables.

    Arguments:
        index: 1-based round number.
        x_data: the data batch.
        init: the InitBatch the chains started from.
        result: the sampler's SampleResult (`result.x` are the model samples).
        energy_data: E(x_data), detached (B,).
        energy_model: E(result.x), detached (B,).
        losses: scalar tensors logged for this round (energy loss, regulariser, ...).
        energy: the energy the chains ran on, by reference (e.g. for a flow's reverse-KL
            loss); a Learnable reads it from here and never keeps it as a child module.
        epoch: the data loader's epoch (0-based) that `x_data` came from; a scheduler
            stepped per epoch (`scheduler_interval="epoch"`) steps when it advances. None
            when the trainer does not say (such a scheduler then refuses to step).
    """

    index: int
    x_data: Tensor
    init: InitBatch
    result: SampleResult
    energy_data: Tensor
    energy_model: Tensor
    losses: dict[str, Tensor] = attrs.field(factory=dict)
    energy: Any = None
    epoch: int | None = None

    @property
    def energy_gap(self) -> Tensor:
        """Mean energy of model samples minus mean energy of data (≥ 0 early in training)."""
        return self.energy_model.mean() - self.energy_data.mean()
