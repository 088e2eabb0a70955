r"""Persistent chains: a bank in which every chain continues where it stopped, round by round."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs
import torch
from torch import Tensor

from ebmkit.errors import IncompatibleError
from ebmkit.protocols import Initializer, Stateful
from ebmkit.records import ChainState, InitBatch, Round

if TYPE_CHECKING:
    from ebmkit.testing import ShapeCase

__all__ = ["Persistent"]


def _unset_like(value: Tensor, n_chains: int) -> Tensor:
    """A bank column for `value`'s per-chain entries: NaN ("not set yet") or 0 for integers."""
    shape = (n_chains, *value.shape[1:])
    fill = math.nan if value.is_floating_point() else 0
    return torch.full(shape, fill, dtype=value.dtype, device=value.device)


@attrs.define(kw_only=True)
class Persistent:
    """A bank of `n_chains` persistent chains (Tieleman 2008): each round continues some of them.

    On first use the bank is filled from `start`. Each `sample(n)` takes the next `n` chains
    of the current pass, without replacement (a pass visits every chain once, reshuffled
    each pass; a batch that straddles two passes never holds a chain twice), and hands over
    their `ChainState`s, so the sampler keeps what its kernel owns (MALA's adapted step
    sizes and ages, the per-stage entries of `samplers.Composite`) and recomputes E, ∇E and
    every cache on the current energy. `update` writes the final states back. The bank,
    the pass order and the position are part of every checkpoint: a resumed run draws the
    same chains.

    A coordinate that is a function of x and a learned map (a mirror kernel's dual point
    y = ∇G(x), a flow latent z = T⁻¹(x)) does not persist as is: the map is trained between
    rounds, so the kernel's `init` re-derives it under the current map. It is a cache in
    `extras` (not stored here), or, where a bit-identical continuation needs it carried, an
    `owned` tensor stored here that `init` re-derives whenever the map no longer reproduces
    the chain's x.

    How it differs from `Replay` (the IGEBM / JEM buffer): Replay draws slots *with*
    replacement, restarts a fraction from noise and stores positions only, so a chain may
    be skipped for many rounds or copied twice and its kernel state is lost; Persistent
    continues every chain in turn with its full state, never restarts one, and `n_steps`
    per round over K rounds equals one chain of K·n_steps steps (with `shuffle=False` and
    `n = n_chains`, bit for bit).

    Per-chain entries of chains not yet run are "not set": NaN in floating tensors (a
    kernel uses its configured value there, e.g. MALA's step size), 0 in integer ones.

    Arguments:
        n_chains: the number of chains in the bank (≥ the batch size asked for).
        start: the initializer that fills the bank once (e.g. Noise, Data).
        shuffle: reshuffle the visiting order at each pass (False: 0, 1, 2, ... every pass).

    References:
        Tieleman (2008), Training restricted Boltzmann machines using approximations to the
        likelihood gradient.
    """

    n_chains: int = attrs.field(
        validator=[attrs.validators.instance_of(int), attrs.validators.ge(1)]
    )
    start: Initializer
    shuffle: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    positions: Tensor | None = attrs.field(default=None, init=False, repr=False)
    step_sizes: Tensor | None = attrs.field(default=None, init=False, repr=False)
    owned: dict[str, Tensor] = attrs.field(factory=dict, init=False, repr=False)
    order: Tensor | None = attrs.field(default=None, init=False, repr=False)
    cursor: int = attrs.field(default=0, init=False, repr=False)

    @classmethod
    def testing_cases(cls, shape: Sequence[int]) -> list[ShapeCase]:
        """For the composability matrix: a bank of 8 chains started from uniform noise of
        `shape` (batches up to 8)."""
        from ebmkit.initializers.noise import Noise
        from ebmkit.testing import ShapeCase

        bank = cls(n_chains=8, start=Noise(shape=tuple(shape)))
        return [ShapeCase(name="noise-bank", component=bank)]

    def check_compatible(self, **components: Any) -> None:
        """Refuse a bank smaller than the batch a round asks for; then what `start` declares
        (e.g. Noise of another shape than the data's)."""
        batch_size = components.get("batch_size")
        if batch_size is not None and batch_size > self.n_chains:
            raise IncompatibleError(
                f"initializers.Persistent.n_chains = {self.n_chains} is smaller than the batch "
                f"a round draws ({batch_size} chains); set initializers.Persistent.n_chains >= "
                f"{batch_size}, or a smaller batch_size on the trainer"
            )
        check = getattr(self.start, "check_compatible", None)
        if callable(check):
            check(**components)

    def _filled(self) -> Tensor:
        if self.positions is None:
            self.positions = self.start.sample(self.n_chains).x.detach().clone()
            if self.positions.shape[0] != self.n_chains:
                raise ValueError(
                    f"initializers.Persistent: start gave {self.positions.shape[0]} chains "
                    f"for a bank of n_chains = {self.n_chains}"
                )
        return self.positions

    def _new_pass(self, taken: list[Tensor]) -> Tensor:
        """The next pass's order; chains already in the batch being drawn go last."""
        device = self.positions.device
        if not self.shuffle:
            order = torch.arange(self.n_chains, device=device)
        else:
            order = torch.randperm(self.n_chains, device=device)
        if taken:
            in_batch = torch.zeros(self.n_chains, dtype=torch.bool, device=device)
            in_batch[torch.cat(taken)] = True
            order = torch.cat([order[~in_batch[order]], order[in_batch[order]]])
        return order

    def _next_indices(self, n: int) -> Tensor:
        taken: list[Tensor] = []
        remaining = n
        while remaining:
            if self.order is None or self.cursor == self.n_chains:
                self.order, self.cursor = self._new_pass(taken), 0
            count = min(remaining, self.n_chains - self.cursor)
            taken.append(self.order[self.cursor : self.cursor + count])
            self.cursor += count
            remaining -= count
        return torch.cat(taken)

    def sample(self, n: int) -> InitBatch:
        """The next `n` chains of the bank, with their states to continue."""
        if n > self.n_chains:
            raise ValueError(
                f"initializers.Persistent: a batch of {n} chains from a bank of n_chains = "
                f"{self.n_chains}; set n_chains >= the batch size ({n})"
            )
        positions = self._filled()
        indices = self._next_indices(n)
        x = positions[indices]
        state = ChainState(
            x=x,
            energy=None,
            grad=None,
            step_size=None if self.step_sizes is None else self.step_sizes[indices],
            owned={name: value[indices] for name, value in self.owned.items()},
        )
        return InitBatch(x=x, indices=indices, state=state)

    def update(self, round: Round) -> None:
        """Write the round's final chain states back to the bank slots they came from."""
        indices = round.init.indices
        if indices is None or round.init.state is None:
            raise ValueError(
                "initializers.Persistent.update needs the InitBatch its own `sample` returned"
            )
        positions = self._filled()
        final = round.result.state
        positions[indices] = final.x.detach().to(positions.device, positions.dtype)
        if final.step_size is not None:
            if self.step_sizes is None:
                self.step_sizes = _unset_like(final.step_size, self.n_chains).to(positions.device)
            self.step_sizes[indices] = final.step_size.detach().to(positions.device)
        for name, value in final.owned.items():
            if name not in self.owned:
                self.owned[name] = _unset_like(value, self.n_chains).to(positions.device)
            self.owned[name][indices] = value.detach().to(positions.device)

    def state_dict(self) -> dict[str, Any]:
        """The bank (positions, step sizes, owned tensors) and where the pass stands."""

        def copy(value: Tensor | None) -> Tensor | None:
            return None if value is None else value.clone()

        state = {
            "positions": copy(self.positions),
            "step_sizes": copy(self.step_sizes),
            "owned": {name: value.clone() for name, value in self.owned.items()},
            "order": copy(self.order),
            "cursor": self.cursor,
        }
        if isinstance(self.start, Stateful):
            state["start"] = self.start.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned; the bank size must match `n_chains`."""
        positions = state["positions"]
        if positions is not None and positions.shape[0] != self.n_chains:
            raise ValueError(
                f"the checkpoint's persistent bank holds {positions.shape[0]} chains but this "
                f"config has Persistent.n_chains = {self.n_chains}; use the same n_chains"
            )
        self.positions = None if positions is None else positions.clone()
        self.step_sizes = None if state["step_sizes"] is None else state["step_sizes"].clone()
        self.owned = {name: value.clone() for name, value in state["owned"].items()}
        self.order = None if state["order"] is None else state["order"].clone()
        self.cursor = int(state["cursor"])
        if "start" in state and isinstance(self.start, Stateful):
            self.start.load_state_dict(state["start"])
