"""STANLEY vs Langevin on the rings toy, at equal temperature: train, score, tabulate.

Two comparisons, one command each; every row is trained from scratch once per seed and the
table shows mean ± sd over the seeds (5 by default).

``exact`` — every sampler targets exp(−E) (temperature 1), on the ebmkit toy setup of
gin/stanley_rings.gin (MLP energy, Adam 3e-3, alpha 0.03, batch 256, short-run chains from
2·N(0, I), 600 rounds), 100 gradient evaluations per round. Each sampler keeps the settings
the repository already had for it, none tuned on these results: ULA and MALA the step
h = 0.01 of gin/mala_rings.gin; STANLEY the settings of gin/stanley_rings.gin (the paper's
eq. 6 with ε = 2, th = 0.05, reduce "sample": its drift is the authors' toy drift, of
length min(‖∇E‖, 0.05)).

    ULA            x − h∇E + sqrt(2h)ξ                                        100 steps
    MALA           the same proposal, MH-corrected                            99 steps
    STANLEY        x − ½Γ∇E + Γ^½ξ, Γ = ε·min(1, th/‖∇E‖) per sample          100 steps
    STANLEY + MH   the same, MH-corrected                                     99 steps
    STANLEY elementwise (+ MH)   Γᵢ = ε·min(1, th/|∂ᵢE|) per coordinate (the paper's
                   eq. 6 as written), otherwise the same                      100 (99) steps

(a chain spends one gradient at its start; the unadjusted kernels skip the gradient after
their last move, while every MH proposal needs its own, so 99 MH steps cost 100 gradients).

``code`` — the authors' toy setup at their temperature: gin/langevin_rings_code.gin and
gin/stanley_rings_code.gin (ToyNet read at T = ε²/2 = 0.005, so E = f/T; eps 0.1 for both;
3000 rounds). Langevin is their update exactly; STANLEY has their γ and drift, with noise
ε·sqrt(γ) instead of ε·γ (see the configs' headers).

Scores of one run, from `--samples` fresh short-run chains of the trained energy (the run's
own sampler, initializer and steps):

- grid-KL: KL(p_data ‖ exp(−E)/Z) on a 200×200 grid (scores the energy itself);
- MMD² (Gaussian kernels 0.1–2) and sliced W2 between the samples and as many exact data
  samples (the short-run sampler's output, what the model is used for);
- MMD² and sliced W2 between the samples and exp(−E) itself (how well the sampler samples
  the energy it trained): the reference is `--samples` draws from exp(−E) on the same grid,
  each then moved by 500 MALA steps (step adapted per chain toward 0.574 acceptance during
  the first 100, fixed after), which leaves exp(−E) invariant.

    .venv/bin/python benchmarks/stanley_rings_comparison.py {exact,code} [--seeds 0 1 2 3 4]
        [--rounds N] [--samples 5000] [--threads 1] [--jobs 2] [--out DIR] [--quick]
        [--rows NAME ...] [--from-log LOG ...]

--rows trains only the named rows (e.g. new ones); --from-log prints the tables from the
per-run lines of earlier logs, so rows run separately on the same seeds are tabulated and
paired together.

--jobs runs that many trainings at once, each in its own process (`--threads` torch threads
each). Without --out the runs go to a temporary folder deleted afterwards. --quick (a smoke
test, well under a minute): 1 seed, 10 rounds, 500 samples, 20 reference MALA steps.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import re
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from machine_info import cpu_name, load_average
from torch import Tensor

import gin
from ebmkit.checkpoint.files import load_checkpoint
from ebmkit.checkpoint.rng import seed_everything
from ebmkit.data.toy import Rings, ToyDataset
from ebmkit.metrics.toy import energy_grid, mmd, sliced_wasserstein, toy_metrics
from ebmkit.records import InitBatch
from ebmkit.runs import build_parts, find_checkpoint, run_experiment
from ebmkit.samplers.mala import MALA

GIN = Path(__file__).resolve().parents[1] / "gin"
STEP = 0.01  # ULA's and MALA's step in the exact regime (gin/mala_rings.gin's)

Row = tuple[str, Path, tuple[str, ...]]

EXACT: list[Row] = [
    (
        "ULA",
        GIN / "stanley_rings.gin",
        (
            "trainers.Contrastive.sampler = @samplers.Langevin()",
            f"samplers.Langevin.step_size = {STEP}",
        ),
    ),
    (
        "MALA",
        GIN / "stanley_rings.gin",
        (
            "trainers.Contrastive.sampler = @samplers.MALA()",
            f"samplers.MALA.step_size = {STEP}",
            "trainers.Contrastive.n_steps = 99",
        ),
    ),
    ("STANLEY", GIN / "stanley_rings.gin", ()),
    (
        "STANLEY + MH",
        GIN / "stanley_rings.gin",
        ("samplers.Stanley.metropolis = True", "trainers.Contrastive.n_steps = 99"),
    ),
    # The paper's eq. 6 reads Γ per coordinate: the same settings with reduce "elementwise".
    (
        "STANLEY elementwise",
        GIN / "stanley_rings.gin",
        ('samplers.Stanley.reduce = "elementwise"',),
    ),
    (
        "STANLEY elementwise + MH",
        GIN / "stanley_rings.gin",
        (
            'samplers.Stanley.reduce = "elementwise"',
            "samplers.Stanley.metropolis = True",
            "trainers.Contrastive.n_steps = 99",
        ),
    ),
]
CODE: list[Row] = [
    ("Langevin (their update)", GIN / "langevin_rings_code.gin", ()),
    ("STANLEY (noise ε·sqrt(γ))", GIN / "stanley_rings_code.gin", ()),
]
COMPARISONS = {"exact": EXACT, "code": CODE}
# Output every rounds' worth only at the end: the benchmark scores the final energy itself.
QUIET = tuple(
    f"experiment.{name} = 1000000000"
    for name in ("log_every", "eval_every", "sample_every", "checkpoint_every")
)
COLUMNS = {
    "grad_evals": "gradients / round",
    "grid_kl": "grid-KL ↓",
    "mmd": "MMD² data ↓",
    "sliced_wasserstein": "SW data ↓",
    "mmd_model": "MMD² exp(−E) ↓",
    "sliced_wasserstein_model": "SW exp(−E) ↓",
    "acceptance": "acceptance",
    "gamma_active": "Γ < ε share",
    "train_s": "train s",
}
SCORES = ("grid_kl", "mmd", "sliced_wasserstein", "mmd_model", "sliced_wasserstein_model")
REFERENCE_STEPS = 500
GAMMA_CHAINS = 1000  # chains of the short run that counts where STANLEY's Γ is active
RINGS_SETTINGS = ("n_rings", "radius", "std")


def model_reference(
    energy: torch.nn.Module,
    dataset: ToyDataset,
    n: int,
    generator: torch.Generator,
    steps: int = REFERENCE_STEPS,
    resolution: int = 200,
) -> tuple[Tensor, float]:
    """`n` samples of exp(−E): grid draws (uniform within a cell), then `steps` MALA steps.

    The draws are exact for exp(−E) restricted to the grid square up to the cell (width
    0.05 for the rings); MALA, exact for exp(−E), removes the cell's discreteness. Its step
    adapts per chain toward 0.574 acceptance over the first fifth of the steps, then stays.

    Returns:
        The samples (n, 2) and the MALA chains' mean acceptance after adaptation.
    """
    points, energies = energy_grid(energy, dataset.bounds, resolution)
    probabilities = torch.softmax(-energies, dim=0)
    cells = torch.multinomial(probabilities, n, replacement=True, generator=generator)
    width = (dataset.bounds[1] - dataset.bounds[0]) / resolution
    jitter = (torch.rand(n, 2, dtype=torch.float64, generator=generator) - 0.5) * width
    start = (points[cells] + jitter).to(torch.get_default_dtype())
    burn_in = max(1, steps // 5)
    adapted = MALA(step_size=1e-3, adapt_steps=burn_in, adaptation_rate=0.1).sample(
        energy, start, burn_in, generator=generator
    )
    continued = InitBatch(x=adapted.x, state=adapted.state)  # keeps each chain's step
    result = MALA(step_size=1e-3, adapt_steps=burn_in, adaptation_rate=0.1).sample(
        energy, continued, steps - burn_in, generator=generator, adapt=False
    )
    return result.x.detach(), float(result.acceptance_rate.mean())


def evaluate(run_dir: Path, n_samples: int, seed: int, reference_steps: int) -> dict[str, float]:
    """Short-run samples of the trained energy, scored against the data and against exp(−E)."""
    checkpoint = find_checkpoint(run_dir)
    parts = build_parts(load_checkpoint(checkpoint), str(checkpoint), "cpu")
    # The run's own rings, as its operative config (parsed by build_parts) binds them.
    rings = {key: gin.query_parameter(f"datasets.Rings.{key}") for key in RINGS_SETTINGS}
    dataset = Rings(n_samples=1, **rings)
    seed_everything(seed)
    init = parts.initializer.sample(n_samples)
    result = parts.sampler.sample(parts.energy, init.x, parts.n_steps)
    samples = result.x.detach()
    generator = torch.Generator().manual_seed(seed)
    metrics = toy_metrics(parts.energy, samples, dataset, generator, n_held_out=0)
    reference, acceptance = model_reference(
        parts.energy, dataset, n_samples, generator, reference_steps
    )
    finite = samples[torch.isfinite(samples).all(dim=1)]
    metrics["mmd_model"] = mmd(finite, reference) if len(finite) >= 2 else math.nan
    metrics["sliced_wasserstein_model"] = (
        sliced_wasserstein(finite, reference, generator=generator) if len(finite) else math.nan
    )
    metrics["reference_acceptance"] = acceptance
    metrics["grad_evals"] = float(result.n_grad_evals)
    if result.acceptance_rate is not None:
        metrics["acceptance"] = float(result.acceptance_rate.mean())
    if type(parts.sampler).__name__ == "Stanley":
        metrics["gamma_active"] = gamma_active_share(parts, init.x[:GAMMA_CHAINS])
    return metrics


def gamma_active_share(parts: Any, x: Tensor) -> float:
    """Share of (chain, step) pairs of a short run where STANLEY's Γ is below its ε.

    Where it is not (‖∇E‖ ≤ th), the step is ULA's with step ε/2, bit for bit.
    """
    sampler, active = parts.sampler, []
    for _ in range(parts.n_steps):
        result = sampler.sample(parts.energy, x, 1)  # step_size: mean Γ at x, per chain
        active.append(result.step_size < sampler.step_size)
        x = result.x
    return float(torch.stack(active).float().mean())


def train_and_score(task: dict[str, Any]) -> dict[str, Any]:
    """One (row, seed): train the config into its folder, then `evaluate` it (in a worker)."""
    torch.set_num_threads(task["threads"])
    start = time.perf_counter()
    bindings = [*task["bindings"], *QUIET, f"experiment.seed = {task['seed']}"]
    summary = run_experiment(task["config"], task["run_dir"], task["rounds"], bindings)
    seconds = time.perf_counter() - start
    metrics = evaluate(task["run_dir"], task["samples"], task["seed"], task["reference_steps"])
    metrics["train_s"] = seconds
    return {"name": task["name"], "seed": task["seed"], "rounds": summary["rounds"], **metrics}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("comparison", choices=sorted(COMPARISONS), help="which table")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--rounds", type=int, help="override the configs' n_rounds")
    parser.add_argument("--samples", type=int, default=5000, help="evaluation samples")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per training")
    parser.add_argument("--jobs", type=int, default=1, help="trainings run at once")
    parser.add_argument("--out", type=Path, help="folder for the runs (default: temporary)")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny settings")
    parser.add_argument("--rows", nargs="+", metavar="NAME", help="train only these rows")
    parser.add_argument(
        "--from-log",
        type=Path,
        nargs="+",
        help="print the tables from earlier runs' per-run lines (several logs are merged)",
    )
    options = parser.parse_args(argv)
    rows = _chosen_rows(options.comparison, options.rows)
    if options.from_log is not None:
        results = _merged([result for log in options.from_log for result in _read_log(log)])
        present = [name for name, _, _ in rows if any(r["name"] == name for r in results)]
        print(_tables(options.comparison, present, results))
        return
    reference_steps = REFERENCE_STEPS
    if options.quick:
        options.seeds, options.rounds, options.samples = options.seeds[:1], 10, 500
        reference_steps = 20
    print(
        f"# {options.comparison}: {cpu_name()}, load {load_average()}, torch "
        f"{torch.__version__}; seeds {options.seeds}; {options.samples} evaluation samples; "
        f"{options.jobs} job(s) × {options.threads} thread(s)",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="stanley-rings-") as temporary:
        root = options.out or Path(temporary)
        tasks = [
            {
                "name": name,
                "config": config,
                "bindings": bindings,
                "seed": seed,
                "rounds": options.rounds,
                "run_dir": root / f"{options.comparison}-{index}-seed{seed}",
                "samples": options.samples,
                "reference_steps": reference_steps,
                "threads": options.threads,
            }
            for seed in options.seeds
            for index, (name, config, bindings) in enumerate(rows)
        ]
        context = multiprocessing.get_context("spawn")  # gin and torch state stay per run
        with ProcessPoolExecutor(options.jobs, mp_context=context) as pool:
            results = []
            for result in pool.map(train_and_score, tasks):
                results.append(result)
                print(f"seed {result['seed']} {result['name']}: {_per_run(result)}", flush=True)
    print("\n" + _tables(options.comparison, [name for name, _, _ in rows], results))


def _chosen_rows(comparison: str, names: list[str] | None) -> list[Row]:
    """The comparison's rows, or those named (in the comparison's order)."""
    rows = COMPARISONS[comparison]
    if names is None:
        return rows
    known = [name for name, _, _ in rows]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SystemExit(f"no row {unknown} in {comparison!r}; its rows are {known}")
    return [row for row in rows if row[0] in names]


def _per_run(result: dict[str, Any]) -> str:
    keys = [*COLUMNS, "reference_acceptance", "rounds"]
    return ", ".join(f"{key} {result[key]:.6g}" for key in keys if key in result)


def _read_log(path: Path) -> list[dict[str, Any]]:
    """The results of the per-run lines ("seed S NAME: key value, ...") of a log."""
    results = []
    for line in path.read_text().splitlines():
        found = re.fullmatch(r"seed (\d+) (.+?): (grad_evals .*)", line.strip())
        if found:
            pairs = (item.split(" ") for item in found.group(3).split(", "))
            values = {key: float(value) for key, value in pairs}
            results.append({"seed": int(found.group(1)), "name": found.group(2), **values})
    if not results:
        raise SystemExit(f"no per-run lines ('seed S NAME: grad_evals ...') in {path}")
    return results


def _merged(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One result per (seed, row): a run found in two logs must have the same scores."""
    kept: dict[tuple[int, str], dict[str, Any]] = {}
    for result in results:
        key = (result["seed"], result["name"])
        if key in kept and any(kept[key].get(k) != result.get(k) for k in SCORES):
            raise SystemExit(f"seed {key[0]} {key[1]!r} is in two logs with different scores")
        kept.setdefault(key, result)
    return list(kept.values())


