r"""Plain records passed between components: chain states, step diagnostics, sample results."""

from __future__ import annotations

import attrs
from torch import Tensor

__all__ = ["ChainState", "InitBatch", "Round", "SampleResult", "StepInfo"]


@attrs.frozen(eq=False, kw_only=True)
class ChainState:
    """The state of a batch of Markov chains, caching E and ∇E at `x` so kernels never recompute.

    Arguments:
        x: current positions, shape (B, ...).
        energy: E(x), shape (B,); None when not evaluated yet (the last state of an unadjusted
            run, which needs no gradient: `step` evaluates it when it continues the chain).
        grad: ∇ₓE(x), shape of `x`; None exactly when `energy` is None.
        step_size: per-chain step sizes (B,) when a kernel adapts them, else None.
        extras: kernel-specific cached tensors (e.g. a preconditioner evaluated at `x`).
    """

    x: Tensor
    energy: Tensor | None
    grad: Tensor | None
    step_size: Tensor | None = None
    extras: dict[str, Tensor] = attrs.field(factory=dict)


@attrs.frozen(eq=False, kw_only=True)
class StepInfo:
    """Diagnostics of one transition; never fed back into the chain.

    Arguments:
        acceptance_prob: Metropolis–Hastings acceptance probabilities (B,), None if unadjusted.
        accepted: which chains moved (B,) bool, None if unadjusted.
        step_size: the step size used (scalar or (B,) tensor).
        n_grad_evals: gradient evaluations this step cost (per chain batch).
    """

    acceptance_prob: Tensor | None
    accepted: Tensor | None
    step_size: Tensor
    n_grad_evals: int = 1


@attrs.frozen(eq=False, kw_only=True)
class SampleResult:
    """What `Sampler.sample` returns: the final states and per-run statistics.

    Arguments:
        x: final positions (B, ...), detached.
        state: the last ChainState (to continue the chains).
        acceptance_rate: per-chain mean acceptance probability (B,), None if unadjusted.
        n_grad_evals: gradient evaluations spent over the run.
        energy_trace: mean energy of the chains at the start of each step, shape (n_steps,).
        step_size: the final step size (scalar or (B,) tensor).
    """

    x: Tensor
    state: ChainState
    acceptance_rate: Tensor | None
    n_grad_evals: int
    energy_trace: Tensor
    step_size: Tensor


@attrs.frozen(eq=False, kw_only=True)
class InitBatch:
    """Where chains start, plus whatever the initializer needs to learn from later.

    Arguments:
        x: starting positions (B, ...).
        latents: latent codes that produced `x` (generator / flow initializers), else None.
        indices: replay-buffer slots the chains came from, else None.
        extras: any other initializer-specific tensors.
    """

    x: Tensor
    latents: Tensor | None = None
    indices: Tensor | None = None
    extras: dict[str, Tensor] = attrs.field(factory=dict)


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
    """

    index: int
    x_data: Tensor
    init: InitBatch
    result: SampleResult
    energy_data: Tensor
    energy_model: Tensor
    losses: dict[str, Tensor] = attrs.field(factory=dict)

    @property
    def energy_gap(self) -> Tensor:
        """Mean energy of model samples minus mean energy of data (≥ 0 early in training)."""
        return self.energy_model.mean() - self.energy_data.mean()
