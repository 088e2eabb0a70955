r"""The Dual-MCMC energy: an SNGAN-style discriminator ResNet whose output is E(x) itself.

References:
    Cui & Han (2023), Learning energy-based model via dual-MCMC teaching. NeurIPS 2023.
    Miyato et al. (2018), Spectral normalization for generative adversarial networks (SNGAN).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from torch import Tensor, nn
from torch.nn import functional
from torch.nn.utils.parametrizations import spectral_norm

from ebmkit import Registry

__all__ = ["DownBlock", "DualResNetEnergy", "register_energies"]

_OWNER = "energies.DualResNet"


def _conv(in_channels: int, out_channels: int, kernel_size: int) -> nn.Module:
    """A bias-free conv ("same" padding), xavier_normal_ init, under spectral normalisation."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
    nn.init.xavier_normal_(conv.weight)
    return spectral_norm(conv)


class DownBlock(nn.Module):
    """An SNGAN discriminator block: residual branch + shortcut, optionally 2×2 average pooled.

    - first (the "optimized" block): conv3-ReLU-conv3-avgpool, shortcut avgpool-conv1×1;
    - downsample: ReLU-conv3-ReLU-conv3-avgpool, shortcut conv1×1-avgpool;
    - plain: ReLU-conv3-ReLU-conv3, identity shortcut (needs in_channels == out_channels).

    Arguments:
        in_channels, out_channels: widths before and after the block.
        downsample: halve the resolution.
        first: the optimized first block (no ReLU before its first conv; implies downsample).
    """

    def __init__(
        self, in_channels: int, out_channels: int, downsample: bool, first: bool = False
    ) -> None:
        super().__init__()
        self.conv1 = _conv(in_channels, out_channels, 3)
        self.conv2 = _conv(out_channels, out_channels, 3)
        self.shortcut = _conv(in_channels, out_channels, 1) if downsample or first else None
        if self.shortcut is None and in_channels != out_channels:
            raise ValueError(
                f"a plain block keeps its width; got in_channels={in_channels}, "
                f"out_channels={out_channels}"
            )
        self.downsample = downsample or first
        self.first = first

    def forward(self, x: Tensor) -> Tensor:
        h = x if self.first else functional.relu(x)
        h = self.conv2(functional.relu(self.conv1(h)))
        if self.downsample:
            h = functional.avg_pool2d(h, 2)
        if self.shortcut is None:
            return h + x
        if self.first:
            return h + self.shortcut(functional.avg_pool2d(x, 2))
        return h + functional.avg_pool2d(self.shortcut(x), 2)


class DualResNetEnergy(nn.Module):
    """E(x): the paper's CIFAR-10 energy, an SNGAN discriminator ResNet with no biases.

    Down-blocks (the first the optimized one), plain blocks, ReLU, global average pool (the mean
    over H, W, as the method file says; SNGAN sums), Linear → 1. Spectral normalisation on every
    conv and the linear head; no biases anywhere; convs start from xavier_normal_. The output is
    the energy itself (ebmkit's sign: lower is likelier).

    CIFAR-10 (the paper): ``channels=512, down_blocks=2, plain_blocks=2`` (32 → 8).
    CelebA-64 (our choice, the released code is CIFAR-only): ``widths=(64, 128, 256, 512,
    1024), down_blocks=5`` (64 → 2), two plain blocks at 1024.

    Arguments:
        in_channels: image channels.
        channels: the width of every block when `widths` is None.
        down_blocks: blocks that halve the resolution (the input side must divide by
            2**down_blocks).
        plain_blocks: blocks at the last width and resolution, identity shortcut.
        widths: per-down-block widths (one per down-block); None means `channels` throughout.

    Example:
        >>> import torch
        >>> DualResNetEnergy(channels=8)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2])
    """

    def __init__(
        self,
        in_channels: int = 3,
        channels: int = 512,
        down_blocks: int = 2,
        plain_blocks: int = 2,
        widths: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        for argument, value, least in [
            ("in_channels", in_channels, 1),
            ("channels", channels, 1),
            ("down_blocks", down_blocks, 1),
            ("plain_blocks", plain_blocks, 0),
        ]:
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(
                    f"{_OWNER}: {argument}={value!r} is not allowed; it must be an integer "
                    f">= {least} (binding {_OWNER}.{argument})"
                )
        if widths is None:
            widths = (channels,) * down_blocks
        widths = tuple(widths)
        if len(widths) != down_blocks or any(
            isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths
        ):
            raise ValueError(
                f"{_OWNER}: widths={widths!r} is not allowed with down_blocks={down_blocks}; "
                f"give one integer >= 1 per down-block (bind {_OWNER}.down_blocks = "
                f"{len(widths)}) or widths = None"
            )
        blocks: list[nn.Module] = [DownBlock(in_channels, widths[0], True, first=True)]
        for width_in, width in pairwise(widths):
            blocks.append(DownBlock(width_in, width, downsample=True))
        blocks += [DownBlock(widths[-1], widths[-1], False) for _ in range(plain_blocks)]
        self.blocks = nn.Sequential(*blocks)
        self.head = spectral_norm(nn.Linear(widths[-1], 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        h = functional.relu(self.blocks(x)).mean(dim=(2, 3))
        return self.head(h).squeeze(-1)


def register_energies(registry: Registry) -> None:
    """Register the energy (gin ``energies.DualResNet``)."""
    registry.add("energy", "DualResNet", DualResNetEnergy)
