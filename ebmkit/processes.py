r"""Whether a process is alive: how a run tells a dead writer's leftovers from a live one's."""

from __future__ import annotations

import os

__all__ = ["process_alive"]


def process_alive(pid: int) -> bool:
    """Whether a process with this PID exists on this machine (POSIX; elsewhere: assume not).

    Signal 0 checks without sending anything; a PID no process can have is not alive.

    Example:
        >>> process_alive(os.getpid())
        True
    """
    if os.name != "posix":  # os.kill would terminate the process on Windows
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except (OSError, OverflowError):  # no such PID can exist
        return False
    return True
