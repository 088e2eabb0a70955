r"""The input-convex network I_ψ of a Convex Potential Flow (CP-Flow's `ICNN3`, vectors)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ICNN",
    "ConvexActNorm",
    "PositiveLinear",
    "gaussian_softplus",
    "row_linear",
    "symmetric_gaussian_softplus",
]

_PHI_AT_ZERO = 1.0 / math.sqrt(2.0 * math.pi)
_STD_FLOOR = 1e-6
"""ActNorm's data-dependent init divides by max(std, this): a constant unit stays finite."""


def row_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x Wᵀ + b computed row by row: a broadcast product and a sum over the last axis.

    Unlike ``x @ W.T`` (a BLAS kernel whose blocking, and so its rounding, depends on the
    batch size), each row's result is bit for bit the same whatever other rows share the
    batch, so a chain's potential, gradient and inverse solve do not depend on its batch
    (Persistent's reshuffles, per-rank shards).

    Example:
        >>> x, weight = torch.randn(5, 3), torch.randn(4, 3)
        >>> torch.equal(row_linear(x, weight)[2:3], row_linear(x[2:3], weight))
        True
    """
    out = (x.unsqueeze(-2) * weight).sum(-1)
    return out if bias is None else out + bias


def gaussian_softplus(t: Tensor) -> Tensor:
    """s(t) = t·Φ(t) + φ(t) − φ(0): convex (s″ = φ > 0), nondecreasing (s′ = Φ), s(0) = 0.

    Φ and φ are the standard normal CDF and density; s(t) → t as t → ∞ and s(t) → −φ(0)
    as t → −∞. CP-Flow's "Gaussian softplus", shifted so that s(0) = 0.

    Example:
        >>> [round(value, 4) for value in gaussian_softplus(torch.tensor([0.0, 10.0])).tolist()]
        [0.0, 9.6011]
    """
    density = torch.exp(-0.5 * t.square()) * _PHI_AT_ZERO
    return t * torch.special.ndtr(t) + density - _PHI_AT_ZERO


def symmetric_gaussian_softplus(t: Tensor) -> Tensor:
    """s(t) − t/2: convex and even (not monotone), for the layers fed by x alone
    (`symm_act_first`)."""
    return gaussian_softplus(t) - 0.5 * t


class PositiveLinear(nn.Module):
    """z ↦ W⁺z with W⁺ = softplus(W_raw)/fan_in > 0, no bias (the reference's `PosLinear`).

    Positive weights on convex inputs keep the sum convex; dividing by the fan-in keeps the
    output's scale independent of the width.

    Arguments:
        in_features, out_features: the sizes of z and W⁺z.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.raw_weight = nn.Parameter(torch.empty(out_features, in_features))
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.raw_weight, -bound, bound)

    def positive_weight(self) -> Tensor:
        """W⁺ (out, in), every entry > 0."""
        return F.softplus(self.raw_weight) / self.raw_weight.shape[1]

    def forward(self, z: Tensor) -> Tensor:  # type: ignore[override]
        """W⁺z, (B, out), row by row (`row_linear`)."""
        return row_linear(z, self.positive_weight())


class ConvexActNorm(nn.Module):
    """Per-unit h ↦ (h + b)·(exp(log s) + min_scale): an increasing affine map, so it keeps
    convexity; no log-det (it acts inside the potential, not on the flow's variable).

    It is the identity (up to min_scale) until `initialize_from(h)` sets b = −mean and the
    scale to 1/std of `h` per unit, which `ICNN.initialize` calls on the first data batch.

    Arguments:
        features: the number of units.
        min_scale: the scale's floor (> 0 keeps it positive whatever log s becomes).
    """

    def __init__(self, features: int, min_scale: float = 1e-4) -> None:
        super().__init__()
        if not 0.0 < min_scale < 1.0:
            raise ValueError(f"ConvexActNorm.min_scale must be in (0, 1), got {min_scale}")
        self.min_scale = float(min_scale)
        self.bias = nn.Parameter(torch.zeros(features))
        self.log_scale = nn.Parameter(torch.full((features,), math.log1p(-self.min_scale)))

    def scale(self) -> Tensor:
        """exp(log s) + min_scale, (features,), every entry > 0."""
        return self.log_scale.exp() + self.min_scale

    @torch.no_grad()
    def initialize_from(self, h: Tensor) -> None:
        """b = −mean(h), scale = 1/std(h) per unit (over the batch; std floored)."""
        mean = h.mean(0)
        std = h.std(0, unbiased=False).clamp_min(_STD_FLOOR)
        self.bias.copy_(-mean)
        target = (1.0 / std - self.min_scale).clamp_min(_STD_FLOOR)
        self.log_scale.copy_(target.log())

    def forward(self, h: Tensor) -> Tensor:  # type: ignore[override]
        """(h + b)·scale, (B, features)."""
        return (h + self.bias) * self.scale()


class ICNN(nn.Module):
    """The input-convex network I_ψ: R^d → R of CP-Flow (the reference code's `ICNN3`).

    - z₁ = s(A₀x + b₀), width `hidden` (A₀ unconstrained);
    - for each of the `depth − 1` further layers: u = s(actnorm(W⁺z + Ax + b)) of width
      hidden/2, then z = concat(u, s(Bx + c)) (the second half is fed by x alone);
    - output I(x) = actnorm(W_L⁺z + a_Lᵀx), the last actnorm's bias frozen (a constant in
      the potential: it moves no gradient).

    W⁺ are `PositiveLinear` (softplus/fan-in), s is `gaussian_softplus` (convex,
    nondecreasing), and every actnorm has a positive scale, so every hidden unit is convex
    in x and nondecreasing in the previous layer: I is convex. With `symm_act_first` the
    layers fed by x alone (z₁ and the s(Bx + c) halves, as the reference code does) use
    s(t) − t/2, convex but not monotone (allowed there: no positive weight precedes them).

    Every layer is computed row by row (`row_linear`, elementwise activations), so I of a
    chain is bit for bit the same whatever batch it is in.

    ActNorm's data-dependent init runs only through `initialize(x)`, which the flow calls on
    its first data batch; the buffer `initialized` records it (saved in the state dict, so a
    resumed run does not initialise again). `forward` never initialises, so an inverse
    solver's iterates cannot.

    References:
        Huang, Chen, Tsirigotis & Courville, "Convex Potential Flows: Universal Probability
        Distributions with Optimal Transport and Convex Optimization" (ICLR 2021),
        arXiv:2012.05942. Amos, Xu & Kolter, "Input Convex Neural Networks" (ICML 2017).

    Arguments:
        dim: the input dimension d.
        hidden: the width h of the hidden layers (even, ≥ 2).
        depth: the number of hidden layers (≥ 1; the first is z₁).
        symm_act_first: use s(t) − t/2 on the layers fed by x alone.
        actnorm_min_scale: the actnorms' scale floor.

    Example:
        >>> net = ICNN(dim=2, hidden=8, depth=3)
        >>> net(torch.randn(5, 2)).shape, bool(net.initialized)
        (torch.Size([5]), False)
    """

    def __init__(
        self,
        *,
        dim: int,
        hidden: int = 32,
        depth: int = 2,
        symm_act_first: bool = False,
        actnorm_min_scale: float = 1e-4,
    ) -> None:
        super().__init__()
        if int(dim) < 1:
            raise ValueError(f"ICNN.dim must be >= 1, got {dim}")
        if int(hidden) < 2 or int(hidden) % 2:
            raise ValueError(f"ICNN.hidden must be even and >= 2, got {hidden}")
        if int(depth) < 1:
            raise ValueError(f"ICNN.depth must be >= 1, got {depth}")
        self.dim, self.hidden, self.depth = int(dim), int(hidden), int(depth)
        half = self.hidden // 2
        self.symm_act_first = bool(symm_act_first)
        self.first = nn.Linear(self.dim, self.hidden)
        self.hidden_weights = nn.ModuleList(
            [PositiveLinear(self.hidden, half) for _ in range(self.depth - 1)]
        )
        self.skip_weights = nn.ModuleList(
            [nn.Linear(self.dim, half) for _ in range(self.depth - 1)]
        )
        self.augment_weights = nn.ModuleList(
            [nn.Linear(self.dim, half) for _ in range(self.depth - 1)]
        )
        self.actnorms = nn.ModuleList(
            [ConvexActNorm(half, actnorm_min_scale) for _ in range(self.depth - 1)]
        )
        self.output_weight = PositiveLinear(self.hidden, 1)
        self.output_skip = nn.Linear(self.dim, 1, bias=False)
        self.output_actnorm = ConvexActNorm(1, actnorm_min_scale)
        self.output_actnorm.bias.requires_grad_(False)
        self.register_buffer("initialized", torch.tensor(False))

    @staticmethod
    def _affine(layer: nn.Linear, x: Tensor) -> Tensor:
        return row_linear(x, layer.weight, layer.bias)

    def _input_activation(self, t: Tensor) -> Tensor:
        return symmetric_gaussian_softplus(t) if self.symm_act_first else gaussian_softplus(t)

    def positive_weights(self) -> list[Tensor]:
        """Every hidden-path weight W⁺ (all entries > 0: what keeps I convex)."""
        return [layer.positive_weight() for layer in (*self.hidden_weights, self.output_weight)]

    def _evaluate(self, x: Tensor, initialize: bool) -> Tensor:
        z = self._input_activation(self._affine(self.first, x))
        for weight, skip, augment, actnorm in zip(
            self.hidden_weights,
            self.skip_weights,
            self.augment_weights,
            self.actnorms,
            strict=True,
        ):
            pre = weight(z) + self._affine(skip, x)
            if initialize:
                actnorm.initialize_from(pre)
            augmented = self._input_activation(self._affine(augment, x))
            z = torch.cat([gaussian_softplus(actnorm(pre)), augmented], 1)
        out = self.output_weight(z) + self._affine(self.output_skip, x)
        if initialize:
            self.output_actnorm.initialize_from(out)
        return self.output_actnorm(out).squeeze(1)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        """I(x), shape (B,), for x of shape (B, dim)."""
        return self._evaluate(x, initialize=False)

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """ActNorm's data-dependent init on the data batch `x` (each actnorm normalises what
        reaches it, in order), then `initialized` is set. Call it on data only."""
        if x.dim() != 2 or x.shape[1] != self.dim or x.shape[0] < 2:
            raise ValueError(
                f"ICNN.initialize needs a data batch of shape (B >= 2, {self.dim}), got "
                f"{tuple(x.shape)}"
            )
        self._evaluate(x.to(self.first.weight.dtype), initialize=True)
        self.initialized.fill_(True)
