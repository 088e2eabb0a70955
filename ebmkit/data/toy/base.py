"""The base of the toy 2-D sets: a fixed seeded sample, an exact sampler, an exact log-density."""

from __future__ import annotations

import abc
import math

import attrs
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["GaussianMixture2D", "ToyDataset"]

_LOG_2PI = math.log(2.0 * math.pi)
# Margin, in standard deviations, that `bounds` leaves around the support of Gaussian parts;
# a 2-D isotropic Gaussian puts exp(-5**2 / 2) < 4e-6 of its mass beyond 5 std.
_BOUNDS_STDS = 5.0
# Bounds are rounded outwards to this step so grids and plots get tidy limits.
_BOUNDS_STEP = 0.5
# Most float64 elements one chunk of a quadrature-based density may hold (16 MiB).
_QUADRATURE_CHUNK_ELEMENTS = 1 << 21


def _as_float64(value: object) -> Tensor:
    """Convert array-like parameters to a CPU float64 tensor (copied, so records stay fixed)."""
    return torch.as_tensor(value, dtype=torch.float64).detach().clone().cpu()


def _require_positive(name: str, value: float) -> float:
    """Return `value` as a float, or raise ValueError naming `name` unless finite and > 0."""
    value = float(value)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def _require_count(name: str, value: int, minimum: int) -> int:
    """Return `value`, or raise ValueError naming `name` unless it is an int >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _round_out(lo: float, hi: float) -> tuple[float, float]:
    """Round [lo, hi] outwards to multiples of `_BOUNDS_STEP`."""
    step = _BOUNDS_STEP
    return math.floor(lo / step) * step, math.ceil(hi / step) * step


def _rotate(points: Tensor, angle: Tensor) -> Tensor:
    """Rotate each row of `points` (n, 2) counter-clockwise by the matching `angle` (n,)."""
    cos, sin = torch.cos(angle), torch.sin(angle)
    x, y = points[:, 0], points[:, 1]
    return torch.stack((cos * x - sin * y, sin * x + cos * y), dim=1)


def _gaussian_log_pdf_1d(value: Tensor, mean: Tensor, std: float) -> Tensor:
    """Log of the 1-D normal density N(value; mean, std**2), broadcasting."""
    return -0.5 * ((value - mean) / std) ** 2 - math.log(std) - 0.5 * _LOG_2PI


@attrs.frozen(eq=False)
class GaussianMixture2D:
    """A mixture of isotropic 2-D Gaussians, kept so metrics can check per-mode coverage.

    Attributes:
        means: (K, 2) component means.
        stds: (K,) per-component standard deviations (isotropic), all > 0.
        weights: (K,) positive component weights summing to 1.
    All three are stored as CPU float64 tensors.
    """

    means: Tensor = attrs.field(converter=_as_float64)
    stds: Tensor = attrs.field(converter=_as_float64)
    weights: Tensor = attrs.field(converter=_as_float64)

    def __attrs_post_init__(self) -> None:
        """Check shapes and ranges so a malformed mixture fails where it is built."""
        if self.means.ndim != 2 or self.means.shape[1] != 2 or self.means.shape[0] == 0:
            raise ValueError(
                f"means must have shape (K, 2) with K >= 1, got {tuple(self.means.shape)}"
            )
        k = self.means.shape[0]
        if self.stds.shape != (k,):
            raise ValueError(
                f"stds must have shape ({k},) to match means, got {tuple(self.stds.shape)}"
            )
        if self.weights.shape != (k,):
            raise ValueError(
                f"weights must have shape ({k},) to match means, got {tuple(self.weights.shape)}"
            )
        if not bool(torch.isfinite(self.means).all()):
            raise ValueError("means must be finite")
        if not bool((torch.isfinite(self.stds) & (self.stds > 0)).all()):
            raise ValueError(f"stds must be finite and > 0, got {self.stds.tolist()}")
        if not bool((torch.isfinite(self.weights) & (self.weights > 0)).all()):
            raise ValueError(f"weights must be finite and > 0, got {self.weights.tolist()}")
        if abs(float(self.weights.sum()) - 1.0) > 1e-9:
            raise ValueError(f"weights must sum to 1, got sum {float(self.weights.sum())!r}")

    @property
    def n_components(self) -> int:
        """Number of mixture components K."""
        return int(self.means.shape[0])

    def component_log_joint(self, x: Tensor) -> Tensor:
        """Return log(w_k N(x; mu_k, std_k**2 I)) as an (n, K) float64 tensor on x's device."""
        x = x.to(torch.float64)
        means, stds, weights = (t.to(x.device) for t in (self.means, self.stds, self.weights))
        squared = ((x[:, None, :] - means[None, :, :]) ** 2).sum(dim=-1)
        log_normal = -0.5 * squared / stds**2 - 2.0 * torch.log(stds) - _LOG_2PI
        return torch.log(weights) + log_normal

    def log_density(self, x: Tensor) -> Tensor:
        """Exact mixture log-density at x (n, 2), as (n,) float64."""
        return torch.logsumexp(self.component_log_joint(x), dim=1)

    def assign(self, x: Tensor) -> Tensor:
        """Index (n,) int64 of the component with the highest posterior responsibility."""
        return self.component_log_joint(x).argmax(dim=1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw n exact float64 samples (n, 2) on CPU, using only `generator` when given."""
        _require_count("n", n, 0)
        if n == 0:  # torch.multinomial refuses to draw zero samples
            return torch.empty(0, 2, dtype=torch.float64)
        component = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, 2, dtype=torch.float64, generator=generator)
        return self.means[component] + self.stds[component, None] * noise


class ToyDataset(Dataset[Tensor], abc.ABC):
    """A 2-D distribution with an exact sampler and an exact normalized log-density.

    The dataset itself is a fixed sample `points` (n_samples, 2) float32 drawn at construction
    from a seeded generator, so two instances with the same arguments hold identical points.
    Subclasses set their parameters before calling `ToyDataset.__init__` and implement
    `_sample`, `_log_density` and `bounds`.
    """

    def __init__(self, n_samples: int = 20000, seed: int = 0) -> None:
        """Draw `n_samples` points with a generator seeded by `seed`."""
        self.n_samples = _require_count("n_samples", n_samples, 1)
        self.seed = int(seed)
        self.points = self.sample(n_samples, torch.Generator().manual_seed(self.seed))

    def __len__(self) -> int:
        """Number of stored points."""
        return self.points.shape[0]

    def __getitem__(self, index: int) -> Tensor:
        """The stored point `index` as a (2,) float32 tensor."""
        return self.points[index]

    @property
    @abc.abstractmethod
    def bounds(self) -> tuple[float, float]:
        """(lo, hi) such that the square [lo, hi]^2 holds all but a negligible part of the mass."""

    @property
    def mixture(self) -> GaussianMixture2D | None:
        """The isotropic Gaussian mixture this distribution is, or None if it is not one."""
        return None

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw n fresh exact samples (n, 2) float32 on CPU.

        Arguments:
            n: number of samples, >= 0.
            generator: a CPU generator; when given it is the only source of randomness
                (the global RNG is not touched), when None the global RNG is used.
        """
        _require_count("n", n, 0)
        return self._sample(n, generator).to(torch.float32)

    def log_density(self, x: Tensor) -> Tensor:
        """Exact normalized log-density at x (n, 2), returned as (n,) float64 on x's device.

        Computed and returned in float64 so that grid normalisations and KL estimates built on
        it are not limited by float32 rounding; -inf where the density is 0.
        """
        if x.ndim != 2 or x.shape[1] != 2:
            raise ValueError(f"x must have shape (n, 2), got {tuple(x.shape)}")
        return self._log_density(x.to(torch.float64))

    @abc.abstractmethod
    def _sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        """Draw n samples (n, 2), in float64, from `generator` only."""

    @abc.abstractmethod
    def _log_density(self, x: Tensor) -> Tensor:
        """Exact log-density (n,) of float64 points x (n, 2)."""
