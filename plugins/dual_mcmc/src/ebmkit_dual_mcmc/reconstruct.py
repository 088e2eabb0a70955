r"""`ebmkit eval reconstruct`: how well a trained Dual-MCMC run reconstructs its data.

Three reconstructions g(z) of each data point x, MSE per dimension (mean over points and
dimensions of (x − g(z))²):

- "inference": z = μ(x), the inference model's mean (amortised, no chain);
- "inference+L": z0 = μ(x), then L steps of the run's posterior sampler on
  U(z) = ‖x − g(z)‖²/(2σ²) + ‖z‖²/2 (the paper's reconstructions, Table 3);
- "noise+L": z0 ~ N(0, I), then the same L steps.

The paper's Table 4 "noise-init" rows are separately trained models (their z-chain starts at
noise in training too); "noise+L" here is an evaluation-time ablation on the same trained
model, so it measures what the inference start buys in L steps, not what training without
it gives.

It also follows U along a chain from μ(x), one step at a time (mean U over the points at
each step, and the largest increase of a step, mean and per point): with the noise off
(``--noise 0``) and a step below 1/L_U (L_U the Lipschitz constant of ∇U) the chain is gradient
descent and U cannot increase (method reference §8 T6). And it estimates the posterior
chain's stability number s·λ_max(P), P = I + JᵀJ/σ² (Gauss–Newton curvature of U at μ(x),
J the generator's Jacobian) by power iteration: ULA in z is stable for s·λ_max < 2, the
configs keep it ≤ 0.5.

Data: the run's dataset rebuilt from its operative config. A 2-D toy set's "test" points are
fresh exact draws from a generator seeded apart from the set's own (held out); its "train"
points are the stored ones. An image set with a `split` argument is rebuilt with that split;
one without (datasets.Digits) has only "train".
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
from typing import Any

import attrs
import torch
from torch import Tensor

import gin
from ebmkit import EbmkitError
from ebmkit.checkpoint.files import load_checkpoint
from ebmkit.checkpoint.rng import seed_everything
from ebmkit.runs.draw import build_parts, find_checkpoint
from ebmkit_dual_mcmc.initializer import Generator

__all__ = [
    "HELD_OUT_SEED",
    "TABLE_4_NOTE",
    "configure_parser",
    "posterior_lambda_max",
    "reconstruct_run",
    "run",
]

HELD_OUT_SEED = 1_000_003
"""A toy set's held-out ("test") points come from a generator seeded HELD_OUT_SEED + seed."""

TABLE_4_NOTE = (
    "noise+L is an evaluation-time ablation on this trained model (z0 ~ N(0, I), then L "
    "posterior steps); the paper's Table 4 noise-init rows are separately trained models whose "
    "z-chains also start at noise in training, so they are not the same quantity"
)

