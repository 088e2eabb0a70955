"""STANLEY vs Langevin on the rings toy: train both configs, score both energies and samples.

The two configs differ only in the sampler (gin/langevin_rings.gin, gin/stanley_rings.gin:
same energy, data, noise start, 100 short-run steps, rounds and optimizer). Each is trained
with `ebmkit.runs.run_experiment` into its own folder; then `--samples` fresh short-run chains
are drawn from the trained energy with the run's own sampler and initializer, and scored
against the exact rings density:

- grid-KL: KL(p_data ‖ exp(−E)/Z) on a 200×200 grid (scores the energy itself);
- MMD (squared, Gaussian kernels 0.1–2) and sliced 2-Wasserstein: samples vs as many exact
  samples (score what the short-run sampler produces, the model's working output).

    .venv/bin/python benchmarks/stanley_rings_comparison.py [--out DIR] [--rounds N]
        [--seeds 0 1 ...] [--samples 10000] [--threads 1] [--with-mh]

Without --out the runs go to a temporary folder that is deleted afterwards. --with-mh adds a
third row: the STANLEY config with `samplers.Stanley.metropolis = True` (101 gradients per
round instead of 100).
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch

import ebmkit
import gin
from ebmkit.checkpoint.files import load_checkpoint
from ebmkit.checkpoint.rng import seed_everything
from ebmkit.metrics.toy import toy_metrics
from ebmkit.runs import build_parts, draw_samples, find_checkpoint, run_experiment

GIN = Path(__file__).resolve().parents[1] / "gin"
ROWS = [
    ("Langevin", GIN / "langevin_rings.gin", ()),
    ("STANLEY", GIN / "stanley_rings.gin", ()),
]
MH_ROW = ("STANLEY + MH", GIN / "stanley_rings.gin", ("samplers.Stanley.metropolis = True",))
METRICS = ("grid_kl", "mmd", "sliced_wasserstein")
RINGS_SETTINGS = ("n_rings", "radius", "std")


def evaluate(run_dir: Path, n_samples: int, seed: int) -> dict[str, float]:
    """Fresh short-run samples from the trained run, scored against the exact density."""
    checkpoint = find_checkpoint(run_dir)
    parts = build_parts(load_checkpoint(checkpoint), str(checkpoint), "cpu")
    # The run's own rings, as its operative config (parsed by build_parts) binds them.
    rings = {key: gin.query_parameter(f"datasets.Rings.{key}") for key in RINGS_SETTINGS}
    dataset = ebmkit.create("dataset", "Rings", **rings)
    seed_everything(seed)
    samples = draw_samples(parts, n_samples)
    generator = torch.Generator().manual_seed(seed)
    return toy_metrics(parts.energy, samples, dataset, generator)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for the runs (default: temporary)")
    parser.add_argument("--rounds", type=int, help="override both configs' n_rounds")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="experiment.seed")
    parser.add_argument("--samples", type=int, default=10_000, help="evaluation samples")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--with-mh", action="store_true", help="add MH-adjusted STANLEY")
    options = parser.parse_args(argv)
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    rows = ROWS + ([MH_ROW] if options.with_mh else [])

    with tempfile.TemporaryDirectory(prefix="stanley-rings-") as temporary:
        root = options.out or Path(temporary)
        results: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in rows}
        for seed in options.seeds:
            for name, config, bindings in rows:  # interleaved by seed
                run_dir = root / f"{config.stem}{'-mh' if bindings else ''}-seed{seed}"
                start = time.perf_counter()
                summary = run_experiment(
                    config, run_dir, options.rounds, [*bindings, f"experiment.seed = {seed}"]
                )
                seconds = time.perf_counter() - start
                metrics = evaluate(run_dir, options.samples, seed)
                metrics["train_s"] = seconds
                metrics["rounds"] = summary["rounds"]
                results[name].append(metrics)
                print(
                    f"seed {seed} {name}: "
                    + ", ".join(f"{key} {metrics[key]:.4g}" for key in (*METRICS, "train_s")),
                    flush=True,
                )

    print(
        f"\nrings (4 rings, sd 0.15); {results[rows[0][0]][0]['rounds']} rounds; "
        f"seeds {options.seeds}; {options.samples} evaluation samples per run; "
        f"threads {torch.get_num_threads()}\n"
    )
    header = "| sampler | grid-KL ↓ | MMD² ↓ | sliced W2 ↓ | train wall s |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for name, runs in results.items():
        cells = [_summary([run[key] for run in runs]) for key in (*METRICS, "train_s")]
        print(f"| {name} | " + " | ".join(cells) + " |")


def _summary(values: list[float]) -> str:
    """One value, or mean ± standard deviation over seeds."""
    if len(values) == 1:
        return f"{values[0]:.4g}"
    finite = [v for v in values if math.isfinite(v)]
    return f"{statistics.mean(finite):.4g} ± {statistics.stdev(finite):.2g}"


if __name__ == "__main__":
    main()
