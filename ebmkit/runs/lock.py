r"""One run per folder: a lock file naming its holder, taken atomically, stale ones taken over."""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from ebmkit.errors import EbmkitError

__all__ = ["LOCK_NAME", "RunLock", "RunLockedError"]

LOCK_NAME = ".ebmkit.lock"


class RunLockedError(EbmkitError):
    """Another live `ebmkit run` holds the run folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """Holds `<run_dir>/.ebmkit.lock` (PID, host, start time) while a run writes the folder.

    The file is written whole to a temporary name and hard-linked into place, which fails
    if a lock exists: two runs can never both hold it. A lock whose process is gone (same
    host, dead PID) or that cannot be read is stale: it is taken over, with a note on stderr.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder, RunLock(Path(folder)) as lock:
        ...     lock.path.name
        '.ebmkit.lock'
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_NAME
        self.record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        self.held = False

    def acquire(self) -> None:
        """Take the lock, or raise RunLockedError naming the live holder."""
        for _ in range(3):
            if self._try_link():
                self.held = True
                return
            holder = self._holder()
            if holder is not None and not self._stale(holder):
                raise RunLockedError(
                    f"{self.path.parent} is in use by another ebmkit run (pid {holder['pid']} "
                    f"on {holder['host']}, started {holder['started']}); wait for it to end, "
                    f"or choose another --out"
                )
            described = (
                "an unreadable lock"
                if holder is None
                else f"the lock of pid {holder['pid']} (no longer running)"
            )
            print(f"ebmkit: note: taking over {described} in {self.path.parent}", file=sys.stderr)
            self.path.unlink(missing_ok=True)
        raise RunLockedError(f"could not take the lock {self.path}: it keeps reappearing")

    def release(self) -> None:
        """Remove the lock if this process still holds it."""
        if self.held and (self._holder() or {}).get("pid") == self.record["pid"]:
            self.path.unlink(missing_ok=True)
        self.held = False

    def _try_link(self) -> bool:
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".lock-")
        try:
            with os.fdopen(handle, "w") as stream:
                json.dump(self.record, stream)
            os.link(temporary, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(temporary)

    def _holder(self) -> dict[str, Any] | None:
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(holder, dict) or not {"pid", "host", "started"} <= set(holder):
            return None
        return holder

    def _stale(self, holder: dict[str, Any]) -> bool:
        return holder["host"] == self.record["host"] and not _alive(int(holder["pid"]))

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
