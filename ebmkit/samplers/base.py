r"""The chain loop every kernel shares: `sample` runs `init` then `n_steps` calls of `step`."""

from __future__ import annotations

import contextlib
import math

import attrs
import torch
from torch import Tensor

from ebmkit.autograd import differentiable_chains, energy_and_grad
from ebmkit.protocols import Energy
from ebmkit.records import ChainState, InitBatch, SampleResult, StepContext, StepInfo

__all__ = [
    "EvaluationCounts",
    "MarkovKernel",
    "default_init_cost",
    "initialize",
    "kept_from_previous",
]


@attrs.frozen(kw_only=True)
class EvaluationCounts:
    """What some chain work cost, in the three units budgets are compared in.

    Arguments:
        n_grad_evals: gradient evaluations (E and ∇E at a batch: one forward + one backward).
        n_energy_evals: energy-only evaluations (a forward pass, no gradient), e.g. an
            independence MH move scoring its proposal.
        n_flow_evals: flow passes (forward or inverse, one batch each).

    Example:
        >>> EvaluationCounts(n_grad_evals=1) + EvaluationCounts(n_energy_evals=1, n_flow_evals=2)
        EvaluationCounts(n_grad_evals=1, n_energy_evals=1, n_flow_evals=2)
    """

    n_grad_evals: int = 0
    n_energy_evals: int = 0
    n_flow_evals: int = 0

    def __add__(self, other: EvaluationCounts) -> EvaluationCounts:
        return EvaluationCounts(
            n_grad_evals=self.n_grad_evals + other.n_grad_evals,
            n_energy_evals=self.n_energy_evals + other.n_energy_evals,
            n_flow_evals=self.n_flow_evals + other.n_flow_evals,
        )

    @classmethod
    def of_step(cls, info: StepInfo) -> EvaluationCounts:
        """The counts a step reported in its StepInfo."""
        return cls(
            n_grad_evals=info.n_grad_evals,
            n_energy_evals=info.n_energy_evals,
            n_flow_evals=info.n_flow_evals,
        )


def default_init_cost(state: ChainState) -> EvaluationCounts:
    """What an `init` that evaluates only the energy cost: one gradient evaluation when `state`
    holds ∇E, one energy-only evaluation when it holds E alone, nothing when neither.

    Example:
        >>> x = torch.zeros(3, 2)
        >>> default_init_cost(ChainState(x=x, energy=torch.zeros(3), grad=None))
        EvaluationCounts(n_grad_evals=0, n_energy_evals=1, n_flow_evals=0)
    """
    if state.grad is not None:
        return EvaluationCounts(n_grad_evals=1)
    if state.energy is not None:
        return EvaluationCounts(n_energy_evals=1)
    return EvaluationCounts()


def initialize(
    sampler: object, x: Tensor, energy: Energy, *, previous: ChainState | None = None
) -> tuple[ChainState, EvaluationCounts]:
    """`sampler.init(x, energy, previous=previous)` and what it cost.

    Asks the sampler's `init_with_cost` when it has one (every `MarkovKernel` does), else runs
    its `init` and takes `init_cost(state)` if it has that, else `default_init_cost`. What a
    kernel composing others (`samplers.Composite`) calls for each of its stages.

    Arguments:
        sampler: any sampler (`init`, and optionally `init_with_cost` or `init_cost`).
        x, energy, previous: as for `init`.

    Returns:
        (the state, its EvaluationCounts).
    """
    with_cost = getattr(sampler, "init_with_cost", None)
    if with_cost is not None:
        return with_cost(x, energy, previous=previous)
    state = sampler.init(x, energy, previous=previous)
    cost = getattr(sampler, "init_cost", default_init_cost)
    return state, cost(state)


def kept_from_previous(
    x: Tensor, previous: ChainState | None
) -> tuple[Tensor | None, dict[str, Tensor]]:
    """What a continued chain keeps from `previous`: (per-chain step sizes, owned tensors).

    Raises ValueError when `previous` holds another number of chains than `x`.
    """
    if previous is None:
        return None, {}
    if previous.batch_size != x.shape[0]:
        raise ValueError(
            f"the state to continue holds {previous.batch_size} chains but the start x holds "
            f"{x.shape[0]}; pass the state of exactly these chains (InitBatch.state)"
        )
    return previous.step_size, dict(previous.owned)


GUIDE = "docs/writing-a-plugin.md"
"""Where a kernel author reads what to write (cited by the errors below)."""


def _missing_step_message(cls: type) -> str:
    return (
        f"{cls.__module__}.{cls.__qualname__} is a MarkovKernel without its own `step`: "
        f"a kernel writes the public `step(self, state, energy, *, generator=None, "
        f"context=None) -> (ChainState, StepInfo)` (one transition of every chain; "
        f"`MarkovKernel.sample` loops over it) and, when it owns state or caches extras, "
        f"`init(self, x, energy, *, previous=None) -> ChainState`. A kernel written for the "
        f"old private API (`_transition(state, energy, index, n_steps, generator, *, "
        f"final)`) renames it to `step` and reads index, n_steps and final from `context` "
        f"(`context.index`, `context.n_steps`, `context.last`); see "
        f"CHANGELOG.md ('Migrating from _transition') and {GUIDE}"
    )


