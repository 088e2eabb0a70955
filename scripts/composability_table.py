r"""Run the composability matrix (`ebmkit.testing.matrix`) and write docs/composability.md.

Every registered sampler × every registered initializer case, on the 2-D toy energy and the
(3, 8, 8) image energy: each pair trains 2 rounds, is saved, resumed and its round 2 checked
bit for bit, or is refused by a component with its reason. The table is written only when
every pair ran or was refused; a failing pair is printed and the script exits 1.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/composability_table.py [--out docs/composability.md]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from ebmkit.testing.matrix import PairOutcome, matrix_pairs, render_table, run_pair

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    """Run every pair; write the table unless a pair failed. Returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "composability.md")
    args = parser.parse_args(argv)
    pairs = matrix_pairs()
    outcomes: list[PairOutcome] = []
    failures: list[str] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        for index, pair in enumerate(pairs):
            folder = Path(scratch) / str(index)
            folder.mkdir()
            try:
                outcomes.append(run_pair(pair, folder))
            except Exception as error:  # noqa: BLE001 - every failure is listed, then exit 1
                failures.append(f"{pair.id}: {type(error).__name__}: {error}")
                print(f"FAILED {failures[-1]}", file=sys.stderr)
    seconds = time.perf_counter() - start
    if failures:
        print(f"{len(failures)} of {len(pairs)} pairs failed; table not written", file=sys.stderr)
        return 1
    trained = sum(outcome.status == "ran" for outcome in outcomes)
    warm = outcomes[1:] or outcomes  # the first pair also pays for imports and first calls
    slowest = max(warm, key=lambda outcome: outcome.seconds)
    measured = (
        f"{len(outcomes)} pairs ({trained} trained, saved and resumed) in {seconds:.0f} s on one "
        f"CPU thread ({platform.processor() or platform.machine()}, torch {torch.__version__}); "
        f"slowest pair after the first {slowest.pair.id}, {slowest.seconds:.2f} s."
    )
    args.out.write_text(render_table(outcomes, measured) + "\n")
    print(f"wrote {args.out}: {measured}")
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main())