_SPLITS = ("test", "train")
_POWER_ITERATIONS = 30


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """The flags of `ebmkit eval reconstruct`."""
    parser.add_argument("run", help="a run directory (newest checkpoint) or a checkpoint file")
    parser.add_argument(
        "--steps", type=int, default=10, help="L, posterior steps after the start (default 10)"
    )
    parser.add_argument(
        "--batches",
        type=int,
        help="data batches to use (default: the whole split of an image set, 10 for a toy set)",
    )
    parser.add_argument(
        "--batch-size", type=int, help="points per batch (default: the run's batch size)"
    )
    parser.add_argument(
        "--split",
        choices=_SPLITS,
        help="test (held out; default where the set has one) or train",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds every draw (default 0)")
    parser.add_argument("--device", help="default: the run's device")
    parser.add_argument(
        "--noise",
        type=float,
        help="override the posterior Langevin's noise scale (0: gradient descent on U, the "
        "T6 check); default: as trained",
    )


def run(args: argparse.Namespace) -> None:
    """Print the summary of `ebmkit eval reconstruct` as JSON."""
    summary = reconstruct_run(
        args.run,
        steps=args.steps,
        batches=args.batches,
        batch_size=args.batch_size,
        split=args.split,
        seed=args.seed,
        device=args.device,
        noise=args.noise,
    )
    print(json.dumps(summary, indent=2))


def _check_count(flag: str, value: int | None, minimum: int) -> None:
    if value is not None and value < minimum:
        raise EbmkitError(f"ebmkit eval reconstruct: {flag} must be >= {minimum}, got {value}")


def _initializer_name(selector: str, initializer: Any) -> str:
    """How the run's config names its initializer, e.g. "@initializers.Replay()"."""
    try:
        reference = gin.query_parameter(f"{selector}.initializer")
    except ValueError:
        return type(initializer).__name__
    if isinstance(reference, gin.config.ConfigurableReference):
        return f"@{reference.selector}()"
    return type(initializer).__name__


def _trainer_selector() -> str:
    return gin.query_parameter("experiment.trainer").scoped_selector


def _dataset_reference(selector: str, origin: str) -> Any:
    try:
        reference = gin.query_parameter(f"{selector}.dataset")
    except ValueError as error:
        raise EbmkitError(
            f"the operative config in {origin} binds no {selector}.dataset: ebmkit eval "
            f"reconstruct needs the run's data"
        ) from error
    if not isinstance(reference, gin.config.ConfigurableReference):
        raise EbmkitError(
            f"{selector}.dataset in {origin} is {reference!r}, not a gin reference to a "
            f"dataset (e.g. @datasets.Digits())"
        )
    return reference


def _is_toy(dataset: Any) -> bool:
    return callable(getattr(dataset, "sample", None)) and hasattr(dataset, "points")


def _first(item: Any) -> Tensor:
    """An item's x: toy sets give tensors, image sets (x, label)."""
    return item[0] if isinstance(item, tuple | list) else item


def _take(dataset: Any, n: int | None, seed: int) -> Tensor:
    """`n` items (all when None) of a finite dataset in a seeded random order, stacked."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    if n is not None:
        order = order[:n]
    return torch.stack([_first(dataset[int(index)]) for index in order])


def load_data(
    reference: Any, split: str | None, n: int | None, default_n: int, seed: int
) -> tuple[Tensor, str, str]:
    """(x, split used, where it came from) for the run's dataset `reference`."""
    factory = reference.scoped_configurable_fn
    name = f"@{reference.selector}()"
    dataset = factory()
    if _is_toy(dataset):
        if split == "train":
            points = dataset.points
            if n is not None:
                order = torch.randperm(len(points), generator=torch.Generator().manual_seed(seed))
                points = points[order[:n]]
            return points, "train", f"{name}: its stored training points"
        generator = torch.Generator().manual_seed(HELD_OUT_SEED + seed)
        count = default_n if n is None else n
        source = (
            f"{name}: {count} fresh exact draws seeded {HELD_OUT_SEED + seed} (the set's own "
            f"points are seeded {dataset.seed})"
        )
        return dataset.sample(count, generator), "test", source
    try:
        has_split = "split" in inspect.signature(reference.configurable.wrapped).parameters
    except (TypeError, ValueError):
        has_split = False
    if split is None:
        split = "test" if has_split else "train"
    if split == "test":
        if not has_split:
            raise EbmkitError(
                f"the run's dataset {name} has no held-out split (no `split` argument); use "
                f"--split train"
            )
        dataset = factory(split="test")
    elif has_split:
        dataset = factory(split="train")
    return _take(dataset, n, seed), split, f"{name} split {split!r}"


def posterior_lambda_max(generator: torch.nn.Module, z: Tensor, sigma: float) -> Tensor:
    """λ_max of P = I + JᵀJ/σ² at each row of z (J = ∂g/∂z there), by power iteration.

    Jv and Jᵀw come from two backward passes (the double-vjp trick), so any generator
    works, whatever its size. Rows are independent for a generator without batch coupling
    (no BatchNorm in train mode).

    Example:
        >>> g = torch.nn.Linear(2, 3, bias=False)
        >>> with torch.no_grad():
        ...     _ = g.weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
        >>> float(posterior_lambda_max(g, torch.zeros(1, 2), sigma=1.0)[0])  # 1 + 3²
        10.0
    """
    with torch.enable_grad():
        z = z.detach().clone().requires_grad_(True)
        x = generator(z)
        w = torch.zeros_like(x, requires_grad=True)
        (transposed,) = torch.autograd.grad(x, z, w, create_graph=True)  # Jᵀw, linear in w
        v = torch.randn(z.shape, generator=torch.Generator().manual_seed(0), dtype=z.dtype)
        v = v.to(z.device)
        value = torch.ones(z.shape[0], device=z.device, dtype=z.dtype)
        for _ in range(_POWER_ITERATIONS):
            v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-30)
            (jv,) = torch.autograd.grad(transposed, w, v, retain_graph=True)
            (jtjv,) = torch.autograd.grad(x, z, jv, retain_graph=True)
            pv = v + jtjv / sigma**2
            value = (v * pv).sum(1)  # the Rayleigh quotient of the unit v
            v = pv.detach()
    return value.detach()


def _with_noise(sampler: Any, noise: float | None) -> Any:
    """The posterior sampler, its noise scale replaced when `noise` is given."""
    if noise is None:
        return sampler
    if not math.isfinite(noise) or noise < 0:
        raise EbmkitError(f"ebmkit eval reconstruct: --noise must be >= 0, got {noise}")
    if not attrs.has(type(sampler)) or "noise_scale" not in attrs.fields_dict(type(sampler)):
        raise EbmkitError(
            f"ebmkit eval reconstruct --noise sets the posterior sampler's noise_scale, but "
            f"the run's posterior sampler {type(sampler).__name__} has none (a "
            f"samplers.Langevin has)"
        )
    return attrs.evolve(sampler, noise_scale=noise)


