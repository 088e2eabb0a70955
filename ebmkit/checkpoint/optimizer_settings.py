r"""The settings a config gives an optimizer (learning rate, betas, weight decay), which a
checkpoint's optimizer state would otherwise override on resume.

`torch.optim.Optimizer.load_state_dict` restores every hyperparameter of every parameter group
from the checkpoint, so a resume that accepts a changed learning rate (`--resume --bind
'trainers.Contrastive.learning_rate = 5e-5' --accept-config-change`) would silently keep the
old one. `configured_settings` reads what the config set (the learning rate a scheduler started
from, not the one it has reached), and `apply_configured` puts the config's values back after
the load, rescaling a scheduler's learning rates by the same factor.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

__all__ = ["OptimizerSlot", "apply_configured", "configured_settings", "optimizer_slots"]

Settings = list[dict[str, Any]]
"""One dict per parameter group: its hyperparameters as the config set them."""


@attrs.frozen
class OptimizerSlot:
    """One optimizer of a run, its LR scheduler (or None) and a name for messages."""

    name: str
    optimizer: torch.optim.Optimizer
    scheduler: Any = None


def optimizer_slots(trainer: Any) -> list[OptimizerSlot]:
    """The energy's optimizer and every Learnable's (those that have a torch optimizer)."""
    slots = []
    optimizer = getattr(trainer, "optimizer", None)
    if isinstance(optimizer, torch.optim.Optimizer):
        scheduler = getattr(trainer, "lr_scheduler", None)
        slots.append(OptimizerSlot("the energy's optimizer", optimizer, scheduler))
    for path, learnable in getattr(trainer, "all_learnables", {}).items():
        optimizer = getattr(learnable, "optimizer", None)
        if isinstance(optimizer, torch.optim.Optimizer):
            scheduler = getattr(learnable, "scheduler", None)
            slots.append(OptimizerSlot(f"the optimizer of {path}", optimizer, scheduler))
    return slots


def configured_settings(optimizer: torch.optim.Optimizer) -> Settings:
    """Each group's hyperparameters as configured: a scheduler's starting `initial_lr` stands
    for the learning rate it has since changed."""
    return [
        {
            **{key: value for key, value in group.items() if key not in ("params", "initial_lr")},
            "lr": group.get("initial_lr", group["lr"]),
        }
        for group in optimizer.param_groups
    ]


def apply_configured(slot: OptimizerSlot, wanted: Settings) -> list[str]:
    """Set the optimizer's hyperparameters that differ from `wanted` (what the config built)
    to the config's values; a scheduled learning rate is rescaled by new/old, so the schedule
    goes on from where it was at the new scale. Returns one line per change."""
    changes = []
    current = configured_settings(slot.optimizer)
    for index, (group, want, have) in enumerate(
        zip(slot.optimizer.param_groups, wanted, current, strict=True)
    ):
        for key, value in want.items():
            if key not in have or _same(have[key], value):
                continue
            if key == "lr":
                _set_learning_rate(slot, index, float(have[key]), float(value))
            else:
                group[key] = value
            changes.append(f"{slot.name}: {key} {have[key]} → {value}")
    return changes


def _set_learning_rate(slot: OptimizerSlot, index: int, old: float, new: float) -> None:
    """The group's learning rate at the config's scale; a scheduler's base moves with it."""
    group = slot.optimizer.param_groups[index]
    if "initial_lr" not in group:  # no scheduler: the rate is the configured one
        group["lr"] = new
        return
    group["initial_lr"] = new
    group["lr"] = new if old == 0 else group["lr"] * (new / old)
    scheduler = slot.scheduler
    if scheduler is not None:
        if hasattr(scheduler, "base_lrs"):
            scheduler.base_lrs[index] = new
        last = getattr(scheduler, "_last_lr", None)
        if isinstance(last, list) and index < len(last):
            last[index] = group["lr"]


def _same(a: Any, b: Any) -> bool:
    """Equal values; a tensor learning rate (a capturable optimizer's) compared by value."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return bool(torch.equal(torch.as_tensor(a).cpu(), torch.as_tensor(b).cpu()))
    return bool(a == b)
