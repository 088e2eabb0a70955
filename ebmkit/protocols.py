r"""The interfaces every component implements: Energy, Sampler, Initializer, Flow, Learnable,
Trainer."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from ebmkit.records import ChainState, InitBatch, Round, SampleResult, StepContext, StepInfo

__all__ = [
    "Energy",
    "Flow",
    "Initializer",
    "Learnable",
    "RoundObserver",
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

    The sampler holds settings only; every chain quantity lives in the ChainState. A sampler
    has all three methods below. Built on `ebmkit.MarkovKernel`, a kernel writes `step`, and
    `init` only when it owns per-chain state or caches extras: MarkovKernel gives `sample`
    (the loop over `step`) and an `init` that evaluates E and ∇E and keeps what `previous`
    owned. A kernel that moves x drops every cached extra it does not recompute.
    """

    n_steps: int

    def init(self, x: Tensor, energy: Energy, *, previous: ChainState | None = None) -> ChainState:
        """Chains at `x` with E, ∇E and the kernel's caches evaluated there.

        `previous` is a state of the same chains to continue (e.g. from a persistent bank):
        what the kernel owns (per-chain step sizes, `owned`) is kept; everything that
        depends on the energy or a learned map is recomputed.
        """
        ...

    def step(
        self,
        state: ChainState,
        energy: Energy,
        *,
        generator: torch.Generator | None = None,
        context: StepContext | None = None,
    ) -> tuple[ChainState, StepInfo]:
        """One transition of every chain; `context` (default: a lone step) says where it sits."""
        ...

    def sample(
        self,
        energy: Energy,
        start: Tensor | InitBatch,
        n_steps: int | None = None,
        *,
        generator: torch.Generator | None = None,
        differentiable: bool = False,
    ) -> SampleResult:
        """Run `n_steps` transitions (default `self.n_steps`) from `start`.

        `start` is a tensor of starting points or an InitBatch, whose `state` (if any) is a
        chain to continue. `differentiable=True` keeps the graph through every step.
        """
        ...


@runtime_checkable
class StepScalable(Protocol):
    """A sampler whose step can be shrunk in place, e.g. when a run rolls back a divergence."""

    def scale_step_size(self, factor: float) -> None:
        """Multiply the step size by `factor` (> 0), keeping the chains' temperature."""
        ...

    def current_step_size(self) -> float:
        """The configured step size now (after any scaling), for messages and logs."""
        ...


@runtime_checkable
class Initializer(Protocol):
    """Where chains start: noise, data, a replay buffer, a persistent bank, a flow, a generator."""

    def sample(self, n: int) -> InitBatch:
        """Starting points for `n` chains (and, for persistent chains, the states to continue)."""
        ...

    def update(self, round: Round) -> None:
        """Learn from the finished round (e.g. store final states in a buffer)."""
        ...


@runtime_checkable
class Flow(Protocol):
    """A normalizing flow in the density direction (zuko's and CP-Flow's): data x → base z.

    The base is N(0, I) of `event_shape`; the model density is
    log λ(x) = log N(z; 0, I) + log|det ∂z/∂x| with z = forward(x). Kernels that need
    exact densities (an independence Metropolis–Hastings move) refuse a flow whose
    `exact_log_prob` is False (a stochastic estimate, e.g. a CP-Flow in high dimension).
    """

    event_shape: tuple[int, ...]
    exact_log_prob: bool

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(z, log|det ∂z/∂x|) for data x of shape (B, *event_shape); log-det shape (B,)."""
        ...

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(x, log|det ∂x/∂z|) for base points z of shape (B, *event_shape)."""
        ...

    def log_prob(self, x: Tensor) -> Tensor:
        """log λ(x), shape (B,)."""
        ...

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """`n` samples x = T(z), z ~ N(0, I) drawn from `generator` (global RNG when None)."""
        ...


@runtime_checkable
class Stateful(Protocol):
    """Anything whose state goes into a checkpoint (modules, optimizers, buffers, loaders)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


@runtime_checkable
class Learnable(Stateful, Protocol):
    """A component with parameters of its own besides the energy; owns its optimizer.

    Found by the trainer among its components (see `ebmkit.find_learnables`), asked to
    `learn` once per round and saved in every checkpoint under its path; a component with
    `learn` but no `state_dict`/`load_state_dict` is refused when the trainer is built.
    """

    def learn(self, round: Round) -> dict[str, Tensor]:
        """One update from the round's facts; returns named losses for logging and the guard."""
        ...


@runtime_checkable
class RoundObserver(Protocol):
    """What a trainer tells its run (logging, pictures, checkpoints) as it goes."""

    def before_fit(self, trainer: Any) -> None: ...

    def after_round(self, trainer: Any, round: Round) -> None: ...

    def after_fit(self, trainer: Any) -> None: ...


@runtime_checkable
class Trainer(Stateful, Protocol):
    """Runs training rounds until done; what a run (`ebmkit run`) reads from a trainer.

    The run logs and checkpoints through these members only, so another trainer (e.g. one
    whose round has other phases) plugs into the same command.
    """

    energy: torch.nn.Module
    sampler: Sampler
    dataset: Any
    batch_size: int
    n_rounds: int
    round_index: int

    def fit(self, observer: RoundObserver | None = None) -> Any:
        """Train from `round_index` to `n_rounds`, reporting each round to `observer`."""
        ...
