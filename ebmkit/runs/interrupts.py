r"""Clean interrupts: SIGINT / SIGTERM finish the round, save, and exit 130 / 143."""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType, TracebackType

from ebmkit.errors import RunInterrupted

__all__ = ["EXIT_STATUS", "InterruptRequest", "RunInterrupted"]

EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}


class InterruptRequest:
    """While entered, SIGINT and SIGTERM only ask the run to stop after the current round.

    The first signal sets `signum` and says so on stderr; the run checks `requested` after
    each round, saves a checkpoint and raises RunInterrupted. A second SIGINT aborts at once
    (KeyboardInterrupt), a second SIGTERM ends the process with status 143. Outside the main
    thread (where Python cannot install handlers) it does nothing.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # the second one: stop now
            self._restore()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            sys.exit(EXIT_STATUS[signal.SIGTERM])
        self.signum = signum
        name = signal.Signals(signum).name
        print(
            f"\nebmkit: {name} received: finishing this round, then saving a checkpoint "
            f"(send it again to stop at once)",
            file=sys.stderr,
        )

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def __enter__(self) -> InterruptRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in EXIT_STATUS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._restore()
