"""Noisy curves with densities by quadrature along the curve: two moons and the swiss roll."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ebmkit.data.toy.base import (
    _BOUNDS_STDS,
    _LOG_2PI,
    _QUADRATURE_CHUNK_ELEMENTS,
    ToyDataset,
    _require_count,
    _require_positive,
    _round_out,
)

__all__ = ["SwissRoll", "TwoMoons"]
# Lowest exponent (relative to the largest term) that `_noisy_curve_log_density` passes to exp.
_EXP_FLOOR = -100.0


def _gauss_legendre(n: int) -> tuple[Tensor, Tensor]:
    """Nodes (ascending) and weights (n,) float64 of the n-point Gauss-Legendre rule on [-1, 1].

    Newton's method on the three-term Legendre recurrence, started from Tricomi's asymptotic
    guesses: O(n^2) time and O(n) memory, where numpy's `leggauss` solves an n x n eigenproblem
    (O(n^3): about 1 s at n = 2500, minutes at n = 20000). The nodes are symmetric, so only the
    non-negative half is computed; weights come out accurate to about 1e-14 relative.
    """
    _require_count("n", n, 1)

    def legendre_and_derivative(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p_prev, p = np.ones_like(x), x.copy()
        for j in range(2, n + 1):
            p_prev, p = p, ((2 * j - 1) * x * p - (j - 1) * p_prev) / j
        # (1 - x)(1 + x) rather than 1 - x^2 keeps the derivative accurate near x = +-1.
        return p, n * (p_prev - x * p) / ((1.0 - x) * (1.0 + x))

    k = np.arange(1, (n + 1) // 2 + 1, dtype=np.float64)
    x = (1.0 - (n - 1) / (8.0 * n**3)) * np.cos(math.pi * (k - 0.25) / (n + 0.5))
    for _ in range(100):
        p, dp = legendre_and_derivative(x)
        step = p / dp
        x = x - step
        if float(np.max(np.abs(step))) <= 1e-15:
            break
    else:  # pragma: no cover - Newton converges in 3-4 steps from these guesses
        raise RuntimeError(f"Gauss-Legendre nodes did not converge for n={n}")
    _, dp = legendre_and_derivative(x)
    weights = 2.0 / ((1.0 - x) * (1.0 + x) * dp * dp)
    # x is descending and non-negative (ending in the node 0 when n is odd): mirror it.
    half = n // 2
    nodes = np.concatenate((-x[:half], x[::-1]))
    weights = np.concatenate((weights[:half], weights[::-1]))
    return torch.from_numpy(nodes), torch.from_numpy(weights)


def _noisy_curve_log_density(
    x: Tensor, centres: Tensor, log_weights: Tensor, noise: float
) -> Tensor:
    """log sum_i exp(log_weights_i) N(x; centres_i, noise^2 I) for x (n, 2), as (n,) float64.

    The quadrature form of a density spread along a curve with isotropic Gaussian noise. With
    -|y - c|^2 / (2 noise^2) = (y . c - |c|^2 / 2 - |y|^2 / 2) / noise^2, every term but the
    per-point |y|^2 one is a single addmm, and that one is added after the logsumexp; float64
    keeps the expansion accurate. Points go in chunks of `_QUADRATURE_CHUNK_ELEMENTS` terms.
    """
    inverse_variance = 1.0 / noise**2
    centres = centres.to(x.device)
    scaled_centres_t = (inverse_variance * centres).T.contiguous()
    bias = log_weights.to(x.device) - 0.5 * inverse_variance * (centres * centres).sum(dim=1)
    log_norm = -2.0 * math.log(noise) - _LOG_2PI
    chunk = max(1, _QUADRATURE_CHUNK_ELEMENTS // centres.shape[0])
    out = []
    for part in torch.split(x, chunk):
        terms = torch.addmm(bias, part, scaled_centres_t)
        # logsumexp by hand: terms more than _EXP_FLOOR below a row's largest are raised to it
        # before exp, which changes the sum by < n * exp(-100) relative (far below float64
        # resolution) but keeps exp off its slow underflow and subnormal paths (~10x faster).
        top = terms.max(dim=1, keepdim=True).values
        scaled = terms.sub_(top).clamp_(min=_EXP_FLOOR).exp_().sum(dim=1)
        log_sum = torch.log(scaled) + top[:, 0]
        out.append(log_sum - 0.5 * inverse_variance * (part * part).sum(dim=1) + log_norm)
    if not out:
        return torch.empty(0, dtype=torch.float64, device=x.device)
    return torch.cat(out)


class TwoMoons(ToyDataset):
    """Two interleaved half circles of radius 1 with isotropic Gaussian noise, centred.

    The upper moon is c(theta) = (cos theta, sin theta), the lower one
    (1 - cos theta, 0.5 - sin theta), theta ~ U[0, pi], each moon with weight 1/2; everything
    is shifted by -(0.5, 0.25), which makes the two moons point-symmetric about the origin.
    The density p(y) = 1/2 sum_moons (1/pi) int_0^pi N(y; c(theta), noise^2 I) d theta is
    computed by Gauss-Legendre quadrature over theta (at least 256 nodes per moon and at most
    0.16*noise between nodes) with logsumexp in float64: exact up to a quadrature error far
    below float32 resolution.
    """

    def __init__(self, n_samples: int = 20000, seed: int = 0, *, noise: float = 0.1) -> None:
        """Set the noise and the quadrature rule, then draw the stored points.

        Arguments:
            noise: standard deviation of the isotropic Gaussian noise, > 0.
        """
        self.noise = _require_positive("noise", noise)
        # Interior Gauss-Legendre spacing is about pi^2 / (2 n) rad; 32/noise nodes keep it
        # below noise/6, where the error of a Gaussian bump integral is ~exp(-2 pi^2 * 36).
        self.n_quadrature = max(256, math.ceil(32.0 / self.noise))
        nodes, weights = _gauss_legendre(self.n_quadrature)
        theta = 0.5 * math.pi * (nodes + 1.0)
        arc = torch.stack((torch.cos(theta) - 0.5, torch.sin(theta) - 0.25), dim=1)
        # Centres of both moons at every node, and log of (1/2 moon weight) * (1/2 GL weight),
        # since (1/pi) int_0^pi f = (1/2) sum_i w_i f(theta_i).
        self._quadrature_centres = torch.cat((arc, -arc), dim=0)
        log_w = torch.log(weights) - 2.0 * math.log(2.0)
        self._quadrature_log_weights = torch.cat((log_w, log_w), dim=0)
        super().__init__(n_samples, seed)

    @property
    def bounds(self) -> tuple[float, float]:
        """Square holding both moons +- 5 noise std, rounded out to 0.5."""
        half = 1.5 + _BOUNDS_STDS * self.noise
        return _round_out(-half, half)

    def _sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        sign = 1.0 - 2.0 * torch.randint(0, 2, (n, 1), generator=generator).to(torch.float64)
        theta = math.pi * torch.rand(n, dtype=torch.float64, generator=generator)
        arc = torch.stack((torch.cos(theta) - 0.5, torch.sin(theta) - 0.25), dim=1)
        noise = self.noise * torch.randn(n, 2, dtype=torch.float64, generator=generator)
        return sign * arc + noise

    def _log_density(self, x: Tensor) -> Tensor:
        return _noisy_curve_log_density(
            x, self._quadrature_centres, self._quadrature_log_weights, self.noise
        )


class SwissRoll(ToyDataset):
    """The 2-D swiss roll (scikit-learn's `make_swiss_roll`, FFJORD's toy), with its density.

    t ~ U[t_min, t_max], the curve is c(t) = scale * (t cos t, t sin t) and the sample is
    y = c(t) + noise * xi with xi ~ N(0, I_2). The defaults t in [1.5 pi, 4.5 pi] and
    scale = 0.2 give the classic 1.5 turns with |c| up to about 2.83. Note that t, not the arc
    length, is uniform: the curve's speed |c'(t)| = scale * sqrt(1 + t^2) grows with t, so the
    inner turns hold more mass per unit length than the outer ones.

    The density p(y) = 1/(t_max - t_min) int_{t_min}^{t_max} N(y; c(t), noise^2 I) dt is
    computed by Gauss-Legendre quadrature over t with logsumexp in float64. The node count is
    set from the arc length so that consecutive nodes lie less than noise/6 apart along the
    curve (see `n_quadrature`): exact up to a quadrature error far below float32 resolution.
    """

    def __init__(
        self,
        n_samples: int = 20000,
        seed: int = 0,
        *,
        t_min: float = 1.5 * math.pi,
        t_max: float = 4.5 * math.pi,
        scale: float = 0.2,
        noise: float = 0.1,
    ) -> None:
        """Set the parameters and the quadrature rule, then draw the stored points.

        Arguments:
            t_min: start of the curve parameter's range, finite and >= 0.
            t_max: end of the curve parameter's range, finite and > t_min.
            scale: size factor of the curve c(t) = scale * (t cos t, t sin t), > 0.
            noise: standard deviation of the isotropic Gaussian noise, > 0.
        """
        self.t_min = float(t_min)
        if not math.isfinite(self.t_min) or self.t_min < 0.0:
            raise ValueError(f"t_min must be a finite number >= 0, got {t_min!r}")
        self.t_max = float(t_max)
        if not math.isfinite(self.t_max) or self.t_max <= self.t_min:
            raise ValueError(
                f"t_max must be a finite number > t_min = {self.t_min!r}, got {t_max!r}"
            )
        self.scale = _require_positive("scale", scale)
        self.noise = _require_positive("noise", noise)
        # Gauss-Legendre nodes on [-1, 1] are at most about pi/n apart (near the centre), so in
        # t at most (t_max - t_min) pi / (2n); along the curve, whose speed scale*sqrt(1 + t^2)
        # peaks at t_max, a gap between nodes is at most that times the top speed. This n keeps
        # that bound on the arc length per node at noise/6, where the error of a Gaussian bump
        # integral is ~exp(-2 pi^2 * 36) (at the defaults: 2518 nodes, gaps < 0.0123).
        top_speed = self.scale * math.hypot(1.0, self.t_max)
        span = self.t_max - self.t_min
        self.n_quadrature = max(256, math.ceil(3.0 * math.pi * span * top_speed / self.noise))
        nodes, weights = _gauss_legendre(self.n_quadrature)
        self._quadrature_centres = self.curve(self.t_min + 0.5 * span * (nodes + 1.0))
        # (1/span) int f dt = (1/2) sum_i w_i f(t_i).
        self._quadrature_log_weights = torch.log(weights) - math.log(2.0)
        super().__init__(n_samples, seed)

    @property
    def bounds(self) -> tuple[float, float]:
        """Square holding the disk |y| <= scale * t_max + 5 noise, rounded out to 0.5."""
        half = self.scale * self.t_max + _BOUNDS_STDS * self.noise
        return _round_out(-half, half)

    def curve(self, t: Tensor) -> Tensor:
        """The noiseless roll c(t) = scale * (t cos t, t sin t), as (n, 2) for t (n,)."""
        return self.scale * t[:, None] * torch.stack((torch.cos(t), torch.sin(t)), dim=1)

    def _sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        u = torch.rand(n, dtype=torch.float64, generator=generator)
        t = self.t_min + (self.t_max - self.t_min) * u
        noise = self.noise * torch.randn(n, 2, dtype=torch.float64, generator=generator)
        return self.curve(t) + noise

    def _log_density(self, x: Tensor) -> Tensor:
        return _noisy_curve_log_density(
            x, self._quadrature_centres, self._quadrature_log_weights, self.noise
        )
