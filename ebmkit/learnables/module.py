r"""LearnableModule: an nn.Module that learns each round with its own optimizer."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

import gin
from ebmkit.records import Round
from ebmkit.validators import one_of

__all__ = [
    "SCHEDULER_INTERVALS",
    "GIN_SCHEDULERS",
    "LearnableModule",
    "SchedulerFactory",
    "step_per_epoch",
]

_MARK = "ebmkit_learnable_module"
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]
"""Makes the LR scheduler of an optimizer, e.g. ``lambda o: ExponentialLR(o, gamma=0.998)``."""

SCHEDULER_INTERVALS = ("round", "epoch")
"""When a scheduler steps: after every optimizer step, or once per epoch of the trainer's data."""

GIN_SCHEDULERS = (
    torch.optim.lr_scheduler.ExponentialLR,
    torch.optim.lr_scheduler.StepLR,
    torch.optim.lr_scheduler.MultiStepLR,
    torch.optim.lr_scheduler.CosineAnnealingLR,
)
"""torch's schedulers a gin config may name as a factory (a reference without parentheses):
``trainers.Contrastive.scheduler = @torch.optim.lr_scheduler.ExponentialLR`` plus
``torch.optim.lr_scheduler.ExponentialLR.gamma = 0.998``."""


def _register_schedulers_with_gin() -> None:
    """Make `GIN_SCHEDULERS` plain gin configurables (not components), once per process; a
    name gin already knows (e.g. from `gin.torch`) is left as it is."""
    for scheduler in GIN_SCHEDULERS:
        name = f"torch.optim.lr_scheduler.{scheduler.__name__}"
        try:
            gin.get_configurable(name)
        except ValueError:
            gin.external_configurable(scheduler, module="torch.optim.lr_scheduler")


_register_schedulers_with_gin()

_BEFORE_OPTIMIZER_STEP = r"Detected call of `lr_scheduler\.step\(\)` before `optimizer\.step\(\)`"


def _check_scheduler_interval(interval: str, owner: str) -> str:
    """`interval` when it is one of `SCHEDULER_INTERVALS`; else a ValueError naming `owner`."""
    try:
        one_of(*SCHEDULER_INTERVALS)(None, SimpleNamespace(name="scheduler_interval"), interval)
    except ValueError as error:
        raise ValueError(f"{owner}: {error}") from None
    return interval


def step_per_epoch(
    scheduler: torch.optim.lr_scheduler.LRScheduler, stepped_to: int, round: Round, owner: str
) -> int:
    """Step `scheduler` once for every data epoch begun since epoch `stepped_to`.

    Called just before the optimizer's step of each round, so the first batch of epoch e is
    already taken at the scheduler's e-th learning rate — what a loop gets that steps the
    scheduler at the end of every epoch (Dual-MCMC's reference code: ExponentialLR(0.998)).

    Arguments:
        scheduler: the LR scheduler.
        stepped_to: the data epoch the scheduler's learning rate belongs to (0 at first).
        round: the round being learned from; `round.epoch` is its data batch's epoch.
        owner: who steps it, for the error message.

    Returns:
        The epoch the scheduler now stands at (keep it, and save it with the scheduler).

    Example:
        >>> import attrs
        >>> from ebmkit.testing.fixtures import finished_round
        >>> weight = torch.nn.Parameter(torch.zeros(1))
        >>> optimizer = torch.optim.SGD([weight], lr=1.0)
        >>> scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.5)
        >>> round = finished_round(1, None, None)
        >>> at = step_per_epoch(scheduler, 0, attrs.evolve(round, epoch=0), "demo")
        >>> at, optimizer.param_groups[0]["lr"]
        (0, 1.0)
        >>> at = step_per_epoch(scheduler, at, attrs.evolve(round, epoch=2), "demo")
        >>> at, optimizer.param_groups[0]["lr"]
        (2, 0.25)
    """
    if round.epoch is None:
        raise ValueError(
            f"{owner} steps its LR scheduler per data epoch (scheduler_interval='epoch') but "
            f"round {round.index} does not say which epoch its data came from (Round.epoch is "
            f"None); use a trainer that sets it (trainers.Contrastive does) or "
            f"scheduler_interval='round'"
        )
    # Stepping before this round's optimizer step is deliberate (see above); torch warns
    # about that order when the optimizer has not stepped yet (a run resumed at an epoch
    # boundary): nothing is skipped here, so that one warning is silenced.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_BEFORE_OPTIMIZER_STEP)
        for _ in range(stepped_to, round.epoch):
            scheduler.step()
    return max(stepped_to, round.epoch)