def _tables(comparison: str, names: list[str], results: list[dict[str, Any]]) -> str:
    """The mean ± sd table and the paired table of differences to the first row."""
    seeds = sorted({result["seed"] for result in results})
    rounds = {result.get("rounds") for result in results} - {None}
    rounds_text = f"{int(rounds.pop())} rounds" if len(rounds) == 1 else "rounds as configured"
    return (
        f"{comparison}: rings (4 rings, sd 0.15), {rounds_text}, seeds {seeds}, mean ± sd\n\n"
        f"{_table(names, results)}\n\n"
        f"Paired by seed (the same initial weights; data and data order are the same for "
        f"every seed): row − {names[0]}, mean ± sd, and the seeds where the row scores "
        f"lower (better)\n\n"
        f"{_paired(names, results)}"
    )


def _table(names: list[str], results: list[dict[str, Any]]) -> str:
    header = "| sampler | " + " | ".join(COLUMNS.values()) + " |"
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for name in names:
        runs = [result for result in results if result["name"] == name]
        cells = [_summary([run[key] for run in runs if key in run]) for key in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _paired(names: list[str], results: list[dict[str, Any]]) -> str:
    header = "| sampler | " + " | ".join(COLUMNS[key] for key in SCORES) + " |"
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    base = {result["seed"]: result for result in results if result["name"] == names[0]}
    for name in names[1:]:
        runs = [r for r in results if r["name"] == name and r["seed"] in base]
        cells = []
        for key in SCORES:
            differences = [run[key] - base[run["seed"]][key] for run in runs]
            lower = sum(difference < 0 for difference in differences)
            cells.append(f"{_summary(differences)} ({lower}/{len(differences)})")
        lines.append(f"| {name} − {names[0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _summary(values: list[float]) -> str:
    """One value, or mean ± standard deviation over seeds (non-finite values counted)."""
    if not values:
        return "–"
    finite = [v for v in values if math.isfinite(v)]
    dropped = f" ({len(values) - len(finite)} non-finite)" if len(finite) < len(values) else ""
    if not finite:
        return "nan" + dropped
    if len(set(finite)) == 1:  # one seed, or the same value on every seed
        return f"{finite[0]:.4g}" + dropped
    return f"{statistics.mean(finite):.4g} ± {statistics.stdev(finite):.2g}" + dropped


if __name__ == "__main__":
    main()
