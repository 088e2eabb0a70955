r"""A small convolutional energy for images (the IGEBM / JEM family)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["ConvEnergy"]

_ACTIVATIONS = {"silu": nn.SiLU, "leaky_relu": lambda: nn.LeakyReLU(0.2)}


class ConvEnergy(nn.Module):
    """E(x): 3×3 conv blocks (stride 2 after the first), global average pooling, linear head.

    Arguments:
        in_channels: image channels (3 for RGB).
        channels: output channels of each conv block; each block after the first halves
            the resolution.
        activation: "silu" (JEM-style) or "leaky_relu" (slope 0.2, IGEBM / short-run).
        spectral_norm: spectral normalisation on every conv and the head.

    Example:
        >>> import torch
        >>> ConvEnergy(channels=(8, 16))(torch.zeros(2, 3, 8, 8)).shape
        torch.Size([2])
    """

    def __init__(
        self,
        in_channels: int = 3,
        channels: Sequence[int] = (64, 128, 256, 256),
        activation: str = "silu",
        spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r}; choose one of {sorted(_ACTIVATIONS)}"
            )
        if not channels or min(channels) < 1:
            raise ValueError(f"channels must be positive widths, got {tuple(channels)}")
        wrap = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        layers: list[nn.Module] = []
        width_in = in_channels
        for index, width in enumerate(channels):
            stride = 1 if index == 0 else 2
            layers += [
                wrap(nn.Conv2d(width_in, width, 3, stride=stride, padding=1)),
                _ACTIVATIONS[activation](),
            ]
            width_in = width
        self.features = nn.Sequential(*layers)
        self.head = wrap(nn.Linear(width_in, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean(dim=(2, 3))).squeeze(-1)
