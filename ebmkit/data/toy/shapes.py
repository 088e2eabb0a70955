"""Toy sets that are not Gaussian mixtures or noisy curves: rings, checkerboard, pinwheel."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ebmkit.data.toy.base import (
    _BOUNDS_STDS,
    _LOG_2PI,
    ToyDataset,
    _gaussian_log_pdf_1d,
    _require_count,
    _require_positive,
    _rotate,
    _round_out,
)

__all__ = ["Checkerboard", "Pinwheel", "Rings"]


class Rings(ToyDataset):
    """Concentric rings (the ebm-anatomy toy): ring k = 1..n_rings has radius radius*k.

    A sample picks a ring uniformly, a radius rho = r_k + std*xi with xi ~ N(0, 1) and an angle
    uniform in [0, 2*pi). A negative rho lands at the opposite angle, so |y| follows a folded
    normal and the exact density is
        p(y) = sum_k w_k [N(|y|; r_k, std) + N(|y|; -r_k, std)] / (2*pi*|y|).
    It has an integrable 1/|y| singularity at the origin, where log_density returns +inf.
    """

    def __init__(
        self,
        n_samples: int = 20000,
        seed: int = 0,
        *,
        n_rings: int = 4,
        radius: float = 1.0,
        std: float = 0.15,
    ) -> None:
        """Set the parameters, then draw the stored points (see `ToyDataset`).

        Arguments:
            n_rings: number of rings, >= 1.
            radius: radius of the innermost ring and the spacing between rings, > 0.
            std: radial standard deviation of every ring, > 0.
        """
        self.n_rings = _require_count("n_rings", n_rings, 1)
        self.radius = _require_positive("radius", radius)
        self.std = _require_positive("std", std)
        ks = torch.arange(1, self.n_rings + 1, dtype=torch.float64)
        self.ring_radii = self.radius * ks
        super().__init__(n_samples, seed)

    @property
    def bounds(self) -> tuple[float, float]:
        """Square holding the outer ring +- 5 std, rounded out to 0.5."""
        half = self.radius * self.n_rings + _BOUNDS_STDS * self.std
        return _round_out(-half, half)

    def _sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        ring = torch.randint(0, self.n_rings, (n,), generator=generator)
        xi = torch.randn(n, dtype=torch.float64, generator=generator)
        rho = self.ring_radii[ring] + self.std * xi
        angle = 2.0 * math.pi * torch.rand(n, dtype=torch.float64, generator=generator)
        return rho[:, None] * torch.stack((torch.cos(angle), torch.sin(angle)), dim=1)

    def _log_density(self, x: Tensor) -> Tensor:
        rho = torch.linalg.vector_norm(x, dim=1)[:, None]
        radii = self.ring_radii.to(x.device)[None, :]
        folded = torch.cat(
            (
                _gaussian_log_pdf_1d(rho, radii, self.std),
                _gaussian_log_pdf_1d(rho, -radii, self.std),
            ),
            dim=1,
        )
        log_radial = torch.logsumexp(folded, dim=1) - math.log(self.n_rings)
        return log_radial - _LOG_2PI - torch.log(rho[:, 0])


class Checkerboard(ToyDataset):
    """Uniform density 1/8 on the 8 black unit squares of a 4x4 board over [-2, 2]^2.

    The square with integer lower corner (i, j) is black when i + j is even. Squares are
    half-open, [i, i+1) x [j, j+1), and float32 samples are kept strictly inside their square.
    """

    def __init__(self, n_samples: int = 20000, seed: int = 0) -> None:
        """Build the list of black squares and draw the stored points."""
        corners = [(i, j) for i in range(-2, 2) for j in range(-2, 2) if (i + j) % 2 == 0]
        self.black_corners = torch.tensor(corners, dtype=torch.float64)
        super().__init__(n_samples, seed)

    @property
    def bounds(self) -> tuple[float, float]:
        """The board itself, [-2, 2]."""
        return (-2.0, 2.0)

    def _sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        """Draw n samples as float32-representable float64 values inside their black squares.

        Plain rounding to float32 could push a point onto the edge of a neighbouring white
        square, so each coordinate is clamped to the largest float32 below its square's edge.
        """
        square = torch.randint(0, len(self.black_corners), (n,), generator=generator)
        offset = torch.rand(n, 2, dtype=torch.float64, generator=generator)
        corner = self.black_corners[square]
        lower = corner.to(torch.float32)
        upper = torch.nextafter(lower + 1.0, lower)
        points = (corner + offset).to(torch.float32)
        return torch.minimum(torch.maximum(points, lower), upper).to(torch.float64)

    def _log_density(self, x: Tensor) -> Tensor:
        inside = ((x >= -2.0) & (x < 2.0)).all(dim=1)
        cell = torch.floor(x)
        black = torch.remainder(cell.sum(dim=1), 2.0) == 0.0
        value = torch.full((x.shape[0],), -math.log(8.0), dtype=torch.float64, device=x.device)
        return torch.where(inside & black, value, torch.full_like(value, -math.inf))


class Pinwheel(ToyDataset):
    """Twisted Gaussian arms (the classic pinwheel), with an exact density.

    Arm a draws x ~ N((1, 0), diag(radial_std^2, tangential_std^2)) rotated by 2*pi*a/n_arms;
    the sample is y = T(x) = R(theta(|x|)) x with R the 2-D rotation and
    theta(r) = rate * exp(r), the classic pinwheel twist. In polar coordinates T maps
    (r, phi) to (r, phi + theta(r)): it keeps |x|, is inverted by R(-theta(|y|)), and its
    Jacobian [[1, 0], [theta'(r), 1]] has determinant 1 while the area element r dr dphi is
    unchanged. So T preserves area and log p(y) = log p_X(R(-theta(|y|)) y) with p_X the
    equal-weight mixture of the rotated Gaussians: exact, no approximation.
    """

    def __init__(
        self,
        n_samples: int = 20000,
        seed: int = 0,
        *,
        n_arms: int = 5,
        radial_std: float = 0.3,
        tangential_std: float = 0.1,
        rate: float = 0.25,
    ) -> None:
        """Set the parameters, then draw the stored points (see `ToyDataset`).

        Arguments:
            n_arms: number of arms, >= 1.
            radial_std: standard deviation along an arm before the twist, > 0.
            tangential_std: standard deviation across an arm before the twist, > 0.
            rate: twist strength in theta(r) = rate * exp(r); any finite number (0: no twist,
                negative: twists the other way).
        """
        self.n_arms = _require_count("n_arms", n_arms, 1)
        self.radial_std = _require_positive("radial_std", radial_std)
        self.tangential_std = _require_positive("tangential_std", tangential_std)
        self.rate = float(rate)
        if not math.isfinite(self.rate):
            raise ValueError(f"rate must be a finite number, got {rate!r}")
        self.arm_angles = torch.arange(self.n_arms, dtype=torch.float64) * (2 * math.pi / n_arms)
        super().__init__(n_samples, seed)

    @property
    def bounds(self) -> tuple[float, float]:
        """Square holding the disk |y| <= 1 + 5 * max std (T keeps |x|), rounded out to 0.5."""
        half = 1.0 + _BOUNDS_STDS * max(self.radial_std, self.tangential_std)
        return _round_out(-half, half)

    def twist_angle(self, radius: Tensor) -> Tensor:
        """The twist theta(r) = rate * exp(r) applied at distance `radius` from the origin."""
        return self.rate * torch.exp(radius)

    def _sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        arm = torch.randint(0, self.n_arms, (n,), generator=generator)
        scale = torch.tensor([self.radial_std, self.tangential_std], dtype=torch.float64)
        x = torch.randn(n, 2, dtype=torch.float64, generator=generator) * scale
        x[:, 0] += 1.0
        x = _rotate(x, self.arm_angles[arm])
        return _rotate(x, self.twist_angle(torch.linalg.vector_norm(x, dim=1)))

    def _log_density(self, y: Tensor) -> Tensor:
        """Log-density via the area-preserving inverse twist.

        Where |y| is so large (> ~700) that the twist angle overflows, -inf is returned: the
        true log-density there is below -10^6, i.e. the density is 0 in float64.
        """
        angle = self.twist_angle(torch.linalg.vector_norm(y, dim=1))
        finite = torch.isfinite(angle)
        x = _rotate(y, -torch.where(finite, angle, torch.zeros_like(angle)))
        arm_angles = self.arm_angles.to(y.device)
        cos, sin = torch.cos(arm_angles)[None, :], torch.sin(arm_angles)[None, :]
        # Coordinates of x in each arm's frame (rotate by -arm angle), minus the mean (1, 0).
        along = cos * x[:, :1] + sin * x[:, 1:] - 1.0
        across = -sin * x[:, :1] + cos * x[:, 1:]
        log_arm = (
            -0.5 * (along / self.radial_std) ** 2
            - 0.5 * (across / self.tangential_std) ** 2
            - math.log(self.radial_std * self.tangential_std)
            - _LOG_2PI
        )
        log_p = torch.logsumexp(log_arm, dim=1) - math.log(self.n_arms)
        return torch.where(finite, log_p, torch.full_like(log_p, -math.inf))
