r"""scikit-learn's 8×8 handwritten digits as an image set: real images with no download."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ebmkit.data.images import ImageDataset
from ebmkit.errors import EbmkitError

__all__ = ["digits"]


class _TensorImages(Dataset):
    """(image, label) items from a float tensor already in [−1, 1]."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.labels[index])


def digits(
    image_size: int = 8,
    padding: int = 0,
    channels: int = 1,
    interpolation: str = "bilinear",
    dequantize_std: float = 0.0,
) -> ImageDataset:
    """scikit-learn's 1797 handwritten 8×8 digits (shipped with sklearn, nothing to download).

    Grey levels 0..16 become [−1, 1]; the images are resized to `image_size`, then padded
    with `padding` pixels of background (−1) on every side, e.g. image_size=28, padding=2
    for 32×32.

    Arguments:
        image_size: side after resizing (8: as shipped).
        padding: background pixels added on each side after resizing.
        channels: 1, or 3 to repeat the gray level.
        interpolation: "bilinear" or "nearest" (for resizing).
        dequantize_std: σ of Gaussian noise added to each item.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise EbmkitError(
            "datasets.Digits needs scikit-learn: pip install scikit-learn"
        ) from error
    if channels not in (1, 3) or image_size < 1 or padding < 0:
        raise ValueError(
            f"Digits needs channels 1 or 3, image_size >= 1 and padding >= 0; got "
            f"channels={channels}, image_size={image_size}, padding={padding}"
        )
    if interpolation not in ("bilinear", "nearest"):
        raise ValueError(f"interpolation must be 'bilinear' or 'nearest', got {interpolation!r}")
    images, labels = load_digits(return_X_y=True)
    x = torch.as_tensor(images, dtype=torch.float32).view(-1, 1, 8, 8) / 16 * 2 - 1
    if image_size != 8:
        align = {"align_corners": False} if interpolation == "bilinear" else {}
        x = torch.nn.functional.interpolate(x, size=image_size, mode=interpolation, **align)
        x = x.clamp(-1, 1)
    if padding:
        x = torch.nn.functional.pad(x, (padding,) * 4, value=-1.0)
    x = x.expand(-1, channels, -1, -1).contiguous()
    return ImageDataset(
        _TensorImages(x, torch.as_tensor(labels)),
        dequantize_std=dequantize_std,
        name=f"Digits-{image_size + 2 * padding}px",
    )
