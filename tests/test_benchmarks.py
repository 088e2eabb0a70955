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


@pytest.mark.slow
def test_flow_mcmc_mixing_quick_prints_every_row_and_flow_mcmc_crosses() -> None:
    command = [sys.executable, str(BENCHMARKS / "flow_mcmc_mixing.py"), "--quick", "--dims", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    rows = [line.split(" | ") for line in done.stdout.splitlines() if line.startswith("| 1 |")]
    assert [row[1] for row in rows] == [
        "flow-MCMC, fixed off-centre proposal",
        "flow-MCMC, RealNVP trained along the way",
        "MALA, h = 0.1",
        "ULA, h = 0.05",
    ]
    assert [row[2] for row in rows[:2]] == ["yes", "yes"]  # flow-MCMC reaches 0.2 ± 0.05
    assert rows[2][2] == "no"  # MALA does not within its (quick) cap of 2000 gradients


@pytest.mark.slow
def test_combinations_quick_prints_each_row_at_its_groups_equal_budget() -> None:
    command = [sys.executable, str(BENCHMARKS / "combinations.py"), "--quick"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    rows = [
        line.split(" | ") for line in done.stdout.splitlines() if line[:5] in ("| A |", "| B |")
    ]
    assert [(row[0], row[2]) for row in rows] == [("| A", "10")] * 3 + [("| B", "25")] * 3
    assert "(combination)" in rows[0][1] and "(combination)" in rows[3][1]
    assert "gradient budget checked equal within each group" in done.stdout


@pytest.mark.slow
def test_langevin_overhead_compile_adds_the_compiled_columns() -> None:
    command = [sys.executable, str(BENCHMARKS / "langevin_overhead.py"), "--quick", "--compile"]
    command += ["--only", "MLP", "--processes", "1", "--repeats", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert "| compile s (first call), per process |" in rows[0]
    assert [row.split(" | ")[0] for row in rows[1:]] == ["| MLP 2-D (16,16)"]
    cells = rows[1].strip("| ").split(" | ")
    assert len(cells) == 17
    assert float(cells[11]) == 0.0  # ebmkit eager still gives the hand loop's samples
    assert float(cells[12]) > 0 and float(cells[13]) > 0  # compiled ms/step, hand/compiled
    assert float(cells[15]) > 0  # seconds to compile, apart from the timed runs
    assert float(cells[16]) < 1e-4  # compiled samples: the hand loop's, within rounding
