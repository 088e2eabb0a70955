"""Metrics that score a 2-D energy and its samples against a toy set's exact density.

In a run, the energy scored is the model's (`ebmkit.density`: the trained energy unless the
trainer, its sampler or its initializer declares another, e.g. E − log λ or E/T).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ebmkit.data.toy import GaussianMixture2D, ToyDataset
from ebmkit.data.toy.base import _require_count

__all__ = [
    "Energy",
    "density_mode_weights",
    "energy_grid",
    "grid_kl",
    "log_likelihood",
    "log_partition",
    "mmd",
    "mode_weight_errors",
    "mode_weights",
    "nearest_mode",
    "sliced_wasserstein",
    "toy_metrics",
]

Energy = Callable[[Tensor], Tensor]
"""Anything mapping a (B, 2) batch to (B,) energies: a plain callable or an nn.Module."""

# Most points one energy call sees while evaluating a grid (bounds peak memory of big nets).
_GRID_CHUNK = 65536
# Most float64 elements of one block of pairwise kernel values in `mmd` (32 MiB).
_KERNEL_BLOCK_ELEMENTS = 1 << 22
# Relative gap of squared distances under which a grid cell is equidistant from two means.
_TIE_TOLERANCE = 1e-9
# Seed of the private generator metrics use when none is given (never the global RNG).
_DEFAULT_SEED = 0
# Held-out exact samples `log_likelihood` and `toy_metrics` draw by default (standard error of
# the mean log-density about 0.01 nats on the toy sets).
_N_HELD_OUT = 10000


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


def _evaluate(energy: Energy, points: Tensor) -> Tensor:
    """Energies (n,) as CPU float64 at n >= 1 points (n, 2), without grad, in chunks.

    The points go to the energy's device and dtype (see `_energy_device_dtype`).
    """
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
    return torch.cat(values)


def _log_grid_integral(log_values: Tensor, bounds: tuple[float, float], resolution: int) -> Tensor:
    """log of the midpoint-rule integral of exp(log_values) over the `energy_grid` cells.

    `log_values` (resolution**2,) holds the log-integrand at the cell centres of [lo, hi]^2;
    the result is logsumexp(log_values) + log(cell area), a float64 scalar tensor.
    """
    step = (float(bounds[1]) - float(bounds[0])) / resolution
    return torch.logsumexp(log_values, dim=0) + 2.0 * math.log(step)


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
    _require_count("resolution", resolution, 1)
    lo, hi = float(bounds[0]), float(bounds[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"bounds must be finite with lo < hi, got {bounds!r}")
    step = (hi - lo) / resolution
    centres = lo + (torch.arange(resolution, dtype=torch.float64) + 0.5) * step
    grid_y, grid_x = torch.meshgrid(centres, centres, indexing="ij")
    points = torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), dim=1)
    return points, _evaluate(energy, points)


def grid_kl(
    energy: Energy, dataset: ToyDataset, resolution: int = 200, *, temperature: float = 1.0
) -> float:
    """KL(p_data || p_model) with both densities normalised over the cells of a grid.

    p_data = exp(dataset.log_density) and p_model = exp(-E/T) are evaluated at the cell
    centres of `dataset.bounds` and normalised with logsumexp in float64; cells where p_data
    is 0 contribute 0. Exact up to the grid (midpoint rule). Non-finite energies give inf or
    nan.

    Arguments:
        energy: callable or nn.Module mapping (B, 2) to energies (B,).
        dataset: toy set providing the exact log-density and the bounds.
        resolution: cells per side of the grid.
        temperature: T > 0, the temperature the model's samplers run at: a Langevin chain
            x - h*grad E + sigma*xi samples exp(-E/T) with T = sigma^2/(2h) (T = 1 for ULA's
            sigma = sqrt(2h)), so an energy trained with it is scored at that T. (A run
            scores the model energy of `ebmkit.density` at T = 1; bind
            `ebmkit.density.Tempered` as the trainer's `model_density` to score E/T there.)
    Returns:
        The KL divergence in nats.

    Example:
        >>> from ebmkit.data.toy import Rings
        >>> rings = Rings(n_samples=10)
        >>> flat = grid_kl(lambda x: 0.0 * x[:, 0], rings, resolution=20)
        >>> flat == grid_kl(lambda x: 0.0 * x[:, 0], rings, resolution=20, temperature=0.1)
        True
    """
    if isinstance(temperature, bool) or not (
        isinstance(temperature, int | float) and math.isfinite(temperature) and temperature > 0
    ):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    points, energies = energy_grid(energy, dataset.bounds, resolution)
    return _grid_kl_from_energies(points, energies / float(temperature), dataset, resolution)


def _grid_kl_from_energies(
    points: Tensor, energies: Tensor, dataset: ToyDataset, resolution: int
) -> float:
    """`grid_kl` at T = 1 from the `energy_grid` output over `dataset.bounds` at `resolution`
    (a temperature divides `energies` first)."""
    log_p = dataset.log_density(points)
    if bool(torch.isnan(log_p).any() | (log_p == math.inf).any()):
        raise ValueError(
            "dataset log-density is +inf or nan at a grid cell centre (e.g. the Rings origin); "
            "use an even resolution"
        )
    bounds = dataset.bounds
    # Both densities renormalised over the grid; the sum is the midpoint rule of the KL integral.
    log_p = log_p - _log_grid_integral(log_p, bounds, resolution)
    log_q = -energies - _log_grid_integral(-energies, bounds, resolution)
    support = log_p > -math.inf
    cell_area = ((float(bounds[1]) - float(bounds[0])) / resolution) ** 2
    p = log_p[support].exp() * cell_area
    return float((p * (log_p[support] - log_q[support])).sum())


def log_partition(energy: Energy, dataset: ToyDataset, resolution: int = 200) -> float:
    """log Z = log of the integral of exp(-E) over the square `dataset.bounds`^2.

    The normaliser of the model density, by the midpoint rule on the `energy_grid` cells in
    float64 (the quadrature `grid_kl` uses). Mass of exp(-E) outside the square is not counted.
    Non-finite energies give inf or nan.

    Arguments:
        energy: callable or nn.Module mapping (B, 2) to energies (B,).
        dataset: toy set providing the bounds.
        resolution: cells per side of the grid.
    Returns:
        log Z in nats.
    """
    _, energies = energy_grid(energy, dataset.bounds, resolution)
    return float(_log_grid_integral(-energies, dataset.bounds, resolution))


def _held_out(
    dataset: ToyDataset, samples: Tensor | None, n: int, generator: torch.Generator | None
) -> Tensor:
    """`samples` checked as (m, 2) with m >= 1, or n >= 1 fresh exact samples from the dataset."""
    if samples is None:
        return dataset.sample(_require_count("n", n, 1), _private_generator(generator))
    _check_samples("samples", samples, 1)
    if samples.shape[1] != 2:
        raise ValueError(f"samples must have shape (n, 2), got {tuple(samples.shape)}")
    return samples


def _mean_log_likelihood(energy: Energy, points: Tensor, log_z: float) -> float:
    """Mean over points (n, 2) of -E(x) - log_z, in float64."""
    return float((-_evaluate(energy, points.detach().cpu().to(torch.float64)) - log_z).mean())


def log_likelihood(
    energy: Energy,
    dataset: ToyDataset,
    samples: Tensor | None = None,
    *,
    n: int = _N_HELD_OUT,
    resolution: int = 200,
    generator: torch.Generator | None = None,
) -> float:
    """Mean model log-density log p(x) = -E(x) - log Z over held-out points x.

    The exact counterpart of a test log-likelihood: on exact samples its expectation is at most
    the data's own mean log-density, and the gap estimates KL(data || model). log Z is
    `log_partition`, so Z counts only the mass inside `dataset.bounds`; points outside the
    square still score -E(x) - log Z (no clipping). Non-finite energies or sample rows give inf
    or nan.

    Arguments:
        energy: callable or nn.Module mapping (B, 2) to energies (B,).
        dataset: toy set providing the bounds and, when `samples` is None, the points.
        samples: (m, 2) held-out points, on any device; None draws `n` fresh exact samples.
        n: number of fresh samples when `samples` is None, >= 1.
        resolution: cells per side of the log Z grid.
        generator: CPU generator for the fresh samples (a private generator seeded with 0
            when None; the global RNG is never used).
    Returns:
        The mean log-likelihood in nats.
    """
    points = _held_out(dataset, samples, n, generator)
    return _mean_log_likelihood(energy, points, log_partition(energy, dataset, resolution))


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
    _require_count("n_projections", n_projections, 1)
    generator = _private_generator(generator)
    directions = torch.randn(n_projections, x.shape[1], dtype=torch.float64, generator=generator)
    directions = directions / torch.linalg.vector_norm(directions, dim=1, keepdim=True)
    directions = directions.to(x.device)
    x = x.to(torch.float64)
    y = y.to(device=x.device, dtype=torch.float64)
    x_sorted = torch.sort(x @ directions.T, dim=0).values
    y_sorted = torch.sort(y @ directions.T, dim=0).values
    return math.sqrt(float(_squared_w2_sorted(x_sorted, y_sorted).mean()))


def _squared_distances(x: Tensor, mixture: GaussianMixture2D) -> Tensor:
    """|x_i - mu_k|^2 as (n, K) float64, summed term by term (mirror points tie exactly)."""
    x = x.to(torch.float64)
    return ((x[:, None, :] - mixture.means.to(x.device)[None, :, :]) ** 2).sum(dim=-1)


def nearest_mode(x: Tensor, mixture: GaussianMixture2D) -> Tensor:
    """Index (n,) int64 of the mixture mean nearest (Euclidean) each row of x (n, 2).

    The partition of the flow-MCMC reference's mode weights ("the region nearest mu_k"): it
    does not depend on the true weights or widths, so a model is not nudged towards them.
    Ties go to the lower index.
    """
    return _squared_distances(x, mixture).argmin(dim=1)


def mode_weights(samples: Tensor, mixture: GaussianMixture2D) -> Tensor:
    """Fraction of samples (n, 2) nearest each mixture mean (`nearest_mode`), as (K,) float64.

    Example:
        >>> from ebmkit.data.toy import GaussianMixture
        >>> mixture = GaussianMixture(n_samples=1, means=((-2, -2), (2, 2)), stds=(0.5, 0.5),
        ...                           weights=(0.2, 0.8)).mixture
        >>> mode_weights(torch.tensor([[-1.0, -2.0], [3.0, 1.0], [0.5, 0.5]]), mixture).tolist()
        [0.3333333333333333, 0.6666666666666666]
    """
    _check_samples("samples", samples, 1)
    counts = torch.bincount(nearest_mode(samples, mixture).cpu(), minlength=mixture.n_components)
    return counts.to(torch.float64) / samples.shape[0]


def mode_weight_errors(estimated: Tensor, mixture: GaussianMixture2D) -> tuple[float, float]:
    """(sum_k |w_hat_k - w_k|, max_k |w_hat_k - w_k|) of estimated weights (K,) vs the true.

    The sum is the flow-MCMC reference's measure (with two modes, 2 |w_hat_small - w_small|);
    nan weights give nan.

    Example:
        >>> from ebmkit.data.toy import GaussianMixture
        >>> mixture = GaussianMixture(n_samples=1, means=((-2, -2), (2, 2)), stds=(0.5, 0.5),
        ...                           weights=(0.2, 0.8)).mixture
        >>> [round(e, 12) for e in mode_weight_errors(torch.tensor([0.5, 0.5]), mixture)]
        [0.6, 0.3]
    """
    gaps = (estimated.to(torch.float64).cpu() - mixture.weights).abs()
    return float(gaps.sum()), float(gaps.max())


def _density_mode_weights_from_energies(
    points: Tensor, energies: Tensor, mixture: GaussianMixture2D
) -> Tensor:
    """`density_mode_weights` from the `energy_grid` output (points (n, 2), energies (n,)).

    A cell centred on a boundary between regions (equidistant from two means, as on the
    bisector of a symmetric pair) splits its mass equally between them, so a symmetric
    density gets exactly symmetric weights.
    """
    mass = torch.softmax(-energies, dim=0)  # cells are equal, so the cell area cancels
    distances = _squared_distances(points, mixture)
    # Ties up to rounding: grid centres lo + (i + 1/2) step are symmetric only to ~1e-15.
    closest = distances.min(dim=1, keepdim=True).values
    nearest = (distances <= closest * (1 + _TIE_TOLERANCE)).to(torch.float64)
    return (mass[:, None] * nearest / nearest.sum(dim=1, keepdim=True)).sum(dim=0)


def density_mode_weights(energy: Energy, dataset: ToyDataset, resolution: int = 200) -> Tensor:
    """Mass of the model density exp(-E) nearest each mixture mean, as (K,) float64.

    exp(-E) is normalised over the cells of a `resolution`^2 grid on `dataset.bounds` and
    each cell's mass goes to the mean nearest its centre (`nearest_mode`; split equally on a
    tie): the flow-MCMC
    reference's mode weights of a trained EBM, read from the density, never from chains
    (which can hide an unbalanced density). Non-finite energies give nan.

    Arguments:
        energy: callable or nn.Module mapping (B, 2) to energies (B,).
        dataset: toy set with a mixture record (`dataset.mixture`, e.g. EightGaussians).
        resolution: cells per side of the grid.
    Returns:
        The weights (K,), summing to 1 over the grid.

    Example:
        >>> from ebmkit.data.toy import GaussianMixture
        >>> data = GaussianMixture(n_samples=1, means=((-2, -2), (2, 2)), stds=(0.5, 0.5),
        ...                        weights=(0.2, 0.8))
        >>> weights = density_mode_weights(lambda x: -data.log_density(x), data)
        >>> [round(w, 4) for w in weights.tolist()]
        [0.2, 0.8]
    """
    mixture = dataset.mixture
    if mixture is None:
        raise ValueError(
            f"density_mode_weights needs a dataset with a mixture record (means and weights), "
            f"got {type(dataset).__name__}; use a mixture set, e.g. datasets.GaussianMixture"
        )
    points, energies = energy_grid(energy, dataset.bounds, resolution)
    return _density_mode_weights_from_energies(points, energies, mixture)


def _mode_weight_metrics(
    prefix: str, estimated: Tensor | None, mixture: GaussianMixture2D
) -> dict[str, float]:
    """`<prefix>mode_weight_<k>`, `_error` (sum) and `_max_error`; nan when `estimated` is None."""
    if estimated is None:
        estimated = torch.full((mixture.n_components,), math.nan, dtype=torch.float64)
    total, largest = mode_weight_errors(estimated, mixture)
    metrics = {f"{prefix}mode_weight_{k}": w for k, w in enumerate(estimated.tolist())}
    metrics[f"{prefix}mode_weight_error"] = total
    metrics[f"{prefix}mode_weight_max_error"] = largest
    return metrics


def toy_metrics(
    energy: Energy,
    samples: Tensor,
    dataset: ToyDataset,
    generator: torch.Generator | None = None,
    resolution: int = 200,
    n_reference: int | None = None,
    n_held_out: int = _N_HELD_OUT,
) -> dict[str, float]:
    """All toy metrics for one energy and its samples, as a flat dict for logging.

    Keys: "grid_kl", "finite_fraction" (share of sample rows that are finite; the others are
    dropped), "mmd" and "sliced_wasserstein" against fresh exact samples from the dataset.
    For sets with a mixture record: the samples' weights "mode_weight_<k>" (share of samples
    nearest mean k), "mode_weight_error" = sum_k |w_hat_k - w_k| and "mode_weight_max_error"
    = max_k |w_hat_k - w_k|; and the density's, "density_mode_weight_<k>" (mass of exp(-E)
    nearest mean k on the grid of grid_kl, see `density_mode_weights`),
    "density_mode_weight_error" (sum) and "density_mode_weight_max_error" (max). Chains can
    look balanced while the density is not, so both are reported. (Before issue 13,
    "mode_weight_error" was the max over modes; it is now the sum, the reference's measure.)
    Sample-based entries are nan when no finite sample is left.
    "log_likelihood" is `log_likelihood` on `n_held_out` fresh exact samples and
    "data_log_likelihood" the dataset's exact mean log-density on the same points, the value
    the model approaches from below; both are nan when `n_held_out` is 0.

    Runs during training without changing its random stream: reference and held-out samples
    and projection directions come from `generator` (a private generator seeded with 0 when
    None; held-out samples are drawn last, so the other entries do not depend on them), and the
    CPU and the energy's CUDA RNG states are restored after the energy is evaluated.

    Arguments:
        energy: callable or nn.Module mapping (B, 2) to energies (B,).
        samples: (n, 2) model samples, on any device.
        dataset: toy set with the exact density.
        generator: CPU generator for the reference and held-out samples and the projections.
        resolution: cells per side of the grid of grid_kl and of log Z.
        n_reference: number of reference samples; len(samples) when None.
        n_held_out: number of held-out samples for the log-likelihoods, >= 0.
    Returns:
        The metrics by name, all Python floats.
    """
    _check_samples("samples", samples, 0)
    generator = _private_generator(generator)
    n_reference = samples.shape[0] if n_reference is None else n_reference
    if isinstance(n_reference, bool) or not isinstance(n_reference, int) or n_reference < 0:
        raise ValueError(f"n_reference must be an integer >= 0 or None, got {n_reference!r}")
    _require_count("n_held_out", n_held_out, 0)
    device, _ = _energy_device_dtype(energy)
    cuda_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        # One grid serves both grid_kl and the log Z of the log-likelihood.
        points, energies = energy_grid(energy, dataset.bounds, resolution)
    kl = _grid_kl_from_energies(points, energies, dataset, resolution)
    log_z = float(_log_grid_integral(-energies, dataset.bounds, resolution))
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
        estimated = mode_weights(kept, mixture) if kept.shape[0] >= 1 else None
        metrics.update(_mode_weight_metrics("", estimated, mixture))
        density = _density_mode_weights_from_energies(points, energies, mixture)
        metrics.update(_mode_weight_metrics("density_", density, mixture))
    metrics["log_likelihood"] = metrics["data_log_likelihood"] = math.nan
    if n_held_out >= 1:
        held_out = dataset.sample(n_held_out, generator)
        with torch.random.fork_rng(devices=cuda_devices):
            metrics["log_likelihood"] = _mean_log_likelihood(energy, held_out, log_z)
        metrics["data_log_likelihood"] = float(dataset.log_density(held_out).mean())
    return metrics
