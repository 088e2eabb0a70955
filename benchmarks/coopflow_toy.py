r"""CoopFlow on eight Gaussians against the embedded default's Langevin, at equal budgets.

Trains gin/langevin_eight_gaussians.gin (replay-buffer Langevin, the embedded default),
gin/coopflow_eight_gaussians.gin (the paper's update) and gin/coopflow_code_eight_gaussians.gin
(the reference code's update: no noise, clamped drift) over the same seeds and rounds. All three
use h = 0.01, 20 steps per round (20 gradients per chain) and the same MLP energy; the CoopFlow
rows start their chains at a RealNVP's samples instead of a replay buffer and train the flow on
the revised samples. Prints one table: grid KL of exp(−E) to the data density, MMD and sliced
Wasserstein of the chains' samples, the density's mode-weight error Σ|ŵ − w| (mean ± sd).

    .venv/bin/python benchmarks/coopflow_toy.py --seeds 0 1 2 --rounds 1000 --jobs 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from config_runs import mean_sd, run_grid

ROWS = {
    "Langevin, replay buffer (embedded default)": ("gin/langevin_eight_gaussians.gin", []),
    "CoopFlow, paper update (noise on)": ("gin/coopflow_eight_gaussians.gin", []),
    "CoopFlow, code update (noise off, clamped drift)": (
        "gin/coopflow_code_eight_gaussians.gin",
        [],
    ),
}
KEYS = {
    "grid KL": "metrics/grid_kl",
    "MMD": "metrics/mmd",
    "sliced W": "metrics/sliced_wasserstein",
    "density Σ|ŵ−w|": "metrics/density_mode_weight_error",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        results = run_grid(ROWS, args.seeds, args.rounds, args.jobs, Path(folder))
    print(f"Eight Gaussians, {args.rounds} rounds, seeds {args.seeds}: mean ± sd\n")
    names = " | ".join(KEYS).replace("|ŵ−w|", "\\|ŵ−w\\|")
    print(f"| method | {names} | grid KL per seed | gradients / round | s per run |")
    print("|---|" + "---|" * (len(KEYS) + 3))
    for name in ROWS:
        every = [results[(name, seed)] for seed in args.seeds]
        runs = [run for run in every if "diverged" not in run]
        if not runs:
            print(f"| {name} | every seed diverged |" + " |" * (len(KEYS) + 2))
            continue
        cells = " | ".join(mean_sd([run[key] for run in runs]) for key in KEYS.values())
        per_seed = ", ".join(
            f"diverged (round {run['diverged']:.0f})"
            if "diverged" in run
            else f"{run['metrics/grid_kl']:.3f}"
            for run in every
        )
        seconds = statistics.fmean(run["seconds"] for run in runs)
        grads = runs[0]["sampler/grad_evals"]
        print(f"| {name} | {cells} | {per_seed} | {grads:.0f} | {seconds:.0f} |")
    print("\nA diverged run (stopped by the divergence guard) is left out of the mean ± sd.")


if __name__ == "__main__":
    main()
