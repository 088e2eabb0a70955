"""Metrics that score a 2-D energy and its samples against a toy set's exact density."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ebmkit.data.toy import GaussianMixture2D, ToyDataset

__all__ = [
    "Energy",
    "energy_grid",
    "grid_kl",
    "mmd",
    "mode_weights",
    "sliced_wasserstein",
    "toy_metrics",
]

Energy = Callable[[Tensor], Tensor]
"""Anything mapping a (B, 2) batch to (B,) energies: a plain callable or an nn.Module."""

# Most points one energy call sees while evaluating a grid (bounds peak memory of big nets).
_GRID_CHUNK = 65536
# Most float64 elements of one block of pairwise kernel values in `mmd` (32 MiB).
_KERNEL_BLOCK_ELEMENTS = 1 << 22
# Seed of the private generator metrics use when none is given (never the global RNG).
_DEFAULT_SEED = 0


def _energy_device_dtype(energy: Energy) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the energy's first floating parameter or buffer.

    Falls back to CPU and torch's default dtype for plain callables or parameter-free modules.
    """
    if isinstance(energy, nn.Module):
        for tensor in (*energy.parameters(), *energy.buffers()):
            if tensor.is_floating_point():
                return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def _private_generator(generator: torch.Generator | None) -> torch.Generator:
    """The given generator, or a fresh CPU one seeded with `_DEFAULT_SEED`."""
    return generator if generator is not None else torch.Generator().manual_seed(_DEFAULT_SEED)


def _check_samples(name: str, x: Tensor, minimum: int) -> None:
    """Raise ValueError unless `x` is a 2-D (n, d) tensor with n >= `minimum`."""
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (n, d), got {tuple(x.shape)}")
    if x.shape[0] < minimum:
        raise ValueError(f"{name} needs at least {minimum} rows, got {x.shape[0]}")


