r"""ToyNet: the 2-D energy network of ebm-anatomy and of the STANLEY authors' toy code."""

from __future__ import annotations

import math

from torch import Tensor, nn

__all__ = ["ToyNet"]


class ToyNet(nn.Module):
    """E(x) = f(x) / temperature, f a per-point MLP 2 → n_f → 2n_f → 2n_f → 2n_f → 1.

    The reference network is five 1×1 convolutions on points shaped (B, 2, 1, 1) with
    LeakyReLU (slope 0.05) between them: a 1×1 convolution on a 1×1 map is a Linear layer, so
    this module uses Linear layers. Their default initialisation draws the same numbers from
    the same random stream (kaiming-uniform weights with fan-in = input width, uniform biases
    of bound 1/sqrt(fan-in)), so a seeded ToyNet starts where the reference starts.

    **Sign.** The reference output f is the energy itself, not −E: its sampler descends f
    (x ← x − ∇f + ε·ξ, and the STANLEY toy code x ← x − γ∇f + γ·ε·ξ) and its loss
    mean f(data) − mean f(samples) lowers f at the data. **Temperature.** ebm-anatomy reads f
    at temperature T = ε²/2: it multiplies the loss by 2/ε² and draws the model density as
    exp(−f·2/ε²). `temperature = ε²/2` makes this module's output that energy, E = f/T, so
    ebmkit's loss mean E(data) − mean E(samples) is the reference's scaled loss term for term,
    and the reference Langevin update x − ∇f + ε·ξ is ULA on E with step T and noise
    sqrt(2T) = ε. The default temperature 1 returns f unchanged.

    Arguments:
        in_features: dimension of a point (2 for the toy sets).
        n_f: base width (32 in the reference: widths n_f, 2n_f, 2n_f, 2n_f).
        negative_slope: LeakyReLU slope (0.05 in the reference).
        temperature: T > 0; the output is f/T.

    References:
        Nijkamp, Hill, Han, Zhu, Wu (2020), On the Anatomy of MCMC-Based Maximum Likelihood
        Learning of Energy-Based Models, AAAI (github.com/point0bar1/ebm-anatomy, nets.py).
        Karimi, Xie & Li (2023), STANLEY, arXiv:2310.12667 (the authors' train_toy.py).

    Example:
        >>> import torch
        >>> ToyNet(temperature=0.005)(torch.zeros(5, 2)).shape
        torch.Size([5])
    """

    def __init__(
        self,
        in_features: int = 2,
        n_f: int = 32,
        negative_slope: float = 0.05,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if in_features < 1 or n_f < 1:
            raise ValueError(
                f"energies.ToyNet needs in_features >= 1 and n_f >= 1, got "
                f"in_features={in_features}, n_f={n_f}"
            )
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(
                f"energies.ToyNet.temperature must be a finite number > 0, got {temperature!r} "
                f"(the reference's ε²/2, e.g. 0.005 for ε = 0.1)"
            )
        self.temperature = float(temperature)
        widths = [in_features, n_f, 2 * n_f, 2 * n_f, 2 * n_f]
        layers: list[nn.Module] = []
        for width_in, width_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(width_in, width_out), nn.LeakyReLU(negative_slope)]
        layers.append(nn.Linear(widths[-1], 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Energies (B,) of points (B, in_features) or (B, in_features, 1, 1)."""
        f = self.net(x.flatten(1)).squeeze(-1)
        return f if self.temperature == 1.0 else f / self.temperature

    def extra_repr(self) -> str:
        return f"temperature={self.temperature:g}"
