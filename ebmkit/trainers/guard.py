r"""The divergence guard: a NaN or a blow-up stops the run in the round it appears, named."""

from __future__ import annotations

import math
import statistics
from collections import deque
from typing import Any

import attrs
import torch
from torch import Tensor

from ebmkit.errors import DivergenceError
from ebmkit.runs import distributed

__all__ = ["BlowupGuard", "agree_on_divergence", "check_learnable", "check_round"]

_ADVICE = (
    "Lower the learning rate or the sampler's step size, or add the regulariser (alpha) / "
    "gradient clipping"
)


@attrs.define(kw_only=True)
class BlowupGuard:
    """Stops a run whose energy gap or parameter-gradient norm jumps far above its running scale.

    NaN/inf only show the last stage of a divergence; a step size a million times too large
    trains on garbage with finite numbers (gradient norms 1e6–1e11). Each round the guard
    compares |energy gap| and the gradient norm with the median of their last `window`
    values: a value above `factor` × max(median, floor) stops the run. The scale needs
    `min_rounds` rounds of history; the floors (1 energy unit for the gap, 1e-3 for the norm)
    keep a nearly flat start from arming it on noise. Its history is checkpointed.

    Arguments:
        factor: how far above its running median a value may go (None: the check is off).
        window: how many recent rounds the running median covers.
        min_rounds: rounds of history before the check acts.
    """

    factor: float | None = 1e3
    window: int = attrs.field(default=50, validator=attrs.validators.ge(1))
    min_rounds: int = attrs.field(default=2, validator=attrs.validators.ge(1))
    history: dict[str, deque] = attrs.field(init=False)

    FLOORS = {"energy gap": 1.0, "parameter gradient norm": 1e-3}

    def __attrs_post_init__(self) -> None:
        self.history = {name: deque(maxlen=self.window) for name in self.FLOORS}

    def check(self, round_index: int, values: dict[str, float]) -> None:
        """Compare this round's |gap| and gradient norm with their running scales, then record."""
        if self.factor is None:
            return
        for name, value in values.items():
            past = self.history[name]
            if len(past) >= self.min_rounds:
                scale = max(statistics.median(past), self.FLOORS[name])
                if value > self.factor * scale:
                    raise DivergenceError(
                        f"round {round_index}: {name} {value:.3g} is {value / scale:.3g}× its "
                        f"running scale {scale:.3g} (median of the last {len(past)} rounds; the "
                        f"guard stops above {self.factor:g}×)",
                        round_index,
                        f"{_ADVICE}; the bound is trainers.Contrastive.blowup_factor (None "
                        f"turns this check off)",
                    )
        for name, value in values.items():
            self.history[name].append(value)

    def state_dict(self) -> dict[str, Any]:
        return {name: list(values) for name, values in self.history.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, values in state.items():
            self.history[name] = deque(values, maxlen=self.window)


def check_round(
    round_index: int,
    watched: dict[str, Tensor],
    max_energy_gap: float | None,
    energy_gap: Tensor,
    grad_norm: Tensor,
    blowup: BlowupGuard | None = None,
) -> None:
    """Raise DivergenceError naming the round and every quantity that went wrong.

    One host sync per round: finiteness, |gap| and the gradient norm come back together;
    only on failure is each quantity inspected to name it.
    """
    finite = torch.stack([value.detach().isfinite().all() for value in watched.values()]).all()
    summary = torch.stack(
        [finite.double(), energy_gap.detach().double().abs(), grad_norm.detach().double()]
    )
    all_finite, gap, norm = summary.tolist()
    if not all_finite:
        bad = [name for name, value in watched.items() if not bool(value.isfinite().all())]
        raise DivergenceError(
            f"round {round_index}: non-finite {', '.join(bad)}", round_index, _ADVICE
        )
    if max_energy_gap is not None and gap > max_energy_gap:
        raise DivergenceError(
            f"round {round_index}: energy gap {float(energy_gap):.4g} exceeds max_energy_gap "
            f"= {max_energy_gap}",
            round_index,
            "Raise the bound or stabilise training (alpha, smaller step size)",
        )
    if blowup is not None and math.isfinite(gap) and math.isfinite(norm):
        blowup.check(round_index, {"energy gap": gap, "parameter gradient norm": norm})


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
    raise DivergenceError(
        f"{type(learnable).__name__} {', '.join(bad)} at round {round_index} (the Learnable at "
        f"{path})",
        round_index,
        "Lower its learning rate or check what its loss reads from the round",
    )


def agree_on_divergence(error: DivergenceError | None, round_index: int) -> None:
    """Raise `error` (a check's verdict on this rank, None if it passed) on every rank at once.

    In a data-parallel run every rank calls this at the same point of the round: one
    all-reduced flag says whether any rank diverged; only then are the messages gathered, and
    every rank raises the same DivergenceError naming the first rank that diverged and its
    message. No rank is left waiting for the others in a later collective. A single process
    raises `error` itself.
    """
    if not distributed.is_distributed():
        if error is not None:
            raise error
        return
    if not distributed.any_rank(error is not None):
        return
    messages = distributed.all_objects(None if error is None else (error.cause, error.advice))
    failed = [(number, found) for number, found in enumerate(messages) if found is not None]
    first, (cause, advice) = failed[0]
    others = [str(number) for number, _ in failed[1:]]
    also = f" (rank {', '.join(others)} too)" if others else ""
    raise DivergenceError(
        f"rank {first} of {len(messages)}: {cause}{also}; every rank stops", round_index, advice
    )
