r"""Dual-MCMC teaching on a CPU: one command per setting, trained over seeds, read out together.

Settings (``--config``):

- ``toy``: gin/dual_mcmc_eight_gaussians.gin, the paper preset (trainers.Contrastive, Langevin
  at temperature 1, λ 1/1/1) on eight Gaussians;
- ``toy-code``: gin/dual_mcmc_code_eight_gaussians.gin, the reference code's preset
  (trainers.DualMCMC with the refresh, a tempered energy E/T);
- ``digits``: gin/dual_mcmc_digits.gin, the code preset on sklearn's 8×8 digits (D = 64).

Each seed trains the config through ``ebmkit run`` (scalars logged every round), then reads:

- reconstruction MSE per dimension (``ebmkit eval reconstruct``, L = 10): inference alone,
  inference + 10 posterior steps, noise-init + 10 steps (an evaluation-time ablation on the
  same model; the paper's Table 4 noise-init rows are separately trained models);
- the fraction of rounds whose EBM revision lowered the energy, E(x̃) < E(x0), i.e. the logged
  ``initializer/revision/energy_drop`` = E(x0) − E(x̃) > 0 (measured on the energy the chains ran
  on, before its step);
- with the posterior noise off (η = 0), the largest increase of U(z) along the z-chain from
  μ(x), of the mean over points and of any single point (≤ 0: non-increasing), and the chain's
  stability number s·λ_max(P);
- the mean ‖x̃ − x0‖²/D over the first and the last tenth of the rounds (the revision shrinks as
  the generator absorbs it);
- on the toy: 10k generator samples x0 and their revisions x̃, each assigned to the nearest
  centre within 3 s_m (the rest unassigned); Σ|w − 1/8| (the core's mode_weight_errors) with
  w_k = count_k / 10k (the unassigned mass counts as error) and with w_k = count_k / assigned
  (the balance between the modes alone), the fraction unassigned, and MMD² (one fixed
  Gaussian bandwidth h = s_m) of x0 and of x̃ to 10k held-out data points; on digits the same
  MMD² (h = 4, two thirds of the digits' median pairwise distance 6.1) to the 1797 images.

    .venv/bin/python benchmarks/dual_mcmc_study.py --config toy --seeds 0 1 2
    .venv/bin/python benchmarks/dual_mcmc_study.py --config digits --quick   # a smoke run

Writes the report to benchmarks/logs/dual_mcmc_study_<config>.txt (``--quick``:
..._<config>_quick.txt; ``--log`` overrides) and prints it.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from config_runs import run_config  # noqa: E402

CONFIGS = {
    "toy": ("gin/dual_mcmc_eight_gaussians.gin", "paper preset (Contrastive, T = 1, λ 1/1/1)"),
    "toy-code": (
        "gin/dual_mcmc_code_eight_gaussians.gin",
        "code preset (DualMCMC refresh, tempered E/T)",
    ),
    "digits": ("gin/dual_mcmc_digits.gin", "code preset on 8×8 digits (D = 64)"),
}
QUICK_ROUNDS = 20
DROP_KEY = "initializer/revision/energy_drop"
SHIFT_KEY = "initializer/revision/shift"
TOY_SAMPLES = 10_000
DIGITS_BANDWIDTH = 4.0


def log_path(config: str, quick: bool) -> Path:
    suffix = "_quick" if quick else ""
    return ROOT / "benchmarks" / "logs" / f"dual_mcmc_study_{config}{suffix}.txt"


def configured_rounds(config: str) -> int:
    """The config's own n_rounds (read from the file: the trainer's binding)."""
    for line in (ROOT / config).read_text().splitlines():
        if ".n_rounds" in line and not line.lstrip().startswith("#"):
            return int(line.split("=")[1])
    raise ValueError(f"{config} binds no n_rounds")


def metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def revision_stats(lines: list[dict[str, Any]]) -> dict[str, float]:
    """Fraction of rounds with E(x̃) < E(x0) and the revision's size early and late."""
    drops = [line[DROP_KEY] for line in lines if DROP_KEY in line]
    failed = [line["round"] for line in lines if DROP_KEY in line and not line[DROP_KEY] > 0]
    shifts = [line[SHIFT_KEY] for line in lines if SHIFT_KEY in line]
    tenth = max(1, len(shifts) // 10)
    return {
        "rounds": float(len(drops)),
        "drop_fraction": sum(drop > 0 for drop in drops) / len(drops),
        "drop_failed": float(len(failed)),
        "drop_first_failed": float(failed[0]) if failed else math.nan,
        "shift_first": statistics.fmean(shifts[:tenth]),
        "shift_last": statistics.fmean(shifts[-tenth:]),
    }


def draw_pairs(run: Path, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """`n` generator samples x0 and their EBM revisions x̃ from the run's last checkpoint,
    and the run's dataset (rebuilt from its operative config)."""
    import gin
    from ebmkit.checkpoint.files import load_checkpoint
    from ebmkit.checkpoint.rng import seed_everything
    from ebmkit.runs.draw import build_parts, find_checkpoint

    checkpoint = find_checkpoint(run)
    seed_everything(seed)
    parts = build_parts(load_checkpoint(checkpoint), str(checkpoint), "cpu")
    selector = gin.query_parameter("experiment.trainer").scoped_selector
    dataset = gin.query_parameter(f"{selector}.dataset").scoped_configurable_fn()
    parts.initializer.to("cpu")
    starts, revised = [], []
    for begin in range(0, n, parts.batch_size):
        init = parts.initializer.sample(min(parts.batch_size, n - begin))
        result = parts.sampler.sample(parts.energy, init, parts.n_steps)
        starts.append(init.x.detach())
        revised.append(result.x.detach())
    return torch.cat(starts), torch.cat(revised), dataset


def mode_stats(samples: torch.Tensor, dataset: Any) -> dict[str, float]:
    """Weights of the nearest centre within 3 s_m; Σ|w − 1/8| and the unassigned fraction."""
    from ebmkit.metrics.toy import mode_weight_errors

    mixture = dataset.mixture
    distances = torch.cdist(samples.double(), mixture.means)
    nearest = distances.argmin(1)
    inside = distances.min(1).values <= 3 * float(mixture.stds[0])
    counts = torch.bincount(nearest[inside], minlength=mixture.n_components).double()
    weights = counts / samples.shape[0]  # over all samples: the unassigned mass is missing
    balance = counts / counts.sum().clamp_min(1)  # over the assigned samples only
    error, _ = mode_weight_errors(weights, mixture)
    balance_error, _ = mode_weight_errors(balance, mixture)
    return {
        "weight_error": error,
        "balance_error": balance_error,
        "unassigned": 1 - float(inside.double().mean()),
        "weight_min": float(balance.min()),
        "weight_max": float(balance.max()),
    }


def sample_stats(run: Path, seed: int, n: int, toy: bool) -> dict[str, float]:
    """Mode weights (toy) and MMD² to data of x0 and x̃."""
    from ebmkit.metrics.toy import mmd

    x0, revised, dataset = draw_pairs(run, n, seed)
    out: dict[str, float] = {}
    if toy:
        bandwidth = float(dataset.mixture.stds[0])
        data = dataset.sample(n, torch.Generator().manual_seed(2_000_003 + seed))
        for name, samples in (("x0", x0), ("xt", revised)):
            for key, value in mode_stats(samples, dataset).items():
                out[f"{name}_{key}"] = value
    else:
        bandwidth = DIGITS_BANDWIDTH
        data = torch.stack([dataset[index][0] for index in range(len(dataset))])
    flat = data.flatten(1)
    out["x0_mmd"] = mmd(x0.flatten(1), flat, (bandwidth,))
    out["xt_mmd"] = mmd(revised.flatten(1), flat, (bandwidth,))
    return out


def evaluate(run: Path, seed: int, quick: bool, toy: bool) -> dict[str, float]:
    from ebmkit_dual_mcmc.reconstruct import reconstruct_run

    batches = 2 if quick else None
    with_noise = reconstruct_run(run, steps=10, seed=seed, batches=batches)
    no_noise = reconstruct_run(run, steps=10, seed=seed, batches=batches, noise=0.0)
    result = {
        "mse_inference": with_noise["mse"]["inference"],
        "mse_inference_L": with_noise["mse"]["inference+L"],
        "mse_noise_L": with_noise["mse"]["noise+L"],
        "eta0_mse_inference_L": no_noise["mse"]["inference+L"],
        "eta0_max_increase_mean": no_noise["posterior_energy"]["max_increase_of_mean"],
        "eta0_max_increase_point": no_noise["posterior_energy"]["max_increase_per_point"],
        "eta0_U_start": no_noise["posterior_energy"]["mean_per_step"][0],
        "eta0_U_end": no_noise["posterior_energy"]["mean_per_step"][-1],
        "step_x_lambda_max": no_noise["stability"].get("step_x_lambda_max", math.nan),
        "recon_n": float(with_noise["n"]),
    }
    result.update(revision_stats(metrics(run)))
    result.update(sample_stats(run, seed, 1000 if quick else TOY_SAMPLES, toy))
    return result


def cell(values: list[float], digits: int = 4) -> str:
    if not values:
        return "—"
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


ROWS = [
    ("recon MSE, inference alone", "mse_inference", 4),
    ("recon MSE, inference + 10 steps", "mse_inference_L", 4),
    ("recon MSE, noise-init + 10 steps (eval-time ablation)", "mse_noise_L", 4),
    ("recon MSE, inference + 10 steps at η = 0", "eta0_mse_inference_L", 4),
    ("η = 0: max increase of mean U(z) over a step", "eta0_max_increase_mean", 4),
    ("η = 0: max increase of U(z) of any point over a step", "eta0_max_increase_point", 4),
    ("η = 0: mean U(z) at μ(x) → after 10 steps", None, 2),
    ("posterior step × λ_max(P) (max over 100 points)", "step_x_lambda_max", 3),
    ("fraction of rounds with E(x̃) < E(x0)", "drop_fraction", 3),
    ("‖x̃ − x0‖²/D, first tenth of rounds", "shift_first", 4),
    ("‖x̃ − x0‖²/D, last tenth of rounds", "shift_last", 4),
    ("MMD² to data, x0 (generator)", "x0_mmd", 4),
    ("MMD² to data, x̃ (revised)", "xt_mmd", 4),
]
TOY_ROWS = [
    ("Σ\\|w − 1/8\\|, x0 (w over all samples)", "x0_weight_error", 3),
    ("Σ\\|w − 1/8\\|, x̃ (w over all samples)", "xt_weight_error", 3),
    ("Σ\\|w − 1/8\\|, x0 (w over the assigned)", "x0_balance_error", 3),
    ("Σ\\|w − 1/8\\|, x̃ (w over the assigned)", "xt_balance_error", 3),
    ("unassigned (farther than 3 s_m), x0", "x0_unassigned", 3),
    ("unassigned (farther than 3 s_m), x̃", "xt_unassigned", 3),
    ("min / max mode weight over the assigned, x0", ("x0_weight_min", "x0_weight_max"), 3),
    ("min / max mode weight over the assigned, x̃", ("xt_weight_min", "xt_weight_max"), 3),
]


def report(
    config: str, results: dict[int, dict[str, float]], rounds: int, seconds: dict[int, float]
) -> str:
    path, preset = CONFIGS[config]
    seeds = sorted(results)
    runs = [results[seed] for seed in seeds if "diverged" not in results[seed]]
    lines = [
        f"# Dual-MCMC study: {config} — {path}, {preset}",
        f"{rounds} rounds, seeds {seeds}; mean ± sd over the seeds that finished "
        f"({len(runs)} of {len(seeds)}); training s per seed: "
        + ", ".join(f"{seconds[seed]:.0f}" for seed in seeds),
        "",
    ]
    for seed in seeds:
        if "diverged" in results[seed]:
            lines.append(f"seed {seed}: diverged at round {results[seed]['diverged']:.0f}")
    lines += ["| quantity | mean ± sd | per seed |", "|---|---|---|"]
    rows = ROWS + (TOY_ROWS if config.startswith("toy") else [])
    for name, key, digits in rows:
        if key is None:
            start = cell([run["eta0_U_start"] for run in runs], digits)
            end = cell([run["eta0_U_end"] for run in runs], digits)
            lines.append(f"| {name} | {start} → {end} | |")
            continue
        if isinstance(key, tuple):
            low = cell([run[key[0]] for run in runs], digits)
            high = cell([run[key[1]] for run in runs], digits)
            lines.append(f"| {name} | {low} / {high} | |")
            continue
        values = [run[key] for run in runs]
        per_seed = ", ".join(f"{value:.{digits}f}" for value in values)
        lines.append(f"| {name} | {cell(values, digits)} | {per_seed} |")
    if runs:
        lines += ["", f"reconstructions on {runs[0]['recon_n']:.0f} points per seed"]
        failures = ", ".join(
            f"seed {seed}: {results[seed]['drop_failed']:.0f}"
            + (
                f" (first at round {results[seed]['drop_first_failed']:.0f})"
                if results[seed]["drop_failed"]
                else ""
            )
            for seed in seeds
            if "diverged" not in results[seed]
        )
        lines.append(f"rounds with E(x̃) ≥ E(x0): {failures}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, help="default: the config's n_rounds")
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_ROUNDS} rounds, small evaluations"
    )
    parser.add_argument("--log", type=Path, help="where to write the report")
    args = parser.parse_args(argv)
    config = CONFIGS[args.config][0]
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else configured_rounds(config))
    bindings = ["experiment.log_every = 1"]
    results: dict[int, dict[str, float]] = {}
    seconds: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        for seed in args.seeds:
            out = Path(folder) / f"seed-{seed}"
            start = time.perf_counter()
            trained = run_config(config, bindings, seed, rounds, out)
            seconds[seed] = time.perf_counter() - start
            if "diverged" in trained:
                results[seed] = {"diverged": trained["diverged"]}
                continue
            results[seed] = evaluate(out, seed, args.quick, args.config.startswith("toy"))
            print(f"seed {seed}: {json.dumps(results[seed])}", file=sys.stderr)
    text = report(args.config, results, rounds, seconds)
    path = args.log or log_path(args.config, args.quick)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
