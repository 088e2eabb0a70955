r"""Where a run's numbers and pictures go: tensorboard, metrics.jsonl and PNG files."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

__all__ = ["NullLogger", "RunLogger"]


class RunLogger:
    """Writes scalars to tensorboard (`tb/`) and `metrics.jsonl`, figures and images to both.

    Arguments:
        run_dir: the run directory; `tb/` and `metrics.jsonl` are created inside it.
        purge_step: a resumed run's first round: tensorboard discards the earlier run's
            events from this step on (they are logged again), so every round shows once.
    """

    def __init__(self, run_dir: Path, purge_step: int | None = None) -> None:
        self.run_dir = run_dir
        if purge_step is not None:
            _wait_past_existing_event_files(run_dir / "tb")
        self.writer = SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=purge_step)
        self.metrics_path = run_dir / "metrics.jsonl"

    def scalars(self, round_index: int, values: dict[str, float]) -> None:
        """Log scalars for a round (one tensorboard tag each, one JSON line for all)."""
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, round_index)
        record = {"round": round_index, **{k: _json_number(v) for k, v in values.items()}}
        with self.metrics_path.open("a") as stream:
            stream.write(json.dumps(record) + "\n")

    def figure(self, tag: str, round_index: int, figure: Any) -> None:
        self.writer.add_figure(tag, figure, round_index, close=False)

    def image(self, tag: str, round_index: int, image: Tensor) -> None:
        """A (3, H, W) image in [0, 1]."""
        self.writer.add_image(tag, image, round_index)

    def text(self, tag: str, text: str, step: int | None = None) -> None:
        self.writer.add_text(tag, text, global_step=step)

    def flush(self) -> None:
        """Write tensorboard's buffered events to disk (metrics.jsonl is written as it goes)."""
        self.writer.flush()

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class NullLogger:
    """A RunLogger that writes nothing: the logger of every rank but 0 in a data-parallel run."""

    def scalars(self, round_index: int, values: dict[str, float]) -> None:
        """Drop the values (rank 0 logs the run's)."""

    def figure(self, tag: str, round_index: int, figure: Any) -> None:
        """Drop the figure."""

    def image(self, tag: str, round_index: int, image: Tensor) -> None:
        """Drop the image."""

    def text(self, tag: str, text: str, step: int | None = None) -> None:
        """Drop the text."""

    def flush(self) -> None:
        """Nothing to write."""

    def close(self) -> None:
        """Nothing to close."""


def _json_number(value: float) -> float | str:
    """JSON has no NaN/inf: write them as strings so the file stays valid JSON."""
    return value if math.isfinite(value) else str(value)


def _wait_past_existing_event_files(log_dir: Path) -> None:
    """Start a resumed run's event file in a later second than every earlier one.

    Tensorboard reads a folder's event files in name order, and the name starts with the
    creation second: a file made in the same second as the killed run's could sort first,
    and its purge marker would then discard the earlier rounds instead of the repeated ones.
    """
    stamps = []
    for path in log_dir.glob("events.out.tfevents.*"):
        parts = path.name.split(".")
        if len(parts) > 3 and parts[3].isdigit():
            stamps.append(int(parts[3]))
    if stamps:
        while int(time.time()) <= max(stamps):
            time.sleep(0.05)
