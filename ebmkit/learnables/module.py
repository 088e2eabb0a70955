r"""LearnableModule: an nn.Module that learns each round with its own optimizer."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ebmkit.records import Round

__all__ = ["LearnableModule"]

_MARK = "ebmkit_learnable_module"
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


class LearnableModule(nn.Module):
    """Base of a Learnable network (a flow initializer, a mirror map, a generator).

    A subclass writes `loss(round)`, returning named scalar tensors with ``"loss"`` the one
    minimised (the others are logged); `learn` then takes one optimizer step on it (Adam by
    default, `make_optimizer` to change it), clips the gradient norm if asked and steps the
    scheduler. The trainer moves the module to its device and saves `state_dict()`: the
    parameters, the optimizer and the scheduler, so a resumed run continues exactly.
    `distributed_modules` names the submodules a data-parallel run wraps (the whole module
    by default).

    Arguments:
        learning_rate, betas, weight_decay: Adam's.
        grad_clip: clip the parameters' gradient norm to this value (None: off).
        scheduler: a factory optimizer → LR scheduler, stepped after every `learn`.

    Example:
        >>> import torch
        >>> class Shift(LearnableModule):
        ...     '''Learns the mean of the round's samples.'''
        ...     def __init__(self):
        ...         super().__init__(learning_rate=0.5)
        ...         self.mean = torch.nn.Parameter(torch.zeros(2))
        ...     def loss(self, round):
        ...         return {"loss": (round.result.x - self.mean).square().sum(1).mean()}
        >>> Shift().state_dict().keys()
        dict_keys(['ebmkit_learnable_module', 'module', 'optimizer', 'scheduler'])
    """

    def __init__(
        self,
        *,
        learning_rate: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        grad_clip: float | None = None,
        scheduler: SchedulerFactory | None = None,
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
        self._scheduler_factory = scheduler
        self._optimizer: torch.optim.Optimizer | None = None
        self._scheduler: torch.optim.lr_scheduler.LRScheduler | None = None

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
        optimizer = self.optimizer
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.parameters(), self.grad_clip)
        optimizer.step()
        if self._scheduler is not None:
            self._scheduler.step()
        return {name: value.detach() for name, value in losses.items()}

    def distributed_modules(self) -> dict[str, nn.Module]:
        """The submodules a data-parallel (DDP) run wraps, by attribute path ("" = self)."""
        return {"": self}

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Parameters, optimizer and scheduler, when called as a checkpoint does (no args).

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
        return result
