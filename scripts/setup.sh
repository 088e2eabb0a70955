#!/usr/bin/env bash
# Create (or reuse) .venv and install ebmkit, its test tools, every plugin under plugins/ and
# every example package under examples/ (e.g. examples/ebmkit-hmc, a third-party plugin).
# Idempotent: a second call only checks what is installed. Takes ~2 minutes the first time
# (torch + torchvision are ~5 GB; see the "Dependencies" section of README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
packages=(-e ".[test]")
for plugin in plugins/*/ examples/*/; do
  [ -f "$plugin/pyproject.toml" ] && packages+=(-e "$plugin")
done
.venv/bin/python -m pip install --quiet "${packages[@]}" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import ebmkit, torch, torchvision" \
  || { echo "setup failed: ebmkit/torch/torchvision do not import" >&2; exit 1; }
