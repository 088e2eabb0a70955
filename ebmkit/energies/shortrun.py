r"""The short-run EBM ConvNet (Nijkamp et al. 2019), also the network of the STANLEY image code."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["ShortRunConvNet"]


class ShortRunConvNet(nn.Module):
    """E(x) for 32×32 images: five convolutions with LeakyReLU, one number per image.

    Layers (n_f = 64 in the reference code), spatial size in brackets for a 32×32 input:
    conv3×3 s1 p1 (C→n_f) [32] → conv4×4 s2 p1 (n_f→2n_f) [16] → conv4×4 s2 p1 (2n_f→4n_f)
    [8] → conv4×4 s2 p1 (4n_f→8n_f) [4] → conv4×4 s1 p0 (8n_f→1) [1], LeakyReLU after each
    but the last. The reference code's network is f = −E; its last layer is linear and its
    initialisation symmetric, so using the network's output as E is the same model.

    Arguments:
        n_f: base width (64 in the reference code).
        in_channels: image channels (3 for RGB).
        negative_slope: LeakyReLU slope (0.2 in the reference code).

    References:
        Nijkamp, Hill, Zhu, Wu (2019), Learning non-convergent non-persistent short-run MCMC
        toward energy-based model, NeurIPS.

    Example:
        >>> import torch
        >>> ShortRunConvNet(n_f=4)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2])
    """

    def __init__(self, n_f: int = 64, in_channels: int = 3, negative_slope: float = 0.2) -> None:
        super().__init__()
        if n_f < 1 or in_channels < 1:
            raise ValueError(
                f"ShortRunConvNet needs n_f >= 1 and in_channels >= 1, got n_f={n_f}, "
                f"in_channels={in_channels}"
            )
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, n_f, 3, 1, 1),
            nn.LeakyReLU(negative_slope),
            nn.Conv2d(n_f, n_f * 2, 4, 2, 1),
            nn.LeakyReLU(negative_slope),
            nn.Conv2d(n_f * 2, n_f * 4, 4, 2, 1),
            nn.LeakyReLU(negative_slope),
            nn.Conv2d(n_f * 4, n_f * 8, 4, 2, 1),
            nn.LeakyReLU(negative_slope),
            nn.Conv2d(n_f * 8, 1, 4, 1, 0),
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[-2:] != (32, 32):
            raise ValueError(
                f"ShortRunConvNet takes (B, C, 32, 32) images, got shape {tuple(x.shape)}; "
                f"resize the data (datasets.<Name>.image_size = 32) or use energies.ResNet, "
                f"which takes any size"
            )
        return self.net(x).flatten(1).squeeze(1)
