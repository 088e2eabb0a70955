r"""Persistent chains: a replay buffer of past samples, some reinitialised from noise each time."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs
import torch

from ebmkit.initializers.noise import Noise
from ebmkit.records import InitBatch, Round

if TYPE_CHECKING:
    from ebmkit.testing import ShapeCase

__all__ = ["Replay"]


@attrs.define(kw_only=True)
class Replay:
    """A replay buffer (IGEBM / JEM): draw stored chains, restart a few from noise.

    Each drawn chain is replaced by a fresh noise sample with probability `reinit_prob`;
    after the round the final states are written back to the slots they came from. The
    buffer starts full of noise. Its contents are part of every checkpoint.

    Arguments:
        noise: the Noise initializer that fills and refreshes the buffer.
        capacity: number of stored chains.
        reinit_prob: probability that a drawn chain restarts from noise (0.05 in IGEBM/JEM).

    References:
        Du & Mordatch (2019), Implicit generation and generalization in energy-based models.
    """

    noise: Noise
    capacity: int = attrs.field(default=10000, validator=attrs.validators.ge(1))
    reinit_prob: float = attrs.field(
        default=0.05, validator=[attrs.validators.ge(0.0), attrs.validators.le(1.0)]
    )
    buffer: torch.Tensor | None = attrs.field(default=None, init=False, repr=False)

    @classmethod
    def testing_cases(cls, shape: Sequence[int]) -> list[ShapeCase]:
        """For the composability matrix: 16 slots of uniform noise of `shape`, a quarter
        restarted per draw (so both branches run in a tiny batch)."""
        from ebmkit.testing import ShapeCase

        buffer = cls(noise=Noise(shape=tuple(shape)), capacity=16, reinit_prob=0.25)
        return [ShapeCase(name="buffer", component=buffer)]

    def check_compatible(self, **components: Any) -> None:
        """What its `noise` declares (Noise of another shape than the data's)."""
        check = getattr(self.noise, "check_compatible", None)
        if callable(check):
            check(**components)

    def _filled(self) -> torch.Tensor:
        if self.buffer is None:
            self.buffer = self.noise.draw(self.capacity)
        return self.buffer

    def sample(self, n: int) -> InitBatch:
        """`n` chains: stored states, each restarted from noise with prob. `reinit_prob`."""
        buffer = self._filled()
        indices = torch.randint(self.capacity, (n,), device=buffer.device)
        restart = torch.rand(n, device=buffer.device) < self.reinit_prob
        fresh = self.noise.draw(n).to(buffer.device)
        mask = restart.reshape(n, *(1,) * (buffer.dim() - 1))
        x = torch.where(mask, fresh, buffer[indices])
        return InitBatch(x=x, indices=indices, extras={"reinitialized": restart})

    def update(self, round: Round) -> None:
        """Write the round's final states back to the slots they were drawn from."""
        if round.init.indices is None:
            raise ValueError("Replay.update needs the InitBatch its own `sample` returned")
        buffer = self._filled()
        buffer[round.init.indices] = round.result.x.detach().to(buffer.device, buffer.dtype)

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": None if self.buffer is None else self.buffer.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        buffer = state["buffer"]
        if buffer is not None and buffer.shape[0] != self.capacity:
            raise ValueError(
                f"the checkpoint's replay buffer holds {buffer.shape[0]} chains but this "
                f"config has Replay.capacity = {self.capacity}; use the same capacity to resume"
            )
        if buffer is not None and tuple(buffer.shape[1:]) != self.noise.shape:
            raise ValueError(
                f"the checkpoint's replay buffer holds chains of shape {tuple(buffer.shape[1:])} "
                f"but this config has Noise.shape = {self.noise.shape}; use the same shape"
            )
        self.buffer = None if buffer is None else buffer.clone()
