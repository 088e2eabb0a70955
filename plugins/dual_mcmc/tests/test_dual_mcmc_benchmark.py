"""benchmarks/dual_mcmc_round.py runs (--quick) and prints its per-phase table: for each
workload and preset, an ebmkit row and a hand-written-loop row per k_x, the ratio to k_x = 30
beside the paper's (Table 5), ebmkit ÷ hand, and the line a + b·k_x fitted to each."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ebmkit.registry import AUTOLOAD_ENV

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "benchmarks" / "dual_mcmc_round.py"
HEADER = [
    "k_x",
    "loop",
    "x0",
    "x-rev",
    "z-rev",
    "G+I step",
    "refresh",
    "E step",
    "total s/round",
    "÷ k_x=30",
    "paper s/iter",
    "paper ÷ k_x=30",
    "ebmkit ÷ hand",
]
needs_script = pytest.mark.skipif(
    not SCRIPT.is_file(), reason="needs the repository's benchmarks/"
)


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def blocks(report: str) -> dict[str, list[list[str]]]:
    """'### <workload>, <preset> preset ...' → its table rows (header and rule dropped)."""
    found: dict[str, list[list[str]]] = {}
    current = None
    for line in report.splitlines():
        if line.startswith("### "):
            current = line[4:].split(" preset")[0]
            found[current] = []
        elif current is not None and line.startswith("|"):
            row = cells(line)
            if row[0] == "k_x":
                assert row == HEADER
            elif not row[0].startswith("---"):
                found[current].append(row)
    return found


@pytest.mark.slow
@needs_script
def test_round_benchmark_prints_phase_tables_with_ratios(tmp_path: Path) -> None:
    log = tmp_path / "round.txt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(AUTOLOAD_ENV, None)
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--log", str(log)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "threads: 1" in done.stdout
    assert log.read_text().strip() in done.stdout  # the report printed is the one written
    fits = [line for line in done.stdout.splitlines() if line.startswith("least-squares fit")]
    assert len(fits) == 3 and all("paper 0.443 + 0.0398·k_x (a/b = 11.1)" in f for f in fits)
    tables = blocks(done.stdout)
    assert list(tables) == ["toy, code", "toy, paper", "image, code"]
    for name, rows in tables.items():
        assert [(row[0], row[1]) for row in rows] == [
            ("10", "ebmkit"),
            ("10", "hand"),
            ("30", "ebmkit"),
            ("30", "hand"),
        ], name
        for row in rows:
            assert len(row) == len(HEADER)
            phases = dict(zip(HEADER[2:8], row[2:8], strict=True))
            if name.endswith("paper"):
                assert phases.pop("refresh") == "–"  # one x-chain: no refresh
            assert all(float(value) >= 0 for value in phases.values()), row
            assert float(row[8]) > 0
            assert float(row[8]) >= float(phases["x-rev"]) + float(phases["z-rev"])
        ebmkit = {row[0]: row for row in rows if row[1] == "ebmkit"}
        hand = {row[0]: row for row in rows if row[1] == "hand"}
        assert ebmkit["30"][9] == hand["30"][9] == "1.00"
        assert (ebmkit["10"][10], ebmkit["10"][11]) == ("0.861", "0.54")  # Table 5, beside
        assert (ebmkit["30"][10], ebmkit["30"][11]) == ("1.594", "1.00")
        assert hand["10"][10:] == ["", "", ""]
        for k_x in ("10", "30"):
            ratio = float(ebmkit[k_x][12])  # of the totals before they were rounded to 1e-4 s
            assert ratio == pytest.approx(float(ebmkit[k_x][8]) / float(hand[k_x][8]), rel=0.01)
