#!/usr/bin/env bash
# Set up, then lint and run the whole test suite (core and every plugin) on 2 processes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
# The documentation site, strict: a broken link or anchor, or a docstring mkdocstrings cannot
# render, fails the build (~10 s; the site lands in build/site, which git ignores).
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --site-dir build/site
# One BLAS thread per test process: two processes on two cores, no oversubscription.
OMP_NUM_THREADS=1 .venv/bin/python -m pytest -n 2 --durations=15 "$@"
