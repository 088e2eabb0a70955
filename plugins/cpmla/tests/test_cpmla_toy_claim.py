"""benchmarks/cpmla_toy_claim.py runs (--quick) and prints its table: CPMLA and the CP-Flow
alone, each with the histogram KL of its samples and the grid KL of its density (mean ± sd and
per seed), the exact sampler's floor at the same N, and the list of cuts (issue 14)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ebmkit.registry import AUTOLOAD_ENV

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "benchmarks" / "cpmla_toy_claim.py"
HEADER = [
    "method",
    "rounds",
    "histogram KL, 128 samples",
    "per seed",
    "grid KL of the density",
    "per seed",
    "s per seed (train + sample)",
]
needs_script = pytest.mark.skipif(
    not SCRIPT.is_file(), reason="needs the repository's benchmarks/"
)


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def mean(cell: str) -> float:
    value, sd = cell.split(" ± ")
    assert float(sd) >= 0
    return float(value)


@pytest.mark.slow
@needs_script
def test_toy_claim_quick_prints_the_table_and_the_cuts() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(AUTOLOAD_ENV, None)
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [cells(line) for line in done.stdout.splitlines() if line.startswith("|")]
    assert rows[0] == HEADER
    assert set(rows[1][0]) <= {"-", "|"} or rows[1][0].startswith("---")
    names = [row[0] for row in rows[2:]]
    assert names == ["CPMLA (3 epochs)", "CP-Flow alone (10 epochs)", "exact sampler (floor)"]
    for row in rows[2:4]:
        assert len(row) == len(HEADER)
        assert int(row[1]) >= 1
        for index in (2, 4):
            assert math.isfinite(mean(row[index])) and mean(row[index]) >= 0
            assert len(row[index + 1].split(", ")) == 1  # one seed in --quick
    floor = mean(rows[4][2])
    assert 0 < floor < mean(rows[2][2]) + 1  # the exact floor at N = 128 is large, not 0
    assert "Cuts against the reference" in done.stdout
    assert "training budget ÷ 1172" in done.stdout
    assert "128 samples scored per run (reference 50000)" in done.stdout
    assert "--quick: smoke run only" in done.stdout
