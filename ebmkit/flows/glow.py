r"""A small Glow-style multi-scale image flow (actnorm, invertible 1×1 conv, affine coupling)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebmkit.compatibility import require_image_shape
from ebmkit.flows.base import FlowModule
from ebmkit.records import Round

__all__ = ["ActNorm", "AffineCoupling", "Glow", "GlowStep", "InvertibleConv1x1", "squeeze"]

_STD_FLOOR = 1e-3
"""ActNorm's data-dependent init divides by max(std, this): a constant channel stays finite."""


def squeeze(h: Tensor) -> Tensor:
    """(B, C, H, W) → (B, 4C, H/2, W/2): each 2×2 patch becomes 4 channels (volume-preserving)."""
    b, c, height, width = h.shape
    h = h.reshape(b, c, height // 2, 2, width // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return h.reshape(b, 4 * c, height // 2, width // 2)


def unsqueeze(h: Tensor) -> Tensor:
    """The inverse of `squeeze`: (B, 4C, H, W) → (B, C, 2H, 2W)."""
    b, c, height, width = h.shape
    h = h.reshape(b, c // 4, 2, 2, height, width).permute(0, 1, 4, 2, 5, 3)
    return h.reshape(b, c // 4, 2 * height, 2 * width)


def _per_sample(value: Tensor, batch: int) -> Tensor:
    return value.expand(batch) if value.dim() == 0 else value


class ActNorm(nn.Module):
    """Per-channel affine y = (h + b)·exp(s); the identity until its data-dependent init.

    While `initializing` is set (by `Glow.initialize`), a forward pass sets b = −mean and
    s = −log std of its input per channel (over batch and pixels), so the first data batch
    leaves every actnorm with zero-mean, unit-variance outputs.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.initializing = False

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        """(y, log|det ∂y/∂h|) with the log-det per sample (B,)."""
        if self.initializing:
            with torch.no_grad():
                mean = h.mean(dim=(0, 2, 3), keepdim=True)
                std = h.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
                self.bias.copy_(-mean)
                self.log_scale.copy_(-std.clamp_min(_STD_FLOOR).log())
        y = (h + self.bias) * self.log_scale.exp()
        logdet = h.shape[2] * h.shape[3] * self.log_scale.sum()
        return y, logdet.expand(h.shape[0])

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """(h, log|det ∂h/∂y|)."""
        h = y * torch.exp(-self.log_scale) - self.bias
        logdet = -y.shape[2] * y.shape[3] * self.log_scale.sum()
        return h, logdet.expand(y.shape[0])


class InvertibleConv1x1(nn.Module):
    """A learned channel mixing W = P·L·(U + diag(sign·exp(log_s))), LU-decomposed (Glow's):
    log|det| = H·W·Σ log_s, no determinant to compute. Starts at a random rotation."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        rotation = torch.linalg.qr(torch.randn(channels, channels))[0]
        permutation, lower, upper = torch.linalg.lu(rotation)
        diagonal = upper.diagonal()
        self.register_buffer("permutation", permutation)
        self.register_buffer("sign", diagonal.sign())
        self.lower = nn.Parameter(lower.tril(-1))
        self.upper = nn.Parameter(upper.triu(1))
        self.log_s = nn.Parameter(diagonal.abs().log())

    def weight(self) -> Tensor:
        """W, (C, C)."""
        eye = torch.eye(self.log_s.shape[0], dtype=self.log_s.dtype, device=self.log_s.device)
        lower = self.lower.tril(-1) + eye
        upper = self.upper.triu(1) + torch.diag(self.sign * self.log_s.exp())
        return self.permutation @ lower @ upper

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        """(W h per pixel, H·W·Σ log_s)."""
        weight = self.weight()
        y = F.conv2d(h, weight.view(*weight.shape, 1, 1))
        logdet = h.shape[2] * h.shape[3] * self.log_s.sum()
        return y, logdet.expand(h.shape[0])

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """(W⁻¹ y per pixel, −H·W·Σ log_s)."""
        inverse = torch.linalg.inv(self.weight())
        h = F.conv2d(y, inverse.view(*inverse.shape, 1, 1))
        logdet = -y.shape[2] * y.shape[3] * self.log_s.sum()
        return h, logdet.expand(y.shape[0])


class AffineCoupling(nn.Module):
    """y_a = h_a, y_b = (h_b + t(h_a))·exp(s(h_a)) with s = 2·tanh(raw/2) bounded in (−2, 2).

    The conditioner is conv3×3 → ReLU → conv1×1 → ReLU → conv3×3, its last layer zero, so the
    coupling starts as the identity (s = 0, t = 0).
    """

    def __init__(self, channels: int, hidden_channels: int) -> None:
        super().__init__()
        self.kept = channels // 2
        changed = channels - self.kept
        last = nn.Conv2d(hidden_channels, 2 * changed, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(
            nn.Conv2d(self.kept, hidden_channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden_channels, hidden_channels, 1),
            nn.ReLU(),
            last,
        )

    def _shift_and_log_scale(self, kept: Tensor) -> tuple[Tensor, Tensor]:
        shift, raw = self.net(kept).chunk(2, dim=1)
        return shift, 2 * torch.tanh(raw / 2)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        """(y, Σ s)."""
        kept, changed = h[:, : self.kept], h[:, self.kept :]
        shift, log_scale = self._shift_and_log_scale(kept)
        y = torch.cat([kept, (changed + shift) * log_scale.exp()], dim=1)
        return y, log_scale.flatten(1).sum(1)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """(h, −Σ s)."""
        kept, changed = y[:, : self.kept], y[:, self.kept :]
        shift, log_scale = self._shift_and_log_scale(kept)
        h = torch.cat([kept, changed * torch.exp(-log_scale) - shift], dim=1)
        return h, -log_scale.flatten(1).sum(1)


class GlowStep(nn.Module):
    """One step of flow: actnorm → invertible 1×1 conv → affine coupling."""

    def __init__(self, channels: int, hidden_channels: int) -> None:
        super().__init__()
        self.parts = nn.ModuleList(
            [
                ActNorm(channels),
                InvertibleConv1x1(channels),
                AffineCoupling(channels, hidden_channels),
            ]
        )

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        """(y, log|det ∂y/∂h|)."""
        logdet = h.new_zeros(h.shape[0])
        for part in self.parts:
            h, part_logdet = part(h)
            logdet = logdet + part_logdet
        return h, logdet

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """(h, log|det ∂h/∂y|)."""
        logdet = y.new_zeros(y.shape[0])
        for part in reversed(self.parts):
            y, part_logdet = part.inverse(y)
            logdet = logdet + part_logdet
        return y, logdet


class Glow(FlowModule):
    """A Glow-style multi-scale flow for images in [−1, 1], small by default.

    The density is over the continuous values x ∈ [−1, 1] (how ebmkit's image sets are
    scaled), and every Jacobian term is in `forward`'s log-det: u = (x + 1)/2,
    y = logit(α + (1 − 2α)·u) (RealNVP's and Glow's pre-processing, α = 0.05), then `levels`
    levels of: squeeze (2×2 patches to channels), `steps_per_level` steps of actnorm →
    invertible 1×1 conv (LU) → affine coupling, and, except at the last level, half the
    channels split off to the base. The split-off parts are put back in place (volume-
    preserving reshuffles), so z has the image's shape and the base is N(0, I) of it.
    The support is x ∈ (−1 − δ, 1 + δ), δ = 2α/(1 − 2α); `log_prob` is −inf outside.

    Dequantisation: `loss` adds uniform noise of one level's width, x + (2/n_bins)·U with
    U ~ U[0, 1)^D (the global RNG, saved by every checkpoint), to the data points it fits
    (chain samples, already continuous, are only clamped to [−1, 1]). So log λ of the
    dequantised data is, in expectation, a lower bound on the discrete log-likelihood of the
    8-bit images: log P(x) ≥ E_U[log λ(x + (2/n_bins)·U)] + D·log(2/n_bins).

    ActNorm's data-dependent init runs in `loss` on the first data batch it sees (before the
    first likelihood), or through `initialize(x)`; a buffer `initialized` records it, so a
    flow loaded from a checkpoint does not initialise again and a resumed run is
    bit-identical. Before it every actnorm is the identity; the couplings start as the
    identity too (zero last layers), the 1×1 convolutions as random rotations.

    Warning:
        This is not the Flow++ of CoopFlow's paper (28.78M parameters): the default here has
        about 0.16M parameters at (3, 32, 32). FIDs obtained with it are not the paper's.

    References:
        Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions" (2018),
        arXiv:1807.03039. Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real
        NVP" (2016), arXiv:1605.08803 (the logit pre-processing, multi-scale splits).

    Arguments:
        event_shape: (C, H, W) of one image; H and W divisible by 2**levels.
        levels: multi-scale levels (each squeezes; all but the last split half off).
        steps_per_level: actnorm → 1×1 conv → coupling steps per level.
        hidden_channels: the coupling conditioners' width.
        alpha: the logit pre-processing's margin α, in (0, 0.5).
        n_bins: the data's quantisation levels (256 for 8-bit images).
        dequantize: add the uniform dequantisation noise in `loss` (False: fit the points as
            they are, e.g. already continuous data).
        **settings: `FlowModule`'s (fit_on, reverse_kl_weight, learning_rate, ...).

    Example:
        >>> flow = Glow(event_shape=(3, 8, 8), levels=2, steps_per_level=1, hidden_channels=8)
        >>> x = flow.sample(2)
        >>> x.shape, flow.log_prob(x).shape, bool(flow.initialized)
        (torch.Size([2, 3, 8, 8]), torch.Size([2]), False)
    """

    def __init__(
        self,
        *,
        event_shape: Sequence[int],
        levels: int = 2,
        steps_per_level: int = 4,
        hidden_channels: int = 64,
        alpha: float = 0.05,
        n_bins: int = 256,
        dequantize: bool = True,
        **settings: Any,
    ) -> None:
        super().__init__(event_shape=event_shape, **settings)
        shape = self.event_shape
        if shape is None or len(shape) != 3:
            raise ValueError(
                f"flows.Glow.event_shape must be (C, H, W) of one image, got {event_shape!r}"
            )
        if int(levels) < 1 or int(steps_per_level) < 1 or int(hidden_channels) < 1:
            raise ValueError(
                f"flows.Glow: levels, steps_per_level and hidden_channels must be >= 1, got "
                f"{levels}, {steps_per_level}, {hidden_channels}"
            )
        factor = 2 ** int(levels)
        if shape[1] % factor or shape[2] % factor:
            raise ValueError(
                f"flows.Glow: image size {shape[1]}×{shape[2]} is not divisible by "
                f"2**levels = {factor}; lower flows.Glow.levels or resize the images"
            )
        if not 0.0 < alpha < 0.5:
            raise ValueError(f"flows.Glow.alpha must be in (0, 0.5), got {alpha}")
        if int(n_bins) < 2:
            raise ValueError(f"flows.Glow.n_bins must be >= 2, got {n_bins}")
        self.alpha = float(alpha)
        self.n_bins = int(n_bins)
        self.dequantize = bool(dequantize)
        self.levels = nn.ModuleList()
        channels = shape[0]
        for _ in range(int(levels)):
            channels *= 4
            steps = [
                GlowStep(channels, int(hidden_channels)) for _step in range(int(steps_per_level))
            ]
            self.levels.append(nn.ModuleList(steps))
            channels //= 2  # the half that goes on (the last level keeps all: unused after)
        self.register_buffer("initialized", torch.tensor(False))

    @classmethod
    def testing_cases(cls, shape: Sequence[int] | None = None) -> list[FlowModule]:
        """Two tiny Glows, (3, 4, 4) with one level and (1, 4, 4) with two, or (`shape` an
        image (C, H, W), H and W even) one of one level; initialised on random data and
        perturbed off the identity (seeded; the global RNG is untouched). Images only:
        another shape raises IncompatibleError."""
        shapes = (((3, 4, 4), 1), ((1, 4, 4), 2))
        if shape is not None:
            instead = "flows.RealNVP, flows.NSF, flows.MAF or flows.Affine for vectors"
            shapes = ((require_image_shape("flows.Glow", shape, instead, divisor=2), 1),)
        cases = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            for event_shape, levels in shapes:
                flow = cls(
                    event_shape=event_shape, levels=levels, steps_per_level=2, hidden_channels=8
                )
                flow.initialize(torch.rand(16, *event_shape) * 1.6 - 0.8)
                with torch.no_grad():
                    for parameter in flow.parameters():
                        parameter.add_(0.1 * torch.randn_like(parameter))
                cases.append(flow)
        return cases

    @property
    def support(self) -> tuple[float, float]:
        """(low, high): x outside this open interval has density 0."""
        margin = 2 * self.alpha / (1 - 2 * self.alpha)
        return -1.0 - margin, 1.0 + margin

    def _check_dtype(self, value: Tensor) -> None:
        reference = self._reference_tensor()
        if value.dtype != reference.dtype:
            raise TypeError(
                f"{self.component_name} holds {reference.dtype} parameters but got "
                f"{value.dtype} input; move the flow with flow.to({value.dtype}) or pass "
                f"{reference.dtype} input"
            )

    # The pre-processing: x ∈ [−1, 1] ↔ y = logit(α + (1 − 2α)(x + 1)/2) -----------------

    def _to_logit(self, x: Tensor) -> tuple[Tensor, Tensor]:
        p = self.alpha + (1 - 2 * self.alpha) * (x + 1) / 2
        log_p, log_not_p = torch.log(p), torch.log1p(-p)
        constant = math.log((1 - 2 * self.alpha) / 2) * x[0].numel()
        return log_p - log_not_p, constant - (log_p + log_not_p).flatten(1).sum(1)

    def _from_logit(self, y: Tensor) -> tuple[Tensor, Tensor]:
        p = torch.sigmoid(y)
        x = 2 * (p - self.alpha) / (1 - 2 * self.alpha) - 1
        constant = math.log(2 / (1 - 2 * self.alpha)) * y[0].numel()
        log_slope = F.logsigmoid(y) + F.logsigmoid(-y)
        return x, constant + log_slope.flatten(1).sum(1)

    # The levels, recursively: squeeze, steps, split half to the next level, put back -----

    def _forward_level(self, level: int, h: Tensor) -> tuple[Tensor, Tensor]:
        h = squeeze(h)
        logdet = h.new_zeros(h.shape[0])
        for step in self.levels[level]:
            h, step_logdet = step(h)
            logdet = logdet + step_logdet
        if level < len(self.levels) - 1:
            half = h.shape[1] // 2
            inner, inner_logdet = self._forward_level(level + 1, h[:, :half])
            h = torch.cat([inner, h[:, half:]], dim=1)
            logdet = logdet + inner_logdet
        return unsqueeze(h), logdet

    def _inverse_level(self, level: int, z: Tensor) -> tuple[Tensor, Tensor]:
        h = squeeze(z)
        logdet = h.new_zeros(h.shape[0])
        if level < len(self.levels) - 1:
            half = h.shape[1] // 2
            inner, inner_logdet = self._inverse_level(level + 1, h[:, :half])
            h = torch.cat([inner, h[:, half:]], dim=1)
            logdet = logdet + inner_logdet
        for step in reversed(self.levels[level]):
            h, step_logdet = step.inverse(h)
            logdet = logdet + step_logdet
        return unsqueeze(h), logdet

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        """z and log|det ∂z/∂x|, the logit pre-processing's terms included."""
        self.check_input(x)
        self._check_dtype(x)
        y, logdet = self._to_logit(x)
        z, flow_logdet = self._forward_level(0, y)
        return z, logdet + flow_logdet

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """x and log|det ∂x/∂z|."""
        self.check_input(z, "base points")
        self._check_dtype(z)
        y, flow_logdet = self._inverse_level(0, z)
        x, logdet = self._from_logit(y)
        return x, flow_logdet + logdet

    def log_prob(self, x: Tensor) -> Tensor:
        """log λ(x), −inf outside the support (see `support`)."""
        low, high = self.support
        inside = ((x > low) & (x < high)).flatten(1).all(1)
        safe = torch.where(inside.view(-1, *([1] * (x.dim() - 1))), x, torch.zeros_like(x))
        return super().log_prob(safe).masked_fill(~inside, -math.inf)

    # Learning ---------------------------------------------------------------------------

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """ActNorm's data-dependent init on the batch `x` (each actnorm normalises what
        reaches it), then `initialized` is set; `loss` calls this on its first batch."""
        self.check_input(x, "data")
        actnorms = [module for module in self.modules() if isinstance(module, ActNorm)]
        for actnorm in actnorms:
            actnorm.initializing = True
        try:
            self.forward(x.to(self._reference_tensor().dtype))
        finally:
            for actnorm in actnorms:
                actnorm.initializing = False
        self.initialized.fill_(True)

    def dequantized(self, x: Tensor) -> Tensor:
        """x + (2/n_bins)·U, U ~ U[0, 1) from the global RNG (`x` itself if dequantize=False)."""
        if not self.dequantize:
            return x
        return x + torch.rand_like(x) * (2 / self.n_bins)

    def training_points(self, round: Round) -> Tensor:
        """Dequantised data and/or chain samples clamped to [−1, 1], by `fit_on`."""
        parts = []
        if self.fit_on in ("data", "both"):
            parts.append(self.dequantized(round.x_data))
        if self.fit_on in ("samples", "both"):
            samples = round.result.x.detach().clamp(-1.0, 1.0)
            parts.append(samples.to(parts[0].dtype) if parts else samples)
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def loss(self, round: Round) -> dict[str, Tensor]:
        """Forward KL (FlowModule's), after ActNorm's init on the first data batch."""
        if not bool(self.initialized):
            first = round.x_data if round.x_data.numel() else round.result.x.detach()
            self.initialize(first.clamp(-1.0, 1.0))
        return super().loss(round)
