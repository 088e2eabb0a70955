r"""The divergence guard: a NaN or an exploding energy stops the run in the round it appears."""

from __future__ import annotations

import torch
from torch import Tensor

from ebmkit.errors import DivergenceError

__all__ = ["check_learnable", "check_round"]


def check_round(
    round_index: int, watched: dict[str, Tensor], max_energy_gap: float | None, energy_gap: Tensor
) -> None:
    """Raise DivergenceError naming the round and every quantity that went non-finite.

    One host sync per round: all quantities are checked in one reduction first, and only
    on failure is each inspected to name it.
    """
    finite = torch.stack([value.detach().isfinite().all() for value in watched.values()])
    healthy = finite.all()
    if max_energy_gap is not None:
        healthy = healthy & (energy_gap.abs() <= max_energy_gap)
    if bool(healthy):
        return
    bad = [name for name, value in watched.items() if not bool(value.isfinite().all())]
    if bad:
        message = (
            f"round {round_index}: non-finite {', '.join(bad)}; training stopped (the last "
            f"checkpoint before this round is kept). Lower the learning rate or the sampler's "
            f"step size, or add the regulariser (alpha) / gradient clipping"
        )
    else:
        message = (
            f"round {round_index}: energy gap {float(energy_gap):.4g} exceeds max_energy_gap "
            f"= {max_energy_gap}; training stopped (the last checkpoint before this round is "
            f"kept). Raise the bound or stabilise training (alpha, smaller step size)"
        )
    raise DivergenceError(message, round_index)


def check_learnable(
    round_index: int, path: str, learnable: object, losses: dict[str, Tensor]
) -> None:
    """Raise DivergenceError when a Learnable's loss is non-finite, naming it and the loss.

    One host sync per Learnable and round; the message reads e.g.
    "Generator loss/teach is nan at round 12 (the Learnable at initializer.generator)".
    """
    if not losses:
        return
    finite = torch.stack([value.detach().isfinite().all() for value in losses.values()])
    if bool(finite.all()):
        return
    bad = []
    for name, value in losses.items():
        value = value.detach()
        if not bool(value.isfinite().all()):
            what = "nan" if bool(value.isnan().any()) else "inf"
            bad.append(f"{name} is {what}")
    message = (
        f"{type(learnable).__name__} {', '.join(bad)} at round {round_index} (the Learnable at "
        f"{path}); training stopped (the last checkpoint before this round is kept). Lower "
        f"its learning rate or check what its loss reads from the round"
    )
    raise DivergenceError(message, round_index)
