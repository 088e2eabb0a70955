r"""Chains that start at data points plus noise (contrastive divergence style)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs
import torch

from ebmkit.records import InitBatch, Round

if TYPE_CHECKING:
    from ebmkit.testing import ShapeCase

__all__ = ["Data"]


def first_tensor(item: Any) -> torch.Tensor:
    """A dataset item's input tensor: the item itself, or the first entry of (x, label)."""
    return item[0] if isinstance(item, tuple | list) else item


@attrs.define(kw_only=True)
class Data:
    """x0 = a random data point + N(0, noise_std²) noise (CD-k's start).

    Arguments:
        dataset: an indexable dataset whose items are x or (x, label).
        noise_std: standard deviation of the added Gaussian noise.
        device: where the batch is put.
    """

    dataset: Any
    noise_std: float = attrs.field(default=0.0, validator=attrs.validators.ge(0.0))
    device: str = "cpu"

    def __attrs_post_init__(self) -> None:
        if len(self.dataset) == 0:
            raise ValueError("the Data initializer needs a non-empty dataset")

    @classmethod
    def testing_cases(cls, shape: Sequence[int]) -> list[ShapeCase]:
        """For the composability matrix: 16 points of `shape` in [−1, 1] (seeded; the global
        RNG untouched) as its own dataset, with noise 0.01 (CD's start)."""
        from ebmkit.testing import ShapeCase

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            points = torch.rand(16, *shape) * 2 - 1
        return [ShapeCase(name="cd", component=cls(dataset=points, noise_std=0.01))]

    def sample(self, n: int) -> InitBatch:
        """`n` data points drawn with replacement, plus noise."""
        indices = torch.randint(len(self.dataset), (n,))
        x = torch.stack([first_tensor(self.dataset[int(i)]) for i in indices]).to(self.device)
        if self.noise_std > 0:
            x = x + self.noise_std * torch.randn_like(x)
        return InitBatch(x=x, indices=indices)

    def update(self, round: Round) -> None:
        """Data learns nothing."""
