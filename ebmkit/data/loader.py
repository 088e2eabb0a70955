r"""An endless, resumable stream of data batches over epochs (torchdata's StatefulDataLoader)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torchdata.stateful_dataloader import StatefulDataLoader

from ebmkit.initializers.data import first_tensor

__all__ = ["ResumableLoader"]


@contextlib.contextmanager
def _quiet_set_vital() -> Iterator[None]:
    """torchdata 0.11 warns "'set_vital' is deprecated" on every iterator: that one only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="'set_vital' is deprecated")
        yield


class ResumableLoader:
    """Batches forever, epoch after epoch; its state resumes at exactly the next batch.

    Within an epoch, torchdata's StatefulDataLoader restores the position. Across epochs the
    shuffle generator is re-seeded with `seed + epoch`, so epoch e is the same permutation
    whether or not the run was interrupted (StatefulDataLoader alone would not guarantee it).

    Arguments:
        dataset: a map-style dataset whose items are x or (x, label).
        batch_size: batch size; the last incomplete batch of an epoch is dropped.
        seed: the shuffle seed.
        num_workers: loader worker processes.
    """

    def __init__(self, dataset: Any, batch_size: int, seed: int = 0, num_workers: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(dataset) < batch_size:
            raise ValueError(
                f"the dataset holds {len(dataset)} items, fewer than batch_size={batch_size}; "
                f"lower the batch size or use more data"
            )
        self.seed = seed
        self.epoch = 0
        self._generator = torch.Generator().manual_seed(seed)
        with _quiet_set_vital():
            self._loader = StatefulDataLoader(
                dataset,
                batch_size=batch_size,
                shuffle=True,
                drop_last=True,
                generator=self._generator,
                num_workers=num_workers,
            )
        self._iterator: Iterator[Any] | None = None

    def __iter__(self) -> ResumableLoader:
        return self

    def __next__(self) -> Tensor:
        with _quiet_set_vital():
            if self._iterator is None:
                self._iterator = iter(self._loader)
            try:
                return first_tensor(next(self._iterator))
            except StopIteration:
                self.epoch += 1
                self._generator.manual_seed(self.seed + self.epoch)
                self._iterator = iter(self._loader)
                return first_tensor(next(self._iterator))

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "loader": self._loader.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = state["epoch"]
        self._generator.manual_seed(self.seed + self.epoch)
        with _quiet_set_vital():
            self._loader.load_state_dict(state["loader"])
        self._iterator = None
