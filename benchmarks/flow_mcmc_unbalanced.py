r"""The flow-MCMC seed's claim: an EBM trained with flow-MCMC learns the mode weights of an
unbalanced mixture; one trained with local chains does not.

Trains the MLP energy of gin/base/unbalanced.gin (0.2 / 0.8 at ∓(2, 2), sd 0.5) with
- flow-MCMC (gin/flow_mcmc_unbalanced.gin: persistent chains from data, 4 × [RealNVP IMH +
  5 MALA] per round, the flow trained on the chain states),
- short-run ULA from noise (gin/ula_unbalanced.gin, the seed's failing baseline),
- persistent ULA from data (the same file with a persistent bank; the reference's second
  baseline, which drifts),
each over the same seeds and rounds, at temperature 1, with about the same gradients per
round (25 per chain per round). Scores are the *density's* mode weights: the mass of
exp(−E) nearest each mean on a 200² grid, Σ_k |ŵ_k − w_k| (never the chains'). Prints one
table (mean ± sd over seeds, and per seed) with each row's gradients, energy-only
evaluations and flow passes per round.

    .venv/bin/python benchmarks/flow_mcmc_unbalanced.py --seeds 0 1 2 --rounds 1000 --jobs 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from config_runs import mean_sd, run_grid

PERSISTENT_ULA = [
    "trainers.Contrastive.initializer = @initializers.Persistent()",
    "initializers.Persistent.start = @initializers.Data()",
    "initializers.Persistent.n_chains = 256",
    "initializers.Data.dataset = @datasets.GaussianMixture()",
]
ROWS = {
    "flow-MCMC (RealNVP IMH + 5 MALA, persistent)": ("gin/flow_mcmc_unbalanced.gin", []),
    "short-run ULA from noise": ("gin/ula_unbalanced.gin", []),
    "persistent ULA from data": ("gin/ula_unbalanced.gin", PERSISTENT_ULA),
}


def scores(last: dict[str, float]) -> dict[str, float]:
    """The table's numbers from a run's last logged values."""
    return {
        "density_error": last["metrics/density_mode_weight_error"],
        "density_small": last["metrics/density_mode_weight_0"],
        "samples_error": last["metrics/mode_weight_error"],
        "grid_kl": last["metrics/grid_kl"],
        "grads": last["sampler/grad_evals"],
        "energies": last["sampler/energy_evals"],
        "flows": last["sampler/flow_evals"],
        "seconds": last["seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--rows", nargs="+", choices=range(len(ROWS)), type=int)
    args = parser.parse_args()
    rows = {
        name: spec
        for number, (name, spec) in enumerate(ROWS.items())
        if args.rows is None or number in args.rows
    }
    with tempfile.TemporaryDirectory() as folder:
        found = run_grid(rows, args.seeds, args.rounds, args.jobs, Path(folder))
    results = {key: scores(values) for key, values in found.items()}
    print(f"Unbalanced mixture (w = 0.2 / 0.8), {args.rounds} rounds, seeds {args.seeds}")
    print("density Σ|ŵ − w| from exp(−E) on a 200² grid (0 is perfect; all mass in the 0.8")
    print("mode gives 0.4); per round, per batch of 256 chains: gradients / energy-only")
    print("evaluations / flow passes\n")
    header = "| method | density Σ\\|ŵ−w\\| | per seed | density ŵ_small | samples Σ\\|ŵ−w\\| "
    print(header + "| grid KL | grads / energies / flows per round | s per run |")
    print("|---|---|---|---|---|---|---|---|")
    for name in rows:
        runs = [results[(name, seed)] for seed in args.seeds]
        per_seed = ", ".join(f"{run['density_error']:.3f}" for run in runs)
        budget = f"{runs[0]['grads']:.0f} / {runs[0]['energies']:.0f} / {runs[0]['flows']:.0f}"
        print(
            f"| {name} | {mean_sd([r['density_error'] for r in runs])} | {per_seed} "
            f"| {mean_sd([r['density_small'] for r in runs])} "
            f"| {mean_sd([r['samples_error'] for r in runs])} "
            f"| {mean_sd([r['grid_kl'] for r in runs])} | {budget} "
            f"| {statistics.fmean(r['seconds'] for r in runs):.0f} |"
        )


if __name__ == "__main__":
    main()
