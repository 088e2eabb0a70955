r"""Cross-paper combinations against their parents (issue 16) on ONE toy set, over seeds.

Every row trains an EBM on CP-Flow's eight Gaussians (radius 4/1.414, std 0.5/1.414, 50 000
samples: the dataset binding of gin/cpmla_eight_gaussians.gin, bound identically in every
config used here) with `ebmkit run`, at temperature 1, one seed after the other on one thread.
Two groups, each a combination and its parents, which differ from it only in the sampler or
the initializer (the energy, trainer, batch, learning rates and rounds are the group's):

A. CPMLA × Dual-MCMC (energy MLP 3 × 128, Adam 5e-3, batch 128, Alg. 2's order):
   - the combination, gin/cpmla_dual_mcmc_eight_gaussians.gin: mirror Langevin (CP-Flow
     mirror, η = 1e-2, T = 10) from Dual-MCMC's generator;
   - CPMLA, gin/cpmla_eight_gaussians.gin: the same sampler from its own CP-Flow (the
     initializer is the mirror);
   - Dual-MCMC: the combination's config with the sampler swapped for Dual-MCMC's own
     samplers.Langevin (x − h∇E + sqrt(2h)ε, h = 0.01 = η), generator initializer kept.
B. STANLEY × flow-MCMC (energy base/toy.gin's MLP, Adam 3e-3, batch 256, 256 persistent
   chains started from data, RealNVP trained on the chains for the flow rows):
   - the combination, gin/stanley_flow_mcmc_eight_gaussians.gin: FlowMCMC with STANLEY + MH
     (ε = 0.1, th = 1, elementwise) as the local kernel;
   - flow-MCMC with its default local kernel: MALA from h = 0.01 adapted toward acceptance
     0.75 over each chain's first 500 moves (ebmkit_flow_mcmc's default_local_sampler);
   - STANLEY alone (the same STANLEY + MH kernel, no flow), on the same persistent chains.

Equal gradient budget: within a group every row spends the same number of gradient
evaluations of E per chain per round (the runs log it as ``sampler/grad_evals``; the script
checks it and prints it): A 10 (mirror Langevin: 1 at init + 9, none at the last point;
Langevin: n_steps = 10), B 25 (flow-MCMC: 1 + 4 × (1 + 5); STANLEY alone: n_steps = 24 with
MH, 1 + 24). Gradient evaluations elsewhere are not counted in it: the generator's z-revision
(10 gradients of U(z), through g, per data point), the CP-Flow's inverse solves (L-BFGS on G),
the flows' training steps and IMH's energy-only evaluations (B's flow rows: 4 per chain).

Scores (read from each run's last toy evaluation, at the final round): the grid KL of the
trained EBM's density exp(−E) against the data on a 64 × 64 grid over [−4, 4]²
(``metrics/grid_density_kl``, CPMLA's reference metric on the model), the density's
mode-weight error Σ|ŵ − 1/8| (``metrics/density_mode_weight_error``), and the sliced
Wasserstein distance of the final round's samples (A: 128 fresh chains; B: 256 persistent
chains) to data (``metrics/sliced_wasserstein``). Seconds are the run's wall time.

    .venv/bin/python benchmarks/combinations.py --rounds 120 --depth 5   # ~20 min of one core
    .venv/bin/python benchmarks/combinations.py --quick                  # smoke run, < 60 s
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

import gin
from ebmkit.cli import main as ebmkit_main
from ebmkit.registry import reset_registry

ROOT = Path(__file__).resolve().parent.parent

COMBINATION_A = "gin/cpmla_dual_mcmc_eight_gaussians.gin"
CPMLA = "gin/cpmla_eight_gaussians.gin"
COMBINATION_B = "gin/stanley_flow_mcmc_eight_gaussians.gin"
PAPER_DEPTH = 20
SCORES = {
    "metrics/grid_density_kl": "grid KL of exp(−E) ↓",
    "metrics/density_mode_weight_error": "Σ|ŵ − w| of exp(−E) ↓",
    "metrics/sliced_wasserstein": "SW of the round's samples ↓",
}
BUDGET = "sampler/grad_evals"
LANGEVIN = [
    "trainers.Contrastive.sampler = @samplers.Langevin()",
    "samplers.Langevin.step_size = 0.01",
    "samplers.Langevin.n_steps = 10",
]
MALA_DEFAULT = [  # ebmkit_flow_mcmc.densities.default_local_sampler, bound through gin
    "samplers.FlowMCMC.local = @samplers.MALA()",
    "samplers.MALA.step_size = 0.01",
    "samplers.MALA.adapt_steps = 500",
    "samplers.MALA.target_acceptance = 0.75",
]
STANLEY_ALONE = [
    "trainers.Contrastive.sampler = @samplers.Stanley()",
    "samplers.Stanley.n_steps = 24",
]


def rows(depth: int, quick: bool) -> dict[str, tuple[str, str, list[str]]]:
    """name → (group, config, bindings)."""
    flow = [f"flows.CPFlow.depth = {depth}"]
    tiny = ["flows.RealNVP.hidden_features = (16,)"] if quick else []
    return {
        "CPMLA mirror Langevin ← Dual-MCMC generator (combination)": ("A", COMBINATION_A, flow),
        "CPMLA (mirror Langevin ← its own CP-Flow)": ("A", CPMLA, flow),
        "Dual-MCMC (Langevin h = 0.01 ← generator)": ("A", COMBINATION_A, LANGEVIN),
        "flow-MCMC with STANLEY + MH local moves (combination)": ("B", COMBINATION_B, tiny),
        "flow-MCMC with its default MALA local moves": ("B", COMBINATION_B, tiny + MALA_DEFAULT),
        "STANLEY + MH alone": ("B", COMBINATION_B, STANLEY_ALONE),
    }


def run_config(
    config: str, bindings: Sequence[str], seed: int, rounds: int, out: Path
) -> dict[str, float]:
    """`ebmkit run config` in this process (the imports paid once, not per run), as
    benchmarks/config_runs.run_config: the last logged value of every metrics.jsonl key and
    ``seconds``; a run the divergence guard stopped gives ``{"diverged": round}``."""
    argv = ["run", str(ROOT / config), "--out", str(out), "--rounds", str(rounds)]
    for binding in [*bindings, f"experiment.seed = {seed}"]:
        argv += ["--bind", binding]
    stdout, stderr = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = ebmkit_main(argv)
    seconds = time.perf_counter() - start
    gin.clear_config()
    reset_registry()
    if status != 0:
        message = stderr.getvalue().strip().splitlines()[-1] if stderr.getvalue().strip() else ""
        stopped = re.match(r"ebmkit: error: round (\d+):", message)
        if stopped is None:
            raise RuntimeError(f"{config} seed {seed} failed:\n{stderr.getvalue()[-3000:]}")
        print(f"{config} seed {seed}: {message}", file=sys.stderr)
        return {"diverged": float(stopped.group(1)), "seconds": seconds}
    last: dict[str, float] = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        last.update(json.loads(line))
    return {**last, "seconds": seconds}


def mean_sd(values: Sequence[float]) -> str:
    """ "mean ± sd" to 3 decimals (sd 0 for one value)."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {sd:.3f}"


