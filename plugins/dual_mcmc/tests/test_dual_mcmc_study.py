"""benchmarks/dual_mcmc_study.py --quick runs end to end for a toy and for digits and writes its
report: one table row per quantity, a number (mean ± sd) in each, per-seed values."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ebmkit.registry import AUTOLOAD_ENV

ROOT = Path(__file__).resolve().parents[3]
STUDY = ROOT / "benchmarks" / "dual_mcmc_study.py"
needs_repository = pytest.mark.skipif(not STUDY.is_file(), reason="needs benchmarks/")

COMMON_ROWS = [
    "recon MSE, inference alone",
    "recon MSE, inference + 10 steps",
    "recon MSE, noise-init + 10 steps (eval-time ablation)",
    "η = 0: max increase of mean U(z) over a step",
    "fraction of rounds with E(x̃) < E(x0)",
    "MMD² to data, x0 (generator)",
    "MMD² to data, x̃ (revised)",
]
TOY_ROWS = [
    "Σ\\|w − 1/8\\|, x0 (w over all samples)",
    "Σ\\|w − 1/8\\|, x̃ (w over the assigned)",
    "unassigned (farther than 3 s_m), x̃",
]
NUMBER = r"-?\d+\.\d+ ± \d+\.\d+"


@needs_repository
@pytest.mark.slow
@pytest.mark.parametrize("config", ["toy-code", "digits"])
def test_quick_study_writes_a_table_of_every_quantity(config: str, tmp_path: Path) -> None:
    log = tmp_path / "study.txt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(AUTOLOAD_ENV, None)
    command = [sys.executable, str(STUDY), "--config", config, "--quick", "--seeds", "0", "1"]
    done = subprocess.run(
        [*command, "--log", str(log)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text = log.read_text()
    assert text == done.stdout.rstrip("\n") + "\n"
    assert text.startswith(f"# Dual-MCMC study: {config} — gin/dual_mcmc_")
    assert "20 rounds, seeds [0, 1]" in text and "(2 of 2)" in text
    rows = {
        line.split(" | ")[0].removeprefix("| "): line
        for line in text.splitlines()
        if line.startswith("| ") and not line.startswith("| quantity")
    }
    expected = COMMON_ROWS + (TOY_ROWS if config == "toy-code" else [])
    for name in expected:
        assert name in rows, name
        assert re.search(NUMBER, rows[name]), rows[name]
    assert not any(name.startswith("Σ") for name in rows) or config == "toy-code"
    # Two per-seed values after the mean ± sd.
    per_seed = rows["recon MSE, inference alone"].rstrip(" |").split(" | ")[-1]
    assert len(per_seed.split(", ")) == 2
    fraction = float(rows["fraction of rounds with E(x̃) < E(x0)"].split(" | ")[1].split()[0])
    assert 0 <= fraction <= 1
