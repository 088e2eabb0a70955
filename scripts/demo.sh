#!/usr/bin/env bash
# Set up, then train the embedded default (eight Gaussians, MLP energy, Langevin + replay
# buffer) into runs/langevin_eight_gaussians/: a density picture in samples/, tensorboard
# logs in tb/, metrics.jsonl. Extra arguments go to `ebmkit run` (e.g. --rounds 200).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=runs/langevin_eight_gaussians
if [ -e "$out" ]; then  # an earlier demo's folder: never resume or mix into it
  stamp=$(date +%Y%m%d-%H%M%S)
  out="$out-$stamp"
fi
.venv/bin/ebmkit run gin/langevin_eight_gaussians.gin --out "$out" "$@"
echo "picture: $(ls "$out"/samples/*.png | tail -n 1)   tensorboard: .venv/bin/tensorboard --logdir $out/tb"