def cell(values: Sequence[float]) -> tuple[str, str]:
    """(mean ± sd, per-seed values) of one score."""
    return mean_sd(values), ", ".join(f"{value:.3f}" for value in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=120, help="training rounds, every row")
    parser.add_argument(
        "--depth", type=int, default=5, help=f"CP-Flow depth (the paper's: {PAPER_DEPTH})"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 3 rounds")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.rounds, args.depth = [0], 3, 2
    if args.rounds < 1 or args.depth < 1:
        parser.error("--rounds and --depth must be >= 1")
    torch.set_num_threads(1)
    table = rows(args.depth, args.quick)
    every = [f"experiment.eval_every = {args.rounds}", f"experiment.sample_every = {args.rounds}"]
    every.append(f"experiment.checkpoint_every = {args.rounds}")
    results: dict[str, list[dict[str, float]]] = {name: [] for name in table}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        for seed in args.seeds:  # sequential: one core
            for number, (name, (_, config, bindings)) in enumerate(table.items()):
                out = Path(folder) / f"{number}-{seed}"
                last = run_config(config, [*bindings, *every], seed, args.rounds, out)
                results[name].append(last)
                shown = ", ".join(f"{key} {last.get(key, float('nan')):.4f}" for key in SCORES)
                print(
                    f"seed {seed} {name}: {shown}, {BUDGET} {last.get(BUDGET)}, "
                    f"{last['seconds']:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
    total = time.perf_counter() - start
    budgets: dict[str, set[float]] = {}
    for name, (group, _, _) in table.items():
        budgets.setdefault(group, set()).update(
            run[BUDGET] for run in results[name] if "diverged" not in run
        )
    unequal = {group: sorted(values) for group, values in budgets.items() if len(values) > 1}
    print(
        f"CP-Flow's eight Gaussians (radius 4/1.414, std 0.5/1.414) for every row; {args.rounds} "
        f"rounds; seeds {args.seeds}; temperature 1; mean ± sd over seeds (per-seed values)\n"
    )
    header = ["group", "row", f"{BUDGET} per round"]
    for title in SCORES.values():
        header += [title, "per seed"]
    header.append("s per seed")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, (group, _, _) in table.items():
        runs = [run for run in results[name] if "diverged" not in run]
        diverged = len(results[name]) - len(runs)
        label = name + (f" ({diverged} of {len(results[name])} diverged)" if diverged else "")
        if not runs:
            print(f"| {group} | {label} |" + " |" * (len(header) - 2))
            continue
        cells = [group, label, f"{runs[0][BUDGET]:g}"]
        for key in SCORES:
            cells += cell([run[key] for run in runs])
        cells.append(f"{statistics.fmean(run['seconds'] for run in runs):.0f}")
        print("| " + " | ".join(cells) + " |")
    print("\nCuts and settings:")
    print(
        f"- {args.rounds} rounds per run for every row (the configs' own: A 1172 = 3 epochs, "
        "B 1000); the same rounds within a group, so the same gradient budget"
    )
    print(
        f"- CP-Flow depth {args.depth} in both CPMLA rows (the paper's {PAPER_DEPTH}); width 32, "
        "1 block, exact log-det as the configs"
    )
    if unequal:
        print(f"- UNEQUAL gradient budgets within a group: {unequal}")
    else:
        print(
            f"- gradient budget checked equal within each group ({BUDGET}: "
            + ", ".join(f"{g} {sorted(v)[0]:g}" for g, v in sorted(budgets.items()))
            + ")"
        )
    print(
        "- scores from the final round's evaluation of one run per seed: the density scores "
        "are exp(−E) on the grid; SW uses the round's own chains (A 128, B 256)"
    )
    if args.quick:
        print("- --quick: smoke run only (1 seed, 3 rounds, CP-Flow depth 2, small RealNVP)")
    print(f"- one thread, runs one after the other; wall time {total:.0f} s")


if __name__ == "__main__":
    main()
