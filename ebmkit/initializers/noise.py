r"""Chains that start from noise: uniform in a box or Gaussian."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs
import torch

from ebmkit.compatibility import IncompatibleError
from ebmkit.records import InitBatch, Round
from ebmkit.validators import one_of

if TYPE_CHECKING:
    from ebmkit.testing import ShapeCase

__all__ = ["Noise"]


@attrs.define(kw_only=True)
class Noise:
    """x0 ~ U(low, high)^d or N(mean, std²)^d, the short-run EBM start.

    Arguments:
        shape: the shape of one sample, e.g. (2,) or (3, 32, 32).
        distribution: "uniform" or "gaussian".
        low, high: the uniform box (default (−1, 1), the image range).
        mean, std: the Gaussian.
        device: where the samples are made.

    Example:
        >>> Noise(shape=(2,)).sample(5).x.shape
        torch.Size([5, 2])
    """

    shape: tuple[int, ...] = attrs.field(converter=tuple)
    distribution: str = attrs.field(default="uniform", validator=one_of("uniform", "gaussian"))
    low: float = -1.0
    high: float = 1.0
    mean: float = 0.0
    std: float = attrs.field(default=1.0, validator=attrs.validators.gt(0.0))
    device: str = "cpu"

    def __attrs_post_init__(self) -> None:
        if self.low >= self.high:
            raise ValueError(f"Noise needs low < high, got low={self.low}, high={self.high}")
        if not self.shape or min(self.shape) < 1:
            raise ValueError(f"Noise.shape must be positive sizes, got {self.shape}")

    @classmethod
    def testing_cases(cls, shape: Sequence[int]) -> list[ShapeCase]:
        """For the composability matrix: uniform in (−1, 1) (the image range), for chains of
        `shape` (any shape)."""
        from ebmkit.testing import ShapeCase

        return [ShapeCase(name="uniform", component=cls(shape=tuple(shape)))]

    def check_compatible(
        self,
        *,
        sampler: object,
        initializer: object,
        energy: object,
        shape: tuple | None,
        batch_size: int | None = None,
    ) -> None:
        """Refuse chains of another shape than `shape` (IncompatibleError naming the fix)."""
        if shape is not None and tuple(shape) != self.shape:
            raise IncompatibleError(
                f"initializers.Noise draws chains of shape {self.shape} but the data are "
                f"{tuple(shape)} per sample; set initializers.Noise.shape = {tuple(shape)}"
            )

    def draw(self, n: int) -> torch.Tensor:
        """`n` noise samples of `shape`."""
        size = (n, *self.shape)
        if self.distribution == "uniform":
            unit = torch.rand(size, device=self.device)
            return self.low + (self.high - self.low) * unit
        return self.mean + self.std * torch.randn(size, device=self.device)

    def sample(self, n: int) -> InitBatch:
        """Fresh noise for `n` chains."""
        return InitBatch(x=self.draw(n))

    def update(self, round: Round) -> None:
        """Noise learns nothing."""