def energy_grid(
    energy: Energy, bounds: tuple[float, float], resolution: int = 200
) -> tuple[Tensor, Tensor]:
    """Evaluate an energy at the cell centres of a square grid over [lo, hi]^2.

    The energy runs under torch.no_grad, in its current train/eval mode, on the device and
    dtype of its parameters (CPU and the default dtype for plain callables), in chunks of at
    most 65536 points.

    Arguments:
        energy: callable or nn.Module mapping (B, 2) to energies (B,).
        bounds: (lo, hi) of the square.
        resolution: number of cells per side, >= 1.
    Returns:
        points: (resolution**2, 2) CPU float64 cell centres, x varying fastest, so that
            `values.reshape(resolution, resolution)[i, j]` sits at (x_j, y_i), the layout of
            `imshow(..., origin="lower")`.
        energies: (resolution**2,) CPU float64 energies at those points.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be an integer >= 1, got {resolution!r}")
    lo, hi = float(bounds[0]), float(bounds[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"bounds must be finite with lo < hi, got {bounds!r}")
    step = (hi - lo) / resolution
    centres = lo + (torch.arange(resolution, dtype=torch.float64) + 0.5) * step
    grid_y, grid_x = torch.meshgrid(centres, centres, indexing="ij")
    points = torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), dim=1)
    device, dtype = _energy_device_dtype(energy)
    values = []
    with torch.no_grad():
        for chunk in torch.split(points, _GRID_CHUNK):
            out = energy(chunk.to(device=device, dtype=dtype))
            if out.shape not in ((chunk.shape[0],), (chunk.shape[0], 1)):
                batch = chunk.shape[0]
                raise ValueError(
                    f"energy must map (B, 2) to (B,), got {tuple(out.shape)} for B={batch}"
                )
            values.append(out.reshape(-1).to(device="cpu", dtype=torch.float64))
    return points, torch.cat(values)


def grid_kl(energy: Energy, dataset: ToyDataset, resolution: int = 200) -> float:
    """KL(p_data || p_model) with both densities normalised over the cells of a grid.

    p_data = exp(dataset.log_density) and p_model = exp(-E) are evaluated at the cell centres
    of `dataset.bounds` and normalised with logsumexp in float64; cells where p_data is 0
    contribute 0. Exact up to the grid (midpoint rule). Non-finite energies give inf or nan.

    Arguments:
        energy: callable or nn.Module mapping (B, 2) to energies (B,).
        dataset: toy set providing the exact log-density and the bounds.
        resolution: cells per side of the grid.
    Returns:
        The KL divergence in nats.
    """
    points, energies = energy_grid(energy, dataset.bounds, resolution)
    log_p = dataset.log_density(points)
    if bool(torch.isnan(log_p).any() | (log_p == math.inf).any()):
        raise ValueError(
            "dataset log-density is +inf or nan at a grid cell centre (e.g. the Rings origin); "
            "use an even resolution"
        )
    log_p = log_p - torch.logsumexp(log_p, dim=0)
    log_q = -energies - torch.logsumexp(-energies, dim=0)
    support = log_p > -math.inf
    p = log_p[support].exp()
    return float((p * (log_p[support] - log_q[support])).sum())


def _kernel_sum(a: Tensor, b: Tensor, bandwidths: Sequence[float]) -> Tensor:
    """Sum over all pairs (i, j) of sum_h exp(-|a_i - b_j|^2 / (2 h^2)), in float64 blocks."""
    rows = max(1, _KERNEL_BLOCK_ELEMENTS // max(1, b.shape[0]))
    b_squared = (b * b).sum(dim=1)
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    for block in torch.split(a, rows):
        squared = (block * block).sum(dim=1)[:, None] + b_squared[None, :] - 2.0 * block @ b.T
        squared = squared.clamp_min(0.0)
        for h in bandwidths:
            total += torch.exp(squared / (-2.0 * h * h)).sum()
    return total


def mmd(x: Tensor, y: Tensor, bandwidths: Sequence[float] = (0.1, 0.2, 0.5, 1.0, 2.0)) -> float:
    """Unbiased estimate of the squared MMD between samples x (m, d) and y (n, d).

    The kernel is a sum of Gaussians exp(-|a - b|^2 / (2 h^2)) over `bandwidths`, so one
    number covers fine and coarse mismatches. Computed in float64 on x's device, O(m n) time
    in blocks of bounded memory. The unbiased estimate can be slightly negative.
    """
    _check_samples("x", x, 2)
    _check_samples("y", y, 2)
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}"
        )
    widths = [float(h) for h in bandwidths]
    if not widths or not all(math.isfinite(h) and h > 0 for h in widths):
        raise ValueError(
            f"bandwidths must be a non-empty sequence of numbers > 0, got {bandwidths!r}"
        )
    x = x.to(torch.float64)
    y = y.to(device=x.device, dtype=torch.float64)
    m, n, k = x.shape[0], y.shape[0], len(widths)
    # Each kernel is 1 on the diagonal, so removing i == j terms subtracts m * k (n * k).
    xx = (_kernel_sum(x, x, widths) - m * k) / (m * (m - 1))
    yy = (_kernel_sum(y, y, widths) - n * k) / (n * (n - 1))
    xy = _kernel_sum(x, y, widths) / (m * n)
    return float(xx + yy - 2.0 * xy)


def _squared_w2_sorted(x_sorted: Tensor, y_sorted: Tensor) -> Tensor:
    """Exact squared W2 between 1-D empirical laws, per column of sorted (m, P) and (n, P).

    W2^2 = int_0^1 (Q_x(t) - Q_y(t))^2 dt with empirical quantile functions; both are constant
    between consecutive levels of {i/m} U {j/n}, so the integral is a finite sum. Levels are
    kept as integers over the common denominator m * n to merge them without rounding.
    """
    m, n = x_sorted.shape[0], y_sorted.shape[0]
    levels = torch.unique(
        torch.cat((torch.arange(1, m + 1) * n, torch.arange(1, n + 1) * m))
    )  # right ends of the intervals, in units of 1 / (m n)
    widths = torch.diff(levels, prepend=levels.new_zeros(1)).to(torch.float64) / (m * n)
    x_index = (levels + n - 1) // n - 1  # ceil(t m) - 1 at t = level / (m n)
    y_index = (levels + m - 1) // m - 1
    device = x_sorted.device
    gap = x_sorted[x_index.to(device)] - y_sorted[y_index.to(device)]
    return (widths.to(device)[:, None] * gap * gap).sum(dim=0)


def sliced_wasserstein(
    x: Tensor,
    y: Tensor,
    n_projections: int = 256,
    generator: torch.Generator | None = None,
) -> float:
    """Sliced 2-Wasserstein distance SW2 between samples x (m, d) and y (n, d).

    SW2 = sqrt(mean over random unit directions u of W2^2(u.x, u.y)); each 1-D W2^2 is exact
    for the two empirical laws, also when m != n (quantiles are compared on the merged set of
    levels). Directions come from `generator` (a CPU generator), or from a private generator
    seeded with 0 when None: the global RNG is never used, so the value is reproducible.
    """
    _check_samples("x", x, 1)
    _check_samples("y", y, 1)
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}"
        )
    if isinstance(n_projections, bool) or not isinstance(n_projections, int) or n_projections < 1:
        raise ValueError(f"n_projections must be an integer >= 1, got {n_projections!r}")
    generator = _private_generator(generator)
    directions = torch.randn(n_projections, x.shape[1], dtype=torch.float64, generator=generator)
    directions = directions / torch.linalg.vector_norm(directions, dim=1, keepdim=True)
    directions = directions.to(x.device)
    x = x.to(torch.float64)
    y = y.to(device=x.device, dtype=torch.float64)
    x_sorted = torch.sort(x @ directions.T, dim=0).values
    y_sorted = torch.sort(y @ directions.T, dim=0).values
    return math.sqrt(float(_squared_w2_sorted(x_sorted, y_sorted).mean()))


def mode_weights(samples: Tensor, mixture: GaussianMixture2D) -> Tensor:
    """Fraction of samples (n, 2) assigned to each mixture component, as (K,) float64."""
    _check_samples("samples", samples, 1)
    counts = torch.bincount(mixture.assign(samples).cpu(), minlength=mixture.n_components)
    return counts.to(torch.float64) / samples.shape[0]


def toy_metrics(
    energy: Energy,
    samples: Tensor,
    dataset: ToyDataset,
    generator: torch.Generator | None = None,
    resolution: int = 200,
    n_reference: int | None = None,
) -> dict[str, float]:
    """All toy metrics for one energy and its samples, as a flat dict for logging.

    Keys: "grid_kl", "finite_fraction" (share of sample rows that are finite; the others are
    dropped), "mmd" and "sliced_wasserstein" against fresh exact samples from the dataset, and
    for Gaussian-mixture sets "mode_weight_<k>" per component plus "mode_weight_error" (largest
    |estimated - true| weight). Sample-based entries are nan when no finite sample is left.

    Runs during training without changing its random stream: reference samples and projection
    directions come from `generator` (a private generator seeded with 0 when None), and the
    CPU and the energy's CUDA RNG states are restored after the energy is evaluated.

    Arguments:
        energy: callable or nn.Module mapping (B, 2) to energies (B,).
        samples: (n, 2) model samples, on any device.
        dataset: toy set with the exact density.
        generator: CPU generator for the reference samples and the projections.
        resolution: cells per side of the grid_kl grid.
        n_reference: number of reference samples; len(samples) when None.
    """
    _check_samples("samples", samples, 0)
    generator = _private_generator(generator)
    n_reference = samples.shape[0] if n_reference is None else n_reference
    if isinstance(n_reference, bool) or not isinstance(n_reference, int) or n_reference < 0:
        raise ValueError(f"n_reference must be an integer >= 0 or None, got {n_reference!r}")
    device, _ = _energy_device_dtype(energy)
    cuda_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        kl = grid_kl(energy, dataset, resolution)
    finite = torch.isfinite(samples).all(dim=1)
    kept = samples[finite].to(torch.float64)
    metrics = {
        "grid_kl": kl,
        "finite_fraction": float(finite.double().mean()) if samples.shape[0] else math.nan,
        "mmd": math.nan,
        "sliced_wasserstein": math.nan,
    }
    reference = dataset.sample(n_reference, generator).to(kept.device)
    if kept.shape[0] >= 2 and reference.shape[0] >= 2:
        metrics["mmd"] = mmd(kept, reference)
    if kept.shape[0] >= 1 and reference.shape[0] >= 1:
        metrics["sliced_wasserstein"] = sliced_wasserstein(kept, reference, generator=generator)
    mixture = dataset.mixture
    if mixture is not None:
        if kept.shape[0] >= 1:
            estimated = mode_weights(kept, mixture)
            error = float((estimated - mixture.weights).abs().max())
        else:
            estimated = torch.full((mixture.n_components,), math.nan, dtype=torch.float64)
            error = math.nan
        for k, weight in enumerate(estimated.tolist()):
            metrics[f"mode_weight_{k}"] = weight
        metrics["mode_weight_error"] = error
    return metrics
