r"""Checkpoint files: atomic writes, the newest found, the oldest pruned, corrupt ones named."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path
from typing import Any

import torch

from ebmkit.errors import CheckpointError
from ebmkit.processes import process_alive

__all__ = [
    "checkpoint_round",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "remove_orphaned_temporaries",
    "save_checkpoint",
]

_NAME = re.compile(r"^round-(\d+)\.pt$")
_TEMPORARY = re.compile(r"^\.tmp-(?:(\d+)-)?[\w-]*\.pt$")  # .tmp-<pid>-<token>.pt (older: no pid)


def checkpoint_round(path: Path) -> int:
    """The round a checkpoint file `round-<N>.pt` holds, read from its name."""
    match = _NAME.match(path.name)
    if match is None:
        raise ValueError(f"{path} is not named like a checkpoint (round-<N>.pt)")
    return int(match.group(1))


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

    A crash mid-write leaves the previous checkpoints intact; an OSError (disk full, no
    permission) becomes a CheckpointError saying so. The file gets the mode every other file
    of the run gets (0644 under the usual umask 022). A kill mid-write leaves its temporary
    `.tmp-<pid>-<token>.pt`, which `remove_orphaned_temporaries` clears at the next start.
    """
    if keep < 1:
        raise ValueError(f"keep_checkpoints must be >= 1, got {keep}")
    path = directory / f"round-{round_index:08d}.pt"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle, temporary = _new_temporary(directory)
    except OSError as error:
        raise _write_failed(path, error) from error
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(state, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except OSError as error:  # disk full, permissions, a vanished folder: say what is safe
        Path(temporary).unlink(missing_ok=True)
        raise _write_failed(path, error) from error
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def _write_failed(path: Path, error: OSError) -> CheckpointError:
    if list_checkpoints(path.parent):
        return CheckpointError(
            f"could not write checkpoint {path} ({error}); the checkpoints already in "
            f"{path.parent} are intact. Free space or fix the folder, then continue with "
            f"--resume"
        )
    return CheckpointError(
        f"could not write checkpoint {path} ({error}); it would have been the run's first, so "
        f"there is none to continue from. Free space or fix the folder, then run the same "
        f"command with --resume: it starts the run afresh there, keeping its logs in a dated "
        f"subfolder"
    )


def _new_temporary(directory: Path) -> tuple[int, Path]:
    """A new `.tmp-<pid>-<token>.pt` in `directory`, opened for writing with mode 0o666 less
    the umask (as `open()` creates files; `tempfile.mkstemp` would make it 0600)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        temporary = directory / f".tmp-{os.getpid()}-{secrets.token_hex(4)}.pt"
        try:
            return os.open(temporary, flags, 0o666), temporary
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {directory}")


def remove_orphaned_temporaries(directory: Path) -> list[Path]:
    """Remove the `.tmp-*.pt` files a kill during `save_checkpoint` left in `directory`.

    Call it when a run starts, after it holds the run folder (its lock): a temporary whose
    name carries the PID of another live process on this machine is kept, in case that
    process is still writing it. Returns the files removed.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / ".tmp-abcd1234.pt").write_bytes(b"half a checkpoint")
        >>> [path.name for path in remove_orphaned_temporaries(folder)]
        ['.tmp-abcd1234.pt']
    """
    if not directory.is_dir():
        return []
    removed = []
    for path in sorted(directory.iterdir()):
        if not (match := _TEMPORARY.match(path.name)):
            continue
        if match.group(1) is not None and _alive_elsewhere(int(match.group(1))):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


def _alive_elsewhere(pid: int) -> bool:
    """Whether `pid` is a live process other than this one."""
    return pid != os.getpid() and process_alive(pid)


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
