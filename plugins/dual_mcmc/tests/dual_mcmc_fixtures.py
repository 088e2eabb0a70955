"""Test-only pieces of the Dual-MCMC exact tests (method reference §8): linear networks, the
closed-form linear-Gaussian posterior, the exact moments of ULA on a Gaussian, moment z-scores,
and the wrong variants the exact tests must catch.

Everything is float64. The exact side is computed here from W, b, σ and the step size alone,
never from the plugin's energies:

- posterior of z ~ N(0, I), x | z ~ N(Wz + b, σ²I): precision P = I + WᵀW/σ², mean
  m(x) = P⁻¹Wᵀ(x − b)/σ²;
- ULA z ← z − s∇U(z) + √(2s)ε on U = ½(z − m)ᵀP(z − m) is Gaussian at every step:
  mean_k = m + A^k(mean_0 − m), C_{k+1} = A C_k Aᵀ + 2sI with A = I − sP, stationary
  C∞ = (P − (s/2)P²)⁻¹.

The wrong variants (each changes one thing and runs through the real `Generator` code path):

- `ScaledPosterior`: a `Generator` whose U(z) = c_lik‖x − g(z)‖² + c_prior‖z‖²/2, so the
  missing prior (c_prior = 0), σ for σ² (c_lik = 1/(2σ)) and the reference code's factor 2
  (c_lik = 1/σ²) are posterior energies the same sampler then runs on;
- `MeanStart`: z0 = μ_q(x) instead of a draw from q;
- `LogStdStart`: z0 = μ + e^ℓ ε (ℓ read as a log-std instead of a log-variance);
- `NoiseFirstLangevin`: z ← z' − s∇U(z'), z' = z + √(2s)ε (the noise before the gradient).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ebmkit.records import SampleResult
from ebmkit_dual_mcmc.initializer import Generator
from ebmkit_dual_mcmc.posterior import squared_error

F64 = torch.float64

__all__ = [
    "F64",
    "ExactGaussianSampler",
    "GaussianEnergy",
    "LearnableGaussianEnergy",
    "LinearGenerator",
    "LinearInference",
    "LogStdStart",
    "MeanStart",
    "NoiseFirstLangevin",
    "ScaledPosterior",
    "linear_gaussian_posterior",
    "moment_z_scores",
    "ula_moments",
    "ula_stationary_covariance",
]


# -- networks -------------------------------------------------------------------------------


class LinearGenerator(nn.Module):
    """g(z) = Wz + b in float64, with `latent_dim` (what `initializers.Generator` asks for).

    Example:
        >>> g = LinearGenerator(torch.eye(2, dtype=F64), torch.ones(2, dtype=F64))
        >>> g(torch.zeros(1, 2, dtype=F64)), g.latent_dim
        (tensor([[1., 1.]], dtype=torch.float64, grad_fn=<AddBackward0>), 2)
    """

    def __init__(self, weight: Tensor, bias: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.clone().to(F64))  # (D, d)
        self.bias = nn.Parameter(bias.clone().to(F64))  # (D,)
        self.latent_dim = int(weight.shape[1])

    def forward(self, z: Tensor) -> Tensor:
        return z @ self.weight.T + self.bias


class LinearInference(nn.Module):
    """q(z|x) = N(Ax + c, diag e^ℓ): a linear mean and one learnable log-variance ℓ (a
    parameter broadcast over the batch), float64.

    Example:
        >>> q = LinearInference(torch.zeros(2, 3, dtype=F64), torch.ones(2, dtype=F64), -1.0)
        >>> [t.shape for t in q(torch.zeros(4, 3, dtype=F64))]
        [torch.Size([4, 2]), torch.Size([4, 2])]
    """

    def __init__(self, matrix: Tensor, shift: Tensor, log_var: float | Tensor = 0.0) -> None:
        super().__init__()
        self.matrix = nn.Parameter(matrix.clone().to(F64))  # (d, D)
        self.shift = nn.Parameter(shift.clone().to(F64))  # (d,)
        self.latent_dim = int(matrix.shape[0])
        log_var = torch.as_tensor(log_var, dtype=F64).expand(self.latent_dim)
        self.log_var = nn.Parameter(log_var.clone())

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean = x @ self.matrix.T + self.shift
        return mean, self.log_var.expand_as(mean)


class GaussianEnergy(nn.Module):
    """E(x) = ½(x − m)ᵀP(x − m), fixed m and P (float64).

    Example:
        >>> GaussianEnergy(torch.zeros(2), 2 * torch.eye(2))(torch.ones(1, 2, dtype=F64))
        tensor([2.], dtype=torch.float64)
    """

    def __init__(self, mean: Tensor, precision: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.clone().to(F64))
        self.register_buffer("precision", precision.clone().to(F64))

    def forward(self, x: Tensor) -> Tensor:
        y = x - self.mean
        return 0.5 * ((y @ self.precision) * y).sum(1)


class LearnableGaussianEnergy(nn.Module):
    """E(x) = ½(x − m)ᵀP(x − m) with learnable m and P = LLᵀ + εI (L lower triangular)."""

    def __init__(self, dim: int, epsilon: float = 1e-3) -> None:
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(dim, dtype=F64))
        self.factor = nn.Parameter(torch.eye(dim, dtype=F64))
        self.epsilon = float(epsilon)

    def precision(self) -> Tensor:
        lower = self.factor.tril()
        return lower @ lower.T + self.epsilon * torch.eye(len(self.mean), dtype=F64)

    def forward(self, x: Tensor) -> Tensor:
        y = x - self.mean
        return 0.5 * ((y @ self.precision()) * y).sum(1)


class ExactGaussianSampler:
    """Draws exact samples of N(m, T·P⁻¹) from a `LearnableGaussianEnergy` (detached), ignoring
    the start: the "exact model samples" of T7 (temperature T = 1 is correct)."""

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = float(temperature)
        self.n_steps = 0

    def sample(
        self,
        energy: LearnableGaussianEnergy,
        start: object,
        n_steps: int | None = None,
        **_: object,
    ) -> SampleResult:
        x0 = getattr(start, "x", start)
        with torch.no_grad():
            covariance = self.temperature * torch.linalg.inv(energy.precision())
            noise = torch.randn(x0.shape[0], len(energy.mean), dtype=F64)
            x = energy.mean + noise @ torch.linalg.cholesky(covariance).T
        return SampleResult(
            x=x,
            state=None,
            acceptance_rate=None,
            n_grad_evals=0,
            energy_trace=torch.zeros(0),
            step_size=torch.zeros(()),
        )


# -- the exact side ---------------------------------------------------------------------------


def linear_gaussian_posterior(
    weight: Tensor, bias: Tensor, sigma: float, x: Tensor
) -> tuple[Tensor, Tensor]:
    """(P, m(x)) of p(z|x) for z ~ N(0, I), x|z ~ N(Wz + b, σ²I): P = I + WᵀW/σ² (d, d),
    m = P⁻¹Wᵀ(x − b)/σ² (one row per x)."""
    weight, bias, x = weight.to(F64), bias.to(F64), x.to(F64)
    precision = torch.eye(weight.shape[1], dtype=F64) + weight.T @ weight / sigma**2
    mean = torch.linalg.solve(precision, weight.T @ (x - bias).T).T / sigma**2
    return precision, mean


def ula_moments(
    precision: Tensor,
    mean: Tensor,
    step_size: float,
    mean0: Tensor,
    cov0: Tensor,
    n_steps: int,
    noise_var: float | None = None,
) -> list[tuple[Tensor, Tensor]]:
    """[(mean_k, C_k) for k = 0..n_steps] of z ← z − s P(z − m) + ηε from N(mean0, cov0);
    η² = 2s unless `noise_var` says otherwise."""
    noise_var = 2 * step_size if noise_var is None else noise_var
    dim = precision.shape[0]
    contraction = torch.eye(dim, dtype=F64) - step_size * precision
    moments = [(mean0.to(F64), cov0.to(F64))]
    for _ in range(n_steps):
        m_k, c_k = moments[-1]
        m_next = mean + (m_k - mean) @ contraction.T
        c_next = contraction @ c_k @ contraction.T + noise_var * torch.eye(dim, dtype=F64)
        moments.append((m_next, c_next))
    return moments


def ula_stationary_covariance(precision: Tensor, step_size: float) -> Tensor:
    """C∞ = (P − (s/2)P²)⁻¹, the stationary covariance of ULA on a Gaussian."""
    return torch.linalg.inv(precision - 0.5 * step_size * precision @ precision)


def moment_z_scores(samples: Tensor, mean: Tensor, cov: Tensor) -> tuple[float, float]:
    """(max |z| of the means, max |z| of the covariance entries) of `samples` (N, d) against
    N(mean, cov): SE(mean_i) = √(C_ii/N), SE(C_ij) = √((C_ii C_jj + C_ij²)/N)."""
    n = samples.shape[0]
    samples = samples.to(F64)
    sample_mean = samples.mean(0)
    centred = samples - sample_mean
    sample_cov = centred.T @ centred / (n - 1)
    diag = cov.diagonal()
    z_mean = (sample_mean - mean) / (diag / n).sqrt()
    se_cov = ((diag[:, None] * diag[None, :] + cov.square()) / n).sqrt()
    z_cov = (sample_cov - cov) / se_cov
    return float(z_mean.abs().max()), float(z_cov.abs().max())


# -- wrong variants -----------------------------------------------------------------------------


class ScaledPosteriorEnergy:
    """U(z) = c_lik‖x − g(z)‖² + c_prior‖z‖²/2 (the exact one has c_lik = 1/(2σ²), c_prior = 1)."""

    def __init__(
        self, generator: nn.Module, x: Tensor, likelihood_scale: float, prior_scale: float
    ) -> None:
        self.generator, self.x = generator, x
        self.likelihood_scale, self.prior_scale = likelihood_scale, prior_scale

    def __call__(self, z: Tensor) -> Tensor:
        likelihood = self.likelihood_scale * squared_error(self.x, self.generator(z))
        return likelihood + 0.5 * self.prior_scale * z.square().sum(1)


class ScaledPosterior(Generator):
    """A `Generator` whose posterior energy has other scales (see `ScaledPosteriorEnergy`)."""

    def __init__(self, *, likelihood_scale: float, prior_scale: float, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.likelihood_scale, self.prior_scale = likelihood_scale, prior_scale

    def posterior_energy(self, x: Tensor) -> ScaledPosteriorEnergy:  # type: ignore[override]
        return ScaledPosteriorEnergy(self.generator, x, self.likelihood_scale, self.prior_scale)


class MeanStart(Generator):
    """A `Generator` whose revision starts at μ_q(x) instead of a draw from q."""

    def posterior_start(self, x: Tensor, round_index: int = -1) -> Tensor:
        with torch.no_grad():
            return self.infer(x)[0]


class LogStdStart(Generator):
    """A `Generator` that reads q's log-variance ℓ as a log-std: z0 = μ + e^ℓ ε."""

    def posterior_start(self, x: Tensor, round_index: int = -1) -> Tensor:
        with torch.no_grad():
            mean, log_var = self.infer(x)
            return mean + log_var.exp() * torch.randn_like(mean)


class NoiseFirstLangevin:
    """z' = z + √(2s)ε, then z ← z' − s∇U(z'): Langevin with the noise before the gradient."""

    def __init__(self, step_size: float, n_steps: int = 1) -> None:
        self.step_size, self.n_steps = float(step_size), n_steps

    def sample(self, energy: object, start: Tensor, n_steps: int | None = None) -> SampleResult:
        z = start.detach()
        for _ in range(self.n_steps if n_steps is None else n_steps):
            z = (z + math.sqrt(2 * self.step_size) * torch.randn_like(z)).requires_grad_(True)
            (grad,) = torch.autograd.grad(energy(z).sum(), z)
            z = (z - self.step_size * grad).detach()
        return SampleResult(
            x=z,
            state=None,
            acceptance_rate=None,
            n_grad_evals=0,
            energy_trace=torch.zeros(0),
            step_size=torch.zeros(()),
        )
