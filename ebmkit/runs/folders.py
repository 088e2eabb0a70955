r"""Output paths (a run's `--out`, `sample --out`, `--save-stats`): created, checked writable,
and their OS errors turned into one line naming the path, the cause and the fix."""

from __future__ import annotations

import contextlib
import errno
import getpass
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from ebmkit.errors import OutputPathError

__all__ = [
    "check_output_folder",
    "check_run_dir",
    "check_writable",
    "explain_os_error",
    "prepare_output_folder",
    "prepare_run_dir",
    "writing_into",
]


def check_run_dir(path: Path) -> None:
    """Before any work: raise the OutputPathError `prepare_run_dir(path)` would, when it can
    be seen without creating anything (a file in the way, a folder not writable, a read-only
    filesystem). Nothing is created, so a run refused later leaves no empty folder behind."""
    check_output_folder(path, flag="--out", what="run folder")


def check_output_folder(path: Path, flag: str, what: str = "output folder") -> None:
    """`check_run_dir` for any output folder (see `prepare_output_folder` for the arguments)."""
    if (blocker := _file_in_the_way(path)) is not None:
        error = FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(blocker))
        raise OutputPathError(explain_os_error(error, path, flag, what))
    existing = _nearest_existing(path)
    if not existing.exists():
        return
    code = None
    if _read_only_filesystem(existing):
        code = errno.EROFS
    elif not os.access(existing, os.W_OK | os.X_OK):
        code = errno.EACCES
    if code is not None:
        error = OSError(code, os.strerror(code), str(existing))
        raise OutputPathError(explain_os_error(error, path, flag, what))


def prepare_run_dir(path: Path) -> Path:
    """Create the run folder `path` (and its parents), check files can be written in it.

    Replaces `path.mkdir(parents=True, exist_ok=True)` for `ebmkit run --out`.

    Returns:
        `path`.

    Raises:
        OutputPathError: a file where the folder should be, no permission, a read-only
            filesystem or a full disk; the message names the path, the cause and the fix.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp()) / "runs" / "toy"
        >>> prepare_run_dir(folder) == folder and folder.is_dir()
        True
    """
    return prepare_output_folder(path, flag="--out", what="run folder")


def prepare_output_folder(path: Path, flag: str, what: str = "output folder") -> Path:
    """Create `path` (and its parents) and write and remove a probe file in it.

    A read-only folder that already exists fails here, before any work is done.

    Arguments:
        path: the folder.
        flag: the flag that named it, e.g. "--out"; the message says to change it.
        what: what the folder is for, e.g. "sample folder".
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
        check_writable(path)
    except OSError as error:
        raise OutputPathError(explain_os_error(error, path, flag, what)) from error
    return path


@contextlib.contextmanager
def writing_into(path: Path, flag: str, what: str) -> Iterator[None]:
    """Turn an OSError raised inside the block into an OutputPathError about `path`."""
    try:
        yield
    except OSError as error:
        raise OutputPathError(explain_os_error(error, path, flag, what)) from error


def explain_os_error(error: OSError, path: Path, flag: str, what: str) -> str:
    """One line for an OSError met while creating or writing `path`: path, cause and fix.

    Example:
        >>> error = OSError(errno.EROFS, "Read-only file system")
        >>> explain_os_error(error, Path("/"), "--out", "run folder")
        '--out /: / is on a read-only filesystem; choose another --out on a writable disk'
    """
    shown = f"{flag} {path}"
    code = error.errno
    if code in (errno.EEXIST, errno.ENOTDIR) and (blocker := _file_in_the_way(path)):
        where = f"the {what}" if blocker == path else "a folder"
        return (
            f"{shown}: a file named {blocker} exists where {where} should be; choose another "
            f"{flag}, or move that file away"
        )
    if code == errno.EISDIR:
        return (
            f"{shown}: a folder named {error.filename or path} exists where the {what} should "
            f"be; choose another {flag}"
        )
    existing = _nearest_existing(path)
    if code in (errno.EACCES, errno.EPERM):
        return (
            f"{shown}: permission denied: {existing} is not writable by {_user()}; choose "
            f"another {flag} (e.g. under {Path.home()}), or make {existing} writable"
        )
    if code == errno.EROFS:
        return (
            f"{shown}: {existing} is on a read-only filesystem; choose another {flag} on a "
            f"writable disk"
        )
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return (
            f"{shown}: no space left on the disk holding {existing} ({_free(existing)} free); "
            f"free some space, or choose another {flag} on another disk"
        )
    cause = error.strerror or str(error)
    return f"{shown}: cannot write the {what} ({cause}); choose another {flag}"


def check_writable(folder: Path) -> None:
    """Write one byte into a new file in `folder` and remove it (raises OSError if it cannot)."""
    probe = folder / f".ebmkit-write-probe-{os.getpid()}-{secrets.token_hex(4)}"
    handle = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(handle, b"0")
    finally:
        os.close(handle)
        with contextlib.suppress(OSError):
            probe.unlink()


def _file_in_the_way(path: Path) -> Path | None:
    """The outermost of `path` and its parents that exists but is not a folder."""
    for candidate in [*reversed(path.parents), path]:
        if candidate.exists() and not candidate.is_dir():
            return candidate
    return None


def _nearest_existing(path: Path) -> Path:
    for candidate in [path, *path.parents]:
        if candidate.exists():
            return candidate
    return path


def _read_only_filesystem(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs (Windows): the write will tell
        return False


def _user() -> str:
    try:
        return f"user {getpass.getuser()}"
    except (KeyError, OSError, ImportError):
        return "this user"


def _free(path: Path) -> str:
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return "unknown"
    return f"{free / 2**30:.1f} GiB" if free >= 2**30 else f"{free / 2**20:.1f} MiB"
