r"""Train gin configs over seeds with `ebmkit run` and read their final numbers (benchmarks)."""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EBMKIT = str(Path(sys.executable).parent / "ebmkit")


def run_config(
    config: str, bindings: Sequence[str], seed: int, rounds: int, out: Path
) -> dict[str, float]:
    """Train `config` (plus `bindings`, seed `seed`) for `rounds` into `out`, one thread.

    Returns the last logged value of every metrics.jsonl key (toy metrics, the round's
    budget ``sampler/grad_evals`` ...) and ``seconds``, the run's wall time; a run the
    divergence guard stopped returns ``{"diverged": round}`` (its error is printed).
    """
    argv = [EBMKIT, "run", config, "--out", str(out), "--rounds", str(rounds)]
    for binding in [*bindings, f"experiment.seed = {seed}"]:
        argv += ["--bind", binding]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        message = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
        stopped = re.match(r"ebmkit: error: round (\d+):", message)
        if stopped is None:
            raise RuntimeError(f"{config} seed {seed} failed:\n{done.stderr[-3000:]}")
        print(f"{config} seed {seed}: {message}", file=sys.stderr)
        return {"diverged": float(stopped.group(1)), "seconds": seconds}
    last: dict[str, float] = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        last.update(json.loads(line))
    return {**last, "seconds": seconds}


def run_grid(
    rows: dict[str, tuple[str, Sequence[str]]],
    seeds: Sequence[int],
    rounds: int,
    jobs: int,
    folder: Path,
) -> dict[tuple[str, int], dict[str, float]]:
    """Every (row, seed) of `rows` (name → (config, bindings)), `jobs` at a time."""
    with ThreadPoolExecutor(jobs) as pool:
        futures = {
            (name, seed): pool.submit(
                run_config, config, bindings, seed, rounds, folder / f"{number}-{seed}"
            )
            for number, (name, (config, bindings)) in enumerate(rows.items())
            for seed in seeds
        }
        return {key: future.result() for key, future in futures.items()}


def mean_sd(values: Sequence[float]) -> str:
    """ "mean ± sd" to 3 decimals (sd 0 for one value)."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {sd:.3f}"
