r"""`energies.CoopFlowResNet`: CoopFlow's `EBM_res(n_f)`, CPMLA's image energy (17.13M)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ebmkit import Registry

__all__ = ["CoopFlowResNet", "register_energies"]


class _ResidualDown(nn.Module):
    """h ↦ avgpool₂(conv₂(swish(conv₁(h))) + skip(h)): three 3×3 convs (in→in, in→out, and
    the skip in→out), then 2×2 average pooling; Swish after the block."""

    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_in, 3, padding=1)
        self.conv2 = nn.Conv2d(channels_in, channels_out, 3, padding=1)
        self.skip = nn.Conv2d(channels_in, channels_out, 3, padding=1)

    def forward(self, h: Tensor) -> Tensor:  # type: ignore[override]
        out = self.conv2(F.silu(self.conv1(h))) + self.skip(h)
        return F.silu(F.avg_pool2d(out, 2))


class CoopFlowResNet(nn.Module):
    """E(x) for 32×32 images: CoopFlow's `EBM_res(n_f)` as CPMLA uses it (App. I).

    conv3×3 (C→n_f), Swish; three residual blocks of three 3×3 convolutions (n_f→2n_f→4n_f→
    8n_f, each followed by 2×2 average pooling: 32 → 16 → 8 → 4); a 4×4 convolution (8n_f →
    100) summed to one number per image. With n_f = 128: 17,129,444 parameters (the paper's
    17.13M). The output is read as E (the reference's f = −E; its last layer is linear, so
    the model class is the same). The layer order inside a block is our reconstruction
    matching that count (conv in→in, conv in→out, a 3×3 skip in→out).

    Arguments:
        n_f: the base width (128 in the paper).
        in_channels: image channels.
        n_out: outputs of the last convolution, summed (100 in the reference).

    Example:
        >>> import torch
        >>> CoopFlowResNet(n_f=4)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2])
    """

    def __init__(self, n_f: int = 128, in_channels: int = 3, n_out: int = 100) -> None:
        super().__init__()
        if n_f < 1 or in_channels < 1 or n_out < 1:
            raise ValueError(
                f"energies.CoopFlowResNet needs n_f, in_channels, n_out >= 1, got {n_f}, "
                f"{in_channels}, {n_out}"
            )
        self.first = nn.Conv2d(in_channels, n_f, 3, padding=1)
        self.blocks = nn.Sequential(
            _ResidualDown(n_f, 2 * n_f),
            _ResidualDown(2 * n_f, 4 * n_f),
            _ResidualDown(4 * n_f, 8 * n_f),
        )
        self.last = nn.Conv2d(8 * n_f, n_out, 4)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        """E(x), shape (B,), for x of shape (B, C, 32, 32)."""
        if x.dim() != 4 or x.shape[-2:] != (32, 32):
            raise ValueError(
                f"energies.CoopFlowResNet takes (B, C, 32, 32) images, got {tuple(x.shape)}"
            )
        h = self.blocks(F.silu(self.first(x)))
        return self.last(h).flatten(1).sum(1)


def register_energies(registry: Registry) -> None:
    """Register `CoopFlowResNet` (gin ``energies.CoopFlowResNet``)."""
    registry.add("energy", "CoopFlowResNet", CoopFlowResNet)
