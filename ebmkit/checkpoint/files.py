r"""Checkpoint files: atomic writes, the newest found, the oldest pruned, corrupt ones named."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from ebmkit.errors import CheckpointError

__all__ = ["latest_checkpoint", "list_checkpoints", "load_checkpoint", "save_checkpoint"]

_NAME = re.compile(r"^round-(\d+)\.pt$")


def list_checkpoints(directory: Path) -> list[Path]:
    """The checkpoints in `directory`, oldest round first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [path for _, path in sorted(found)]


def latest_checkpoint(directory: Path) -> Path | None:
    """The checkpoint of the highest round in `directory`, or None."""
    checkpoints = list_checkpoints(directory)
    return checkpoints[-1] if checkpoints else None


def save_checkpoint(state: dict[str, Any], directory: Path, round_index: int, keep: int) -> Path:
    """Write `state` as `round-<N>.pt` atomically (temp file + os.replace); keep the last `keep`.

    A crash mid-write leaves the previous checkpoints intact and no partial file behind; an
    OSError (disk full, no permission) becomes a CheckpointError saying so.
    """
    if keep < 1:
        raise ValueError(f"keep_checkpoints must be >= 1, got {keep}")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"round-{round_index:08d}.pt"
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(state, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except OSError as error:  # disk full, permissions, a vanished folder: say what is safe
        Path(temporary).unlink(missing_ok=True)
        raise CheckpointError(
            f"could not write checkpoint {path} ({error}); the checkpoints already in "
            f"{directory} are intact. Free space or fix the folder, then continue with --resume"
        ) from error
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink()
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint (tensors and plain data only: `weights_only=True`)."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(error).__name__}: {error}); it is "
            f"corrupt or not an ebmkit checkpoint. Remove it to resume from an older one in "
            f"{path.parent}, or start a new run with another --out"
        ) from error
    if not isinstance(state, dict) or "round" not in state:
        raise CheckpointError(
            f"checkpoint {path} is not an ebmkit checkpoint (no 'round' entry); remove it or "
            f"start a new run with another --out"
        )
    return state