def _missing_setting_message(kernel: object, name: str, used_for: str) -> str:
    cls = type(kernel)
    return (
        f"{cls.__module__}.{cls.__qualname__} has no `{name}` attribute, which "
        f"MarkovKernel reads for {used_for}. A MarkovKernel holds two settings by these "
        f"names: `n_steps` (the default number of steps of `sample`) and `step_size` (what "
        f"`current_step_size` and `scale_step_size` read and a rollback shrinks); declare "
        f"them as attrs fields (e.g. `n_steps: int = 100`, `step_size: float`), or, for a "
        f"kernel with no step size, override `current_step_size` and `scale_step_size` "
        f"({GUIDE})"
    )


class MarkovKernel:
    """Base of the built-in samplers: subclasses write `step` (and `init` when they own state
    or cache extras); this gives `sample`.

    A subclass holds two settings under these names: `n_steps` (the default length of
    `sample`) and `step_size` (read by `current_step_size` and `scale_step_size`; a kernel
    with no step size overrides those two). A subclass that defines the old private
    `_transition` and no `step` is refused when its class is created (its plugin is listed
    as broken, saying what to rename), and a call to the base `step` names what to write.

    The loop keeps every per-chain statistic as a tensor (no `.item()`, no host sync) and
    never keeps an autograd graph from one step to the next (unless `differentiable=True`).
    The run's costs (`SampleResult.n_grad_evals`, `n_energy_evals`, `n_flow_evals`) are
    what `init` cost (`init_with_cost`) plus what every step's `StepInfo` reported.
    """

    n_steps: int
    step_size: float

    def __init_subclass__(cls, **kwargs: object) -> None:
        """Refuse a kernel written for the old API: `_transition` without a `step` of its own."""
        super().__init_subclass__(**kwargs)
        if "_transition" in cls.__dict__ and cls.step is MarkovKernel.step:
            raise TypeError(_missing_step_message(cls))

    def init(self, x: Tensor, energy: Energy, *, previous: ChainState | None = None) -> ChainState:
        """Chains at `x` with E and ∇E evaluated (one gradient evaluation); what `previous`
        held that the kernel owns (per-chain step sizes, every `owned` entry) is kept as is.

        Enough for a kernel that owns nothing and caches no extras. A kernel that adapts or
        keeps per-chain state overrides it: it resolves its "not set yet" entries (a
        persistent bank's NaN step sizes) and starts its own entries on a fresh chain, and
        still keeps every `owned` entry of `previous` it does not own
        (`kept_from_previous`). E, ∇E and extras of `previous` are never reused: the energy
        has changed since.
        """
        step_size, owned = kept_from_previous(x, previous)
        value, grad = energy_and_grad(energy, x)
        return ChainState(x=x, energy=value, grad=grad, step_size=step_size, owned=owned)

    def init_cost(self, state: ChainState) -> EvaluationCounts:
        """What `init` spent to make `state` (see `default_init_cost`, the default).

        Override when `init` does other work than one energy evaluation (with or without
        ∇E): e.g. a flow kernel whose `init` scores E without a gradient and log λ(x) with
        one flow pass returns ``EvaluationCounts(n_energy_evals=1, n_flow_evals=1)``.
        """
        return default_init_cost(state)

    def init_with_cost(
        self, x: Tensor, energy: Energy, *, previous: ChainState | None = None
    ) -> tuple[ChainState, EvaluationCounts]:
        """`init` and what it cost (`init_cost` of its state); what `sample` calls.

        A kernel whose cost cannot be read from the state alone (one running other kernels'
        `init`s, like `samplers.Composite`) overrides this instead.
        """
        state = self.init(x, energy, previous=previous)
        return state, self.init_cost(state)

    def step(
        self,
        state: ChainState,
        energy: Energy,
        *,
        generator: torch.Generator | None = None,
        context: StepContext | None = None,
    ) -> tuple[ChainState, StepInfo]:
        """One transition of every chain.

        Inside `sample` the kernel holds the only reference to `state`, so it may drop it
        (``del state``) once the proposal is made, freeing the old ∇E before the next one.
        ``context.last`` allows leaving E/∇E unevaluated at the final point.

        Raises:
            NotImplementedError: on the base class, naming what a subclass writes.
        """
        raise NotImplementedError(_missing_step_message(type(self)))

    def _setting(self, name: str, used_for: str) -> float:
        """`self.<name>`, or a TypeError naming the two settings a MarkovKernel holds."""
        try:
            return getattr(self, name)
        except AttributeError:
            raise TypeError(_missing_setting_message(self, name, used_for)) from None

    def current_step_size(self) -> float:
        """The configured step size h (after any `scale_step_size`)."""
        return self._setting("step_size", "current_step_size()")

    def scale_step_size(self, factor: float) -> None:
        """Step size h ← factor·h and noise σ ← sqrt(factor)·σ (when set apart from h).

        σ²/(2h), the temperature the chains sample at, stays as configured: ULA's default
        σ = sqrt(2h) stays exact, an SGLD-style (h, σ) pair keeps its ratio.
        """
        if not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"a step-size factor must be finite and > 0, got {factor}")
        self.step_size = self._setting("step_size", "scale_step_size()") * factor
        if getattr(self, "noise_scale", None) is not None:
            self.noise_scale = self.noise_scale * math.sqrt(factor)

    def sample(
        self,
        energy: Energy,
        start: Tensor | InitBatch,
        n_steps: int | None = None,
        *,
        generator: torch.Generator | None = None,
        differentiable: bool = False,
        adapt: bool = True,
    ) -> SampleResult:
        """Run `n_steps` (default `self.n_steps`) transitions of every chain from `start`.

        Arguments:
            energy: maps (B, ...) to (B,).
            start: starting points (B, ...), floating point, or an InitBatch; an InitBatch's
                `state` is continued (`init(previous=state)`: the kernel keeps what it owns,
                E, ∇E and every cache are recomputed on the current energy).
            n_steps: number of transitions; 0 returns the start.
            generator: random source (default: the global torch RNG).
            differentiable: keep the autograd graph through every step, so a loss on the
                final x reaches `start` and the energy's parameters (default: detached,
                no graph kept, no extra cost).
            adapt: let adaptive kernels adapt (e.g. MALA's burn-in step-size rule).

        Returns:
            SampleResult with the final x, the last state, per-chain acceptance rate (MH
            kernels), the costs (gradient, energy-only and flow evaluations, `init`
            included), the energy trace and the steps' averaged stats.
        """
        if n_steps is None:
            n_steps = self._setting("n_steps", "sample() called without n_steps")
        if n_steps < 0:
            raise ValueError(f"n_steps must be >= 0, got {n_steps}")
        x0, previous = (start.x, start.state) if isinstance(start, InitBatch) else (start, None)
        if not isinstance(x0, Tensor) or not x0.is_floating_point():
            kind = x0.dtype if isinstance(x0, Tensor) else type(x0).__name__
            raise TypeError(f"chains must start from a floating-point tensor, got {kind}")
        switch = differentiable_chains() if differentiable else contextlib.nullcontext()
        with switch:
            return self._run(energy, x0, previous, n_steps, generator, differentiable, adapt)

    def _run(
        self,
        energy: Energy,
        x0: Tensor,
        previous: ChainState | None,
        n_steps: int,
        generator: torch.Generator | None,
        differentiable: bool,
        adapt: bool,
    ) -> SampleResult:
        state, cost = self.init_with_cost(
            x0 if differentiable else x0.detach(), energy, previous=previous
        )
        del previous
        n_grad_evals, n_energy_evals = cost.n_grad_evals, cost.n_energy_evals
        n_flow_evals = cost.n_flow_evals
        acceptance_sum: Tensor | None = None
        stat_sums: dict[str, Tensor] = {}
        stat_counts: dict[str, int] = {}
        step_size = (
            state.step_size
            if state.step_size is not None
            else torch.as_tensor(getattr(self, "step_size", float("nan")))
        )
        # The loop hands each state over to `step` (popped from `current`, so no reference
        # stays here): a kernel that no longer needs the old E/∇E can free them before it
        # evaluates the next gradient, as a hand-written loop does.
        # The trace is written into one tensor: a small tensor kept per step would pin heap
        # blocks between the big activations and make the allocator return/refault pages.
        energy_trace = state.energy.detach().new_empty(n_steps)
        current = [state]
        del state
        for index in range(n_steps):
            energy_now = current[0].energy
            torch.sum(
                energy_now.detach() if differentiable else energy_now, 0, out=energy_trace[index]
            )
            del energy_now
            context = StepContext(
                index=index, n_steps=n_steps, last=index == n_steps - 1, adapt=adapt
            )
            transition = self.step(current.pop(), energy, generator=generator, context=context)
            current.append(transition[0])
            info = transition[1]
            del transition
            n_grad_evals += info.n_grad_evals
            n_energy_evals += info.n_energy_evals
            n_flow_evals += info.n_flow_evals
            step_size = info.step_size
            if info.acceptance_prob is not None:
                acceptance_sum = (
                    info.acceptance_prob
                    if acceptance_sum is None
                    else acceptance_sum + info.acceptance_prob
                )
            for name, value in info.stats.items():
                value = value.detach()
                stat_sums[name] = value if name not in stat_sums else stat_sums[name] + value
                stat_counts[name] = stat_counts.get(name, 0) + 1
        (state,) = current
        energy_trace /= state.x.shape[0]  # sums to means, once
        return SampleResult(
            x=state.x if differentiable else state.x.detach(),
            state=state,
            acceptance_rate=None if acceptance_sum is None else acceptance_sum.detach() / n_steps,
            n_grad_evals=n_grad_evals,
            energy_trace=energy_trace,
            step_size=step_size,
            stats={name: total / stat_counts[name] for name, total in stat_sums.items()},
            n_energy_evals=n_energy_evals,
            n_flow_evals=n_flow_evals,
        )
