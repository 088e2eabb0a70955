#!/usr/bin/env bash
# Set up, then lint and run the whole test suite (core and every plugin) on 2 processes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
# One BLAS thread per test process: two processes on two cores, no oversubscription.
OMP_NUM_THREADS=1 .venv/bin/python -m pytest -n 2 --durations=15 "$@"
