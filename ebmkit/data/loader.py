r"""An endless, resumable stream of data batches over epochs (torchdata's StatefulDataLoader)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DistributedSampler
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

    In a data-parallel run (`world_size` > 1) each rank reads a disjoint slice of every
    epoch's permutation (torch's DistributedSampler, seeded `seed` and set to the epoch:
    the permutation is the same on every rank, rank r takes items r, r + W, ...), resuming
    exactly as well; the tail that does not divide evenly is dropped.

    Arguments:
        dataset: a map-style dataset whose items are x or (x, label).
        batch_size: batch size (per rank); the last incomplete batch of an epoch is dropped.
        seed: the shuffle seed.
        num_workers: loader worker processes.
        rank, world_size: this process's rank and the number of ranks (0 and 1: all data).
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        seed: int = 0,
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if len(dataset) // world_size < batch_size:
            shard = "" if world_size == 1 else f" ({len(dataset) // world_size} per rank)"
            raise ValueError(
                f"the dataset holds {len(dataset)} items{shard}, fewer than "
                f"batch_size={batch_size}; lower the batch size or use more data"
            )
        self.seed = seed
        self.epoch = 0
        self._generator = torch.Generator().manual_seed(seed)
        self._sampler: DistributedSampler | None = None
        if world_size > 1:
            self._sampler = DistributedSampler(
                dataset,
                num_replicas=world_size,
                rank=rank,
                shuffle=True,
                seed=seed,
                drop_last=True,
            )
        with _quiet_set_vital():
            if self._sampler is None:
                self._loader = StatefulDataLoader(
                    dataset,
                    batch_size=batch_size,
                    shuffle=True,
                    drop_last=True,
                    generator=self._generator,
                    num_workers=num_workers,
                )
            else:
                self._loader = StatefulDataLoader(
                    dataset,
                    batch_size=batch_size,
                    sampler=self._sampler,
                    drop_last=True,
                    # Each new iterator draws a base seed: from this generator, not the global
                    # one (a resumed run makes an iterator mid-epoch, the uninterrupted not).
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
                self._reseed()
                self._iterator = iter(self._loader)
                return first_tensor(next(self._iterator))

    def _reseed(self) -> None:
        """Make the shuffle of `self.epoch` the one the next iterator draws."""
        self._generator.manual_seed(self.seed + self.epoch)
        if self._sampler is not None:
            self._sampler.set_epoch(self.epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "loader": self._loader.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = state["epoch"]
        self._reseed()
        with _quiet_set_vital():
            self._loader.load_state_dict(state["loader"])
        self._iterator = None
