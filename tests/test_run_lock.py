"""The run folder's lock: one holder at a time, even when several runs find a stale lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import write_stale_lock

from ebmkit.runs.lock import LOCK_NAME, RunLock, RunLockedError

# A contender: waits for the start signal, tries the lock, prints what happened; a winner keeps
# the lock until the test says it may go, so every loser tries while the lock is held.
CONTENDER = """
import sys, time
from pathlib import Path
from ebmkit.runs.lock import RunLock, RunLockedError
folder, index = Path(sys.argv[1]), sys.argv[2]
(folder.parent / f"ready-{index}").touch()
while not (folder.parent / "go").exists():
    time.sleep(0.001)
lock = RunLock(folder)
try:
    lock.acquire()
except RunLockedError as error:
    print("refused", error, flush=True)
    sys.exit(0)
print("won", flush=True)
while not (folder.parent / "done").exists():
    time.sleep(0.01)
lock.release()
"""


def test_a_second_holder_in_the_same_process_is_refused_until_the_first_releases(
    tmp_path: Path,
) -> None:
    first = RunLock(tmp_path)
    first.acquire()
    with pytest.raises(RunLockedError, match=f"in use by another ebmkit run \\(pid {os.getpid()}"):
        RunLock(tmp_path).acquire()
    first.release()
    assert not (tmp_path / LOCK_NAME).exists()
    with RunLock(tmp_path) as second:
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
        assert second.held
    assert not second.held


def test_a_lock_written_on_another_host_is_refused_saying_how_to_clear_it(tmp_path: Path) -> None:
    record = {"pid": 1, "host": "elsewhere.example", "started": "earlier"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(record))
    with pytest.raises(RunLockedError, match=f"pid 1 on elsewhere.example.*delete {tmp_path}"):
        RunLock(tmp_path).acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text()) == record  # left as it was


@pytest.mark.slow
def test_of_runs_racing_for_a_stale_lock_exactly_one_wins(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    write_stale_lock(folder)
    contenders = [
        subprocess.Popen(
            [sys.executable, "-c", CONTENDER, str(folder), str(index)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(4)
    ]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready-*"))) < len(contenders):
        assert time.monotonic() < deadline, "the contenders did not start"
        time.sleep(0.01)
    (tmp_path / "go").touch()
    deadline = time.monotonic() + 120
    while sum(process.poll() is not None for process in contenders) < len(contenders) - 1:
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    (tmp_path / "done").touch()
    results = [process.communicate(timeout=120) for process in contenders]
    outcomes = [out.split(" ", 1)[0].strip() for out, _ in results]
    assert outcomes.count("won") == 1, results
    assert outcomes.count("refused") == len(contenders) - 1, results
    winner = contenders[outcomes.index("won")].pid
    for out, _ in results:
        if out.startswith("refused"):
            assert f"pid {winner} on" in out or "it is writing its lock" in out, out
    assert not (folder / LOCK_NAME).exists()
