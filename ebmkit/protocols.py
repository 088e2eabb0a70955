r"""The interfaces every component implements: Energy, Sampler, Initializer, Learnable, Trainer."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from ebmkit.records import ChainState, InitBatch, Round, SampleResult, StepInfo

__all__ = [
    "Energy",
    "Initializer",
    "Learnable",
    "Sampler",
    "Stateful",
    "StepScalable",
    "Trainer",
]


@runtime_checkable
class Energy(Protocol):
    """E(x): a batch (B, ...) to energies (B,); p(x) ∝ exp(−E(x)), lower is more likely."""

    def __call__(self, x: Tensor) -> Tensor: ...


@runtime_checkable
class Sampler(Protocol):
    """A batched Markov kernel on an energy (BlackJAX shape: `init` then repeated `step`).

    The sampler holds settings only; every chain quantity lives in the ChainState.
    """

    n_steps: int

    def init(self, x: Tensor, energy: Energy) -> ChainState:
        """Start chains at `x`, caching E and ∇E there."""
        ...

    def step(
        self, state: ChainState, energy: Energy, *, generator: torch.Generator | None = None
    ) -> tuple[ChainState, StepInfo]:
        """One transition of every chain."""
        ...

    def sample(self, energy: Energy, x0: Tensor, n_steps: int | None = None) -> SampleResult:
        """Run `n_steps` transitions from `x0` (default `self.n_steps`)."""
        ...


@runtime_checkable
class StepScalable(Protocol):
    """A sampler whose step can be shrunk in place, e.g. when a run rolls back a divergence."""

    def scale_step_size(self, factor: float) -> None:
        """Multiply the step size by `factor` (> 0), keeping the chains' temperature."""
        ...


@runtime_checkable
class Initializer(Protocol):
    """Where chains start: noise, data, a replay buffer, a flow or a generator."""

    def sample(self, n: int) -> InitBatch:
        """Starting points for `n` chains."""
        ...

    def update(self, round: Round) -> None:
        """Learn from the finished round (e.g. store final states in a buffer)."""
        ...


@runtime_checkable
class Learnable(Protocol):
    """A component with parameters of its own besides the energy; owns its optimizer."""

    def learn(self, round: Round) -> dict[str, Tensor]:
        """One update from the round's facts; returns losses for logging."""
        ...


@runtime_checkable
class Trainer(Protocol):
    """Runs training rounds until done."""

    def fit(self) -> Any:
        """Train; returns the trainer's summary (e.g. final metrics)."""
        ...


@runtime_checkable
class Stateful(Protocol):
    """Anything whose state goes into a checkpoint (modules, optimizers, buffers, loaders)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...
