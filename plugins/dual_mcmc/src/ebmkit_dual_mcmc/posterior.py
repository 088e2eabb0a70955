r"""The generator's posterior energy U(z) and the inference model's Gaussian NLL.

Generator p(z) p(x|z) = N(z; 0, I) N(x; g(z), σ²I), so the posterior p(z|x) ∝ exp(−U(z)) with
U(z) = ‖x − g(z)‖² / (2σ²) + ‖z‖² / 2 (constants dropped): any ebmkit sampler revises z on it.
"""

from __future__ import annotations

import attrs
import torch  # noqa: F401 - the examples use it
from torch import Tensor, nn

__all__ = ["PosteriorEnergy", "gaussian_nll", "squared_error"]


def squared_error(x: Tensor, y: Tensor) -> Tensor:
    """‖x − y‖² per sample, shape (B,)."""
    return (x - y).flatten(1).square().sum(1)


@attrs.define(eq=False)
class PosteriorEnergy:
    """U(z) = ‖x − g(z)‖²/(2σ²) + ‖z‖²/2 for a fixed data batch x: p(z | x) ∝ exp(−U(z)).

    An energy on z (maps (B, d) to (B,)), so posterior revision is any registered sampler on
    it. The exact gradient is ∇U = −J_gᵀ(x − g(z))/σ² + z; the reference code differentiates
    ‖x − g‖²/σ² (twice this), which is this energy at σ/√2.

    Arguments:
        generator: g, (B, d) → (B, *x.shape[1:]).
        x: the data batch the posterior is conditioned on, one row per chain.
        sigma: the observation noise σ > 0.

    Example:
        >>> energy = PosteriorEnergy(torch.nn.Identity(), torch.ones(1, 2), sigma=1.0)
        >>> energy(torch.zeros(1, 2))  # ‖1 − 0‖²/2 + 0
        tensor([1.])
    """

    generator: nn.Module
    x: Tensor
    sigma: float = attrs.field(converter=float, validator=attrs.validators.gt(0.0))

    def __call__(self, z: Tensor) -> Tensor:
        """U(z), shape (B,)."""
        if z.shape[0] != self.x.shape[0]:
            raise ValueError(
                f"PosteriorEnergy: {z.shape[0]} latent chains for {self.x.shape[0]} data "
                f"points; run one chain per data point"
            )
        likelihood = squared_error(self.x, self.generator(z)) / (2 * self.sigma**2)
        return likelihood + 0.5 * z.square().sum(1)


def gaussian_nll(z: Tensor, mean: Tensor, log_var: Tensor, epsilon: float = 0.0) -> Tensor:
    """−log N(z; μ, diag e^ℓ) per sample without the constant: ½ Σⱼ [ℓⱼ + (zⱼ − μⱼ)² / (e^ℓⱼ + ε)].

    `epsilon` = 1e-6 reproduces the reference code's denominator; 0 is the exact NLL.

    Example:
        >>> gaussian_nll(torch.ones(1, 2), torch.zeros(1, 2), torch.zeros(1, 2))
        tensor([1.])
    """
    return 0.5 * (log_var + (z - mean).square() / (log_var.exp() + epsilon)).sum(1)
