"""The benchmark scripts still run and print their tables (tiny workloads; no timing checked)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
@pytest.mark.parametrize("no_trim", [False, True], ids=["glibc-defaults", "no-trim"])
def test_langevin_overhead_quick_prints_one_row_per_workload(no_trim: bool) -> None:
    command = [sys.executable, str(BENCHMARKS / "langevin_overhead.py"), "--quick"]
    command += ["--processes", "1", "--repeats", "2"] + ["--no-trim"] * no_trim
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in rows[1:]] == [
        "| floor: E = ½·Σx²",
        "| MLP 2-D (16,16)",
        "| Conv (8,16)",
    ]
    for row in rows[1:]:
        cells = row.strip("| ").split(" | ")
        assert len(cells) == 12
        assert float(cells[-1]) == 0.0  # both loops gave the same samples
    assert ("trimming off" in done.stdout) is no_trim
