r"""One run per folder: a lock file naming its holder, taken atomically, stale ones taken over."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from ebmkit.errors import EbmkitError
from ebmkit.processes import process_alive

__all__ = ["LOCK_NAME", "RunLock", "RunLockedError"]

LOCK_NAME = ".ebmkit.lock"


class RunLockedError(EbmkitError):
    """Another live `ebmkit run` holds the run folder."""


class RunLock:
    """Holds `<run_dir>/.ebmkit.lock` (PID, host, start time) while a run writes the folder.

    The file carries an exclusive `flock`, which the kernel drops when its holder dies, so a
    lock left by a killed run is never mistaken for a live one and two runs that both find a
    stale lock cannot both take it over: only one gets the `flock`. The PID, host and start
    time inside are for messages. A lock written on another host is refused (its holder
    cannot be checked from here).

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
        self._handle: int | None = None

    @property
    def held(self) -> bool:
        return self._handle is not None

    def acquire(self) -> None:
        """Take the lock, or raise RunLockedError naming the live holder."""
        for _ in range(5):
            handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(handle)
                raise RunLockedError(self._busy(self._live_holder())) from None
            if not self._names(handle):  # released and removed between open and flock
                os.close(handle)
                continue
            self._take_over(handle)
            return
        raise RunLockedError(f"could not take the lock {self.path}: it keeps being replaced")

    def release(self) -> None:
        """Remove the lock file and drop the flock, if this process holds them."""
        if self._handle is None:
            return
        if self._names(self._handle):
            self.path.unlink(missing_ok=True)
        os.close(self._handle)  # drops the flock; a waiter then sees the file is gone
        self._handle = None

    def _take_over(self, handle: int) -> None:
        """Write this run's record into the flocked file, noting a previous holder."""
        earlier = self._holder()
        if earlier is not None and earlier["host"] != self.record["host"]:
            os.close(handle)
            raise RunLockedError(
                self._busy(earlier)
                + f"; if that run has ended, delete {self.path} and start again"
            )
        if os.fstat(handle).st_size > 0:
            described = (
                "an unreadable lock"
                if earlier is None
                else f"the lock of pid {earlier['pid']} (no longer running)"
            )
            print(f"ebmkit: note: taking over {described} in {self.path.parent}", file=sys.stderr)
        os.ftruncate(handle, 0)
        os.pwrite(handle, json.dumps(self.record).encode(), 0)
        self._handle = handle

    def _names(self, handle: int) -> bool:
        """Whether `self.path` is still the file open as `handle`."""
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return False
        opened = os.fstat(handle)
        return (on_disk.st_dev, on_disk.st_ino) == (opened.st_dev, opened.st_ino)

    def _live_holder(self, wait: float = 1.0) -> dict[str, Any] | None:
        """The record of the run holding the flock, once it has written it (None if it has not).

        A run that has just taken over a stale lock holds the flock a moment before its own
        record replaces the dead run's: the dead run must not be named as the holder.
        """
        deadline = time.monotonic() + wait
        while True:
            holder = self._holder()
            written = holder is not None and (
                holder["host"] != self.record["host"] or process_alive(int(holder["pid"]))
            )
            if written or time.monotonic() > deadline:
                return holder if written else None
            time.sleep(0.01)

    def _busy(self, holder: dict[str, Any] | None) -> str:
        who = (
            "it is writing its lock"
            if holder is None
            else f"pid {holder['pid']} on {holder['host']}, started {holder['started']}"
        )
        return (
            f"{self.path.parent} is in use by another ebmkit run ({who}); wait for it to "
            f"end, or choose another --out"
        )

    def _holder(self) -> dict[str, Any] | None:
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(holder, dict) or not {"pid", "host", "started"} <= set(holder):
            return None
        return holder

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
