r"""Every rank's own part of a data-parallel checkpoint: chains, data position, guard, RNGs.

The energy, its optimizer and the Learnables are the same on every rank (their gradients are
averaged), so rank 0's copy is saved once; what differs per rank — the chains (a replay or
persistent shard, a stateful sampler), the data loader's position in its shard, the
divergence guard's history and the random generators — is gathered into
``state["distributed"]["ranks"][r]``. A single-process checkpoint has no such entry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ebmkit.errors import CheckpointError

__all__ = ["RANK_KEYS", "checkpoint_world_size", "rank_part", "with_rank_parts", "for_rank"]

RANK_KEYS = ("components", "loader", "guard", "rng")
"""The entries of a checkpoint that each rank has its own of."""


def rank_part(state: dict[str, Any]) -> dict[str, Any]:
    """This rank's own entries of its full `state` (the `RANK_KEYS` it holds)."""
    return {key: state[key] for key in RANK_KEYS if key in state}


def with_rank_parts(state: dict[str, Any], parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Rank 0's `state` holding every rank's part (`parts`, in rank order)."""
    return {**state, "distributed": {"world_size": len(parts), "ranks": parts}}


def checkpoint_world_size(state: dict[str, Any]) -> int:
    """How many processes wrote `state` (1 for a single-process checkpoint)."""
    return int((state.get("distributed") or {}).get("world_size", 1))


def for_rank(state: dict[str, Any], rank: int, world_size: int, path: Path) -> dict[str, Any]:
    """`state` as rank `rank` of `world_size` resumes it: its own part in place of rank 0's.

    Raises CheckpointError when the checkpoint was written by another number of processes
    (its chains and data shards are split for that number).
    """
    saved = checkpoint_world_size(state)
    if saved != world_size:

        def processes(n: int) -> str:
            return "1 process" if n == 1 else f"{n} processes"

        raise CheckpointError(
            f"checkpoint {path} was written by a run of {processes(saved)} (world size "
            f"{saved}) but this run has {processes(world_size)} (world size {world_size}); "
            f"its chains and data shards belong to {saved} rank(s), so resume it with "
            f"{'a plain ebmkit run' if saved == 1 else f'torchrun and {saved} processes in all'} "
            f"(world size {saved}), or start a new run with another --out"
        )
    if world_size == 1:
        return state
    return {**state, **state["distributed"]["ranks"][rank]}