def _sampler_record(sampler: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"name": type(sampler).__name__}
    for name in ("step_size", "noise_scale"):
        value = getattr(sampler, name, None)
        if isinstance(value, int | float):
            record[name] = float(value)
    return record


def _energy_trace(initializer: Generator, x: Tensor, start: Tensor, steps: int) -> Tensor:
    """U at z_0 … z_L of one posterior chain from `start`, one step at a time: (L + 1, B)."""
    energy = initializer.posterior_energy(x)
    z = start
    with torch.no_grad():
        values = [energy(z)]
    for _ in range(steps):
        z = initializer.posterior_sampler.sample(energy, z, 1).x.detach()
        with torch.no_grad():
            values.append(energy(z))
    return torch.stack(values)


def reconstruct_run(
    run: str | os.PathLike[str],
    *,
    steps: int = 10,
    batches: int | None = None,
    batch_size: int | None = None,
    split: str | None = None,
    seed: int = 0,
    device: str | None = None,
    noise: float | None = None,
) -> dict[str, Any]:
    """`ebmkit eval reconstruct`: rebuild the run at its newest (or the given) checkpoint
    and reconstruct its data (see the module); returns the summary printed as JSON.

    Raises:
        EbmkitError: the run's initializer is not `initializers.Generator`, a bad flag, or
            a split the dataset does not have.
    """
    _check_count("--steps", steps, 0)
    _check_count("--batches", batches, 1)
    _check_count("--batch-size", batch_size, 1)
    if split is not None and split not in _SPLITS:
        raise EbmkitError(f"ebmkit eval reconstruct: --split must be test or train, got {split}")
    checkpoint = find_checkpoint(run)
    state = load_checkpoint(checkpoint)
    seed_everything(seed)
    parts = build_parts(state, str(checkpoint), device)
    selector = _trainer_selector()
    initializer = parts.initializer
    if not isinstance(initializer, Generator):
        raise EbmkitError(
            f"ebmkit eval reconstruct needs a Dual-MCMC run, whose initializer is "
            f"@initializers.Generator() (a generator g(z) with an inference model q(z|x)); "
            f"{checkpoint} was trained with initializer {_initializer_name(selector, initializer)}"
        )
    initializer.to(parts.device)
    initializer.posterior_sampler = _with_noise(initializer.posterior_sampler, noise)
    size = batch_size or parts.batch_size
    wanted = None if batches is None else batches * size
    x_all, used, source = load_data(
        _dataset_reference(selector, str(checkpoint)), split, wanted, 10 * size, seed
    )
    seed_everything(seed)  # the draws below do not depend on how the data were read
    totals = dict.fromkeys(("inference", "inference+L", "noise+L"), 0.0)
    traces = []
    lambda_max: Tensor | None = None
    for begin in range(0, x_all.shape[0], size):
        x = x_all[begin : begin + size].to(parts.device)
        reconstructions = {
            "inference": initializer.reconstruct(x, 0, "inference"),
            "inference+L": initializer.reconstruct(x, steps, "inference"),
            "noise+L": initializer.reconstruct(x, steps, "noise"),
        }
        for name, value in reconstructions.items():
            totals[name] += float((value - x).double().square().sum())
        with torch.no_grad():
            start = initializer.infer(x)[0]
        traces.append(_energy_trace(initializer, x, start, steps).double().cpu())
        if lambda_max is None:  # the first batch is enough for the stability number
            lambda_max = posterior_lambda_max(initializer.generator, start, initializer.sigma)
    count = x_all.numel()
    trace = torch.cat(traces, dim=1)  # (L + 1, n)
    increase = trace.diff(dim=0)
    mean_trace = trace.mean(1)
    step_size = getattr(initializer.posterior_sampler, "step_size", None)
    stability: dict[str, Any] = {
        "lambda_max": float(lambda_max.max()),
        "lambda_max_median": float(lambda_max.median()),
        "points": int(lambda_max.numel()),
        "curvature": "Gauss-Newton P = I + J^T J / sigma^2 at z = mu(x), first batch",
    }
    if isinstance(step_size, int | float):
        stability["step_x_lambda_max"] = float(step_size) * stability["lambda_max"]
    return {
        "checkpoint": str(checkpoint),
        "round": parts.round_index,
        "L": steps,
        "n": int(x_all.shape[0]),
        "dimensions": int(x_all[0].numel()),
        "split": used,
        "data": source,
        "seed": seed,
        "sigma": initializer.sigma,
        "posterior_sampler": _sampler_record(initializer.posterior_sampler),
        "mse": {name: total / count for name, total in totals.items()},
        "posterior_energy": {
            "start": "inference mean mu(x)",
            "mean_per_step": [float(value) for value in mean_trace],
            "max_increase_of_mean": float(mean_trace.diff().max()) if steps else 0.0,
            "max_increase_per_point": float(increase.max()) if steps else 0.0,
        },
        "stability": stability,
        "note": TABLE_4_NOTE,
    }