class LearnableModule(nn.Module):
    """Base of a Learnable network (a flow initializer, a mirror map, a generator).

    A subclass writes `loss(round)`, returning named scalar tensors with ``"loss"`` the one
    minimised (the others are logged); `learn` then takes one optimizer step on it (Adam by
    default, `make_optimizer` to change it), clips the gradient norm if asked and steps the
    scheduler: after every step (``scheduler_interval="round"``), or once per epoch of the
    trainer's data loader (``"epoch"``: before the step of the first round whose batch
    `Round.epoch` is new, see `step_per_epoch`). The trainer moves the module to its device
    and saves `state_dict()`: the parameters, the optimizer, the scheduler and the epoch it
    was stepped to, so a resumed run continues exactly.
    `distributed_modules` names the submodules a data-parallel run wraps (the whole module
    by default).

    Arguments:
        learning_rate, betas, weight_decay: Adam's.
        grad_clip: clip the parameters' gradient norm to this value (None: off).
        scheduler: a factory optimizer → LR scheduler (None: a constant learning rate); in
            gin a reference without parentheses, e.g. ``@torch.optim.lr_scheduler.ExponentialLR``
            with its ``gamma`` bound (see `GIN_SCHEDULERS`).
        scheduler_interval: "round" (step after every `learn`, the default) or "epoch"
            (once per epoch of the trainer's data).

    Example:
        >>> import torch
        >>> class Shift(LearnableModule):
        ...     '''Learns the mean of the round's samples.'''
        ...     def __init__(self):
        ...         super().__init__(learning_rate=0.5)
        ...         self.mean = torch.nn.Parameter(torch.zeros(2))
        ...     def loss(self, round):
        ...         return {"loss": (round.result.x - self.mean).square().sum(1).mean()}
        >>> Shift().state_dict().keys()  # doctest: +NORMALIZE_WHITESPACE
        dict_keys(['ebmkit_learnable_module', 'module', 'optimizer', 'scheduler',
                   'scheduler_epoch'])
    """

    def __init__(
        self,
        *,
        learning_rate: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        grad_clip: float | None = None,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "round",
    ) -> None:
        super().__init__()
        if not learning_rate > 0:
            raise ValueError(
                f"{type(self).__name__}: learning_rate must be > 0, got {learning_rate}"
            )
        if grad_clip is not None and not grad_clip > 0:
            raise ValueError(f"{type(self).__name__}: grad_clip must be > 0, got {grad_clip}")
        self.learning_rate = float(learning_rate)
        self.betas = tuple(betas)
        self.weight_decay = float(weight_decay)
        self.grad_clip = grad_clip
        if scheduler is not None and not callable(scheduler):
            raise TypeError(
                f"{type(self).__name__}: scheduler must be a factory optimizer → LR scheduler, "
                f"got a {type(scheduler).__name__}; in gin bind a reference without "
                f"parentheses, e.g. @torch.optim.lr_scheduler.ExponentialLR"
            )
        self.scheduler_interval = _check_scheduler_interval(
            scheduler_interval, type(self).__name__
        )
        self._scheduler_factory = scheduler
        self._scheduler_epoch = 0  # the data epoch the scheduler's learning rate belongs to
        self._optimizer: torch.optim.Optimizer | None = None
        self._scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self._parameters_synchronised = False  # broadcast from rank 0 in a data-parallel run

    def make_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer over this module's parameters (Adam); override for another."""
        return torch.optim.Adam(
            self.parameters(),
            lr=self.learning_rate,
            betas=self.betas,
            weight_decay=self.weight_decay,
        )

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """This module's optimizer, made on first use (after the trainer moved the module)."""
        if self._optimizer is None:
            self._optimizer = self.make_optimizer()
            if self._scheduler_factory is not None:
                self._scheduler = self._scheduler_factory(self._optimizer)
        return self._optimizer

    @property
    def scheduler(self) -> torch.optim.lr_scheduler.LRScheduler | None:
        """The LR scheduler, if one was configured."""
        self.optimizer  # noqa: B018 - makes the scheduler with the optimizer
        return self._scheduler

    def loss(self, round: Round) -> dict[str, Tensor]:
        """Named losses from the round; ``"loss"`` is minimised. Subclasses write this."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement loss(round) -> {{'loss': ...}} or learn(round)"
        )

    def learn(self, round: Round) -> dict[str, Tensor]:
        """One optimizer step on ``loss(round)["loss"]``; returns the losses, detached."""
        losses = self.loss(round)
        if "loss" not in losses:
            raise KeyError(
                f"{type(self).__name__}.loss(round) returned {sorted(losses)}; it must hold "
                f"'loss', the value minimised"
            )
        self.minimise(losses["loss"], round)
        return {name: value.detach() for name, value in losses.items()}

    def minimise(self, loss: Tensor, round: Round) -> None:
        """One optimizer step on `loss` (backward, clip, step), the scheduler at its interval.

        `learn` calls it once a round; a subclass writing its own `learn` calls it once a
        round too, so its scheduler steps per round or per epoch as configured (without
        `grad_clip`, one step on a sum of losses over disjoint parameters is one step on each).
        """
        optimizer = self.optimizer
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._average_gradients()
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.parameters(), self.grad_clip)
        scheduler = self._scheduler
        if scheduler is not None and self.scheduler_interval == "epoch":
            owner = type(self).__name__
            self._scheduler_epoch = step_per_epoch(scheduler, self._scheduler_epoch, round, owner)
        optimizer.step()
        if scheduler is not None and self.scheduler_interval == "round":
            scheduler.step()
        self._synchronise_after_step()

    def _average_gradients(self) -> None:
        """In a data-parallel run, average the gradients of `distributed_modules` over ranks
        (`learn` runs on the unwrapped module, where DDP would synchronise nothing)."""
        from ebmkit.runs import distributed

        if distributed.is_distributed():
            for module in self.distributed_modules().values():
                distributed.all_reduce_gradients(module.parameters())

    def _synchronise_after_step(self) -> None:
        """In a data-parallel run, rank 0's buffers (ActNorm's `initialized`, BatchNorm's
        statistics) after every step, and its parameters after the first step of the process
        (a data-dependent initialisation made them differ), go to every rank."""
        from ebmkit.runs import distributed

        if not distributed.is_distributed():
            return
        synchronised = self._parameters_synchronised
        for module in self.distributed_modules().values():
            distributed.broadcast_module(module, buffers_only=synchronised)
        self._parameters_synchronised = True

    def distributed_modules(self) -> dict[str, nn.Module]:
        """The submodules whose gradients a data-parallel run averages over ranks and whose
        parameters and buffers it broadcasts from rank 0, by attribute path ("" = self)."""
        return {"": self}

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Parameters, optimizer, scheduler and the data epoch it was stepped to, when called
        as a checkpoint does (no args).

        Called by a parent module (with prefix/destination arguments) it is the plain
        `nn.Module.state_dict`, so a LearnableModule nests inside other modules.
        """
        if args or kwargs:
            return super().state_dict(*args, **kwargs)
        scheduler = self.scheduler
        return {
            _MARK: True,
            "module": super().state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "scheduler_epoch": self._scheduler_epoch,
        }

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """Restore what `state_dict()` returned (or a plain module state dict)."""
        if not state_dict.get(_MARK):
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        result = super().load_state_dict(state_dict["module"], strict=strict, assign=assign)
        self.optimizer.load_state_dict(state_dict["optimizer"])
        if state_dict["scheduler"] is not None:
            if self.scheduler is None:
                raise ValueError(
                    f"the checkpoint of {type(self).__name__} holds an LR scheduler but this "
                    f"config builds none; configure the same scheduler to resume"
                )
            self.scheduler.load_state_dict(state_dict["scheduler"])
        self._scheduler_epoch = int(state_dict.get("scheduler_epoch", 0))  # older checkpoints: 0
        return result
