r"""Generators g(z) and inference models q(z|x) of Dual-MCMC teaching (Cui & Han, 2023).

A generator maps z (B, latent_dim) to x (B, *output_shape) with no observation noise (the
caller adds σε); an inference model maps x (B, *input_shape) to (mean, log_var), each
(B, latent_dim), the second an unclamped log-variance (callers clamp when asked).

References:
    Cui & Han (2023), Learning energy-based model via dual-MCMC teaching. NeurIPS 2023.
    Miyato et al. (2018), Spectral normalization for generative adversarial networks (SNGAN).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import pairwise

import torch
from torch import Tensor, nn
from torch.nn import functional

from ebmkit import Registry

__all__ = [
    "GeneratorMLP",
    "GeneratorResNet32",
    "GeneratorResNet64",
    "InferenceConv32",
    "InferenceConv64",
    "InferenceMLP",
    "UpBlock",
    "init_dual_mcmc",
    "register_networks",
]

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "silu": nn.SiLU,
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
}
_OUTPUTS = ("linear", "tanh")


def _check_positive(owner: str, argument: str, value: int) -> None:
    """Refuse a width or dimension below 1, naming the binding."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"{owner}: {argument}={value!r} is not allowed; it must be an integer >= 1 "
            f"(binding {owner}.{argument})"
        )


def _check_shape(owner: str, argument: str, shape: Sequence[int]) -> tuple[int, ...]:
    """A shape as a tuple of positive ints, or a ValueError naming the binding."""
    shape = tuple(shape)
    if not shape or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(
            f"{owner}: {argument}={shape!r} is not allowed; it must be a non-empty tuple of "
            f"integers >= 1 (binding {owner}.{argument})"
        )
    return shape


def _check_choice(owner: str, argument: str, value: str, allowed: Sequence[str]) -> None:
    """Refuse a name outside `allowed`, listing the allowed values."""
    if value not in allowed:
        raise ValueError(
            f"{owner}: {argument}={value!r} is not known; choose one of {sorted(allowed)} "
            f"(binding {owner}.{argument})"
        )


def _mlp(
    owner: str, width_in: int, hidden: Sequence[int], width_out: int, activation: str
) -> nn.Sequential:
    """Linear → activation blocks through `hidden`, then a final Linear to `width_out`."""
    _check_choice(owner, "activation", activation, tuple(_ACTIVATIONS))
    hidden = tuple(hidden)
    for width in hidden:
        _check_positive(owner, "hidden", width)
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(width_in, width), _ACTIVATIONS[activation]()]
        width_in = width
    layers.append(nn.Linear(width_in, width_out))
    return nn.Sequential(*layers)


def init_dual_mcmc(module: nn.Module) -> None:
    """The released code's init: xavier_normal_ on conv weights, BatchNorm γ ~ N(0, 1), β = 0.

    Linear layers keep PyTorch's default. Use as ``net.apply(init_dual_mcmc)``.

    Example:
        >>> bn = nn.BatchNorm2d(4).apply(init_dual_mcmc)
        >>> bool((bn.bias == 0).all()), bool((bn.weight == 1).any())
        (True, False)
    """
    if isinstance(module, nn.Conv2d):
        nn.init.xavier_normal_(module.weight)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 0.0, 1.0)
        nn.init.zeros_(module.bias)


class GeneratorMLP(nn.Module):
    """g(z) = MLP(z) reshaped to `output_shape`: the toy and digits generator of the CPU run.

    Arguments:
        latent_dim: d, the size of z.
        output_shape: the shape of one sample, e.g. (2,) for 2-D toys or (1, 8, 8) for digits.
        hidden: widths of the hidden layers.
        activation: "silu", "relu" or "leaky_relu" (slope 0.2).
        output: "linear" (toy rings: tanh cannot reach points like (1, 0)) or "tanh" (data in
            [−1, 1], e.g. digits).

    Example:
        >>> import torch
        >>> generator = GeneratorMLP(latent_dim=4, output_shape=(1, 8, 8), output="tanh")
        >>> generator(torch.zeros(3, 4)).shape
        torch.Size([3, 1, 8, 8])
    """

    def __init__(
        self,
        latent_dim: int = 8,
        output_shape: Sequence[int] = (2,),
        hidden: Sequence[int] = (128, 128),
        activation: str = "silu",
        output: str = "linear",
    ) -> None:
        super().__init__()
        owner = "generators.MLP"
        _check_positive(owner, "latent_dim", latent_dim)
        _check_choice(owner, "output", output, _OUTPUTS)
        self.latent_dim = latent_dim
        self.output_shape = _check_shape(owner, "output_shape", output_shape)
        size = math.prod(self.output_shape)
        self.net = _mlp(owner, latent_dim, hidden, size, activation)
        self.output = output

    def forward(self, z: Tensor) -> Tensor:
        x = self.net(z)
        if self.output == "tanh":
            x = torch.tanh(x)
        return x.reshape(z.shape[0], *self.output_shape)


class InferenceMLP(nn.Module):
    """q(z|x) = N(mean(x), diag exp log_var(x)) from an MLP on the flattened x (toys, digits).

    Arguments:
        input_shape: the shape of one sample; x is flattened.
        latent_dim: d, the size of z.
        hidden: widths of the hidden layers.
        activation: "silu", "relu" or "leaky_relu" (slope 0.2).

    Returns (forward):
        (mean, log_var), each (B, latent_dim); the log-variance is not clamped.

    Example:
        >>> import torch
        >>> mean, log_var = InferenceMLP(input_shape=(2,), latent_dim=4)(torch.zeros(3, 2))
        >>> mean.shape, log_var.shape
        (torch.Size([3, 4]), torch.Size([3, 4]))
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (2,),
        latent_dim: int = 8,
        hidden: Sequence[int] = (128, 128),
        activation: str = "silu",
    ) -> None:
        super().__init__()
        owner = "inference_models.MLP"
        _check_positive(owner, "latent_dim", latent_dim)
        self.input_shape = _check_shape(owner, "input_shape", input_shape)
        self.latent_dim = latent_dim
        self.net = _mlp(owner, math.prod(self.input_shape), hidden, 2 * latent_dim, activation)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_var = self.net(x.flatten(1)).chunk(2, dim=1)
        return mean, log_var


class UpBlock(nn.Module):
    """Residual ×2 up-block: BN-ReLU-bilinear×2-conv3-BN-ReLU-conv3, shortcut bilinear×2 + 1×1.

    Arguments:
        in_channels, out_channels: widths before and after the block.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = _upsample(functional.relu(self.norm1(x)))
        h = self.conv2(functional.relu(self.norm2(self.conv1(h))))
        return h + self.shortcut(_upsample(x))


def _upsample(x: Tensor) -> Tensor:
    return functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class _ResNetGenerator(nn.Module):
    """Linear → 4×4×widths[0], one UpBlock per further width, BN-ReLU-conv3-tanh."""

    def __init__(
        self, owner: str, latent_dim: int, widths: Sequence[int], out_channels: int
    ) -> None:
        super().__init__()
        _check_positive(owner, "latent_dim", latent_dim)
        _check_positive(owner, "out_channels", out_channels)
        size = 4 * 2 ** (len(widths) - 1)
        self.latent_dim = latent_dim
        self.output_shape: tuple[int, ...] = (out_channels, size, size)
        self.linear = nn.Linear(latent_dim, 4 * 4 * widths[0])
        self.blocks = nn.Sequential(*(UpBlock(a, b) for a, b in pairwise(widths)))
        self.norm = nn.BatchNorm2d(widths[-1])
        self.to_image = nn.Conv2d(widths[-1], out_channels, 3, padding=1)
        self.width = widths[0]
        self.apply(init_dual_mcmc)

    def forward(self, z: Tensor) -> Tensor:
        h = self.linear(z).reshape(z.shape[0], self.width, 4, 4)
        h = functional.relu(self.norm(self.blocks(h)))
        return torch.tanh(self.to_image(h))


class GeneratorResNet32(_ResNetGenerator):
    """The paper's CIFAR-10 generator: Linear → 4×4, three residual up-blocks, conv3, tanh.

    All blocks keep `channels` (SNGAN-style, as the method file's "Linear→4×4×512, 3 up-blocks"
    reads); output (B, out_channels, 32, 32) in [−1, 1]. Init: xavier_normal_ on convs,
    BatchNorm γ ~ N(0, 1), β = 0, Linear default.

    Arguments:
        latent_dim: d, the size of z (128 in the paper).
        channels: the width of the 4×4 map and of every block.
        out_channels: image channels.

    Example:
        >>> import torch
        >>> GeneratorResNet32(latent_dim=4, channels=8)(torch.zeros(2, 4)).shape
        torch.Size([2, 3, 32, 32])
    """

    def __init__(self, latent_dim: int = 128, channels: int = 512, out_channels: int = 3) -> None:
        _check_positive("generators.ResNet32", "channels", channels)
        super().__init__("generators.ResNet32", latent_dim, (channels,) * 4, out_channels)


class GeneratorResNet64(_ResNetGenerator):
    """A 64×64 generator (CelebA): Linear → 4×4, four up-blocks halving the width, conv3, tanh.

    Our design: the released code's nets are CIFAR-only. Widths channels → channels/2 → /4 →
    /8 → /16 (1024 → 512 → 256 → 128 → 64 by default); same blocks and init as
    `GeneratorResNet32`. Output (B, out_channels, 64, 64) in [−1, 1].

    Arguments:
        latent_dim: d, the size of z.
        channels: the width of the 4×4 map; must be at least 16 (it is halved four times).
        out_channels: image channels.

    Example:
        >>> import torch
        >>> GeneratorResNet64(latent_dim=4, channels=16)(torch.zeros(2, 4)).shape
        torch.Size([2, 3, 64, 64])
    """

    def __init__(self, latent_dim: int = 128, channels: int = 1024, out_channels: int = 3) -> None:
        owner = "generators.ResNet64"
        _check_positive(owner, "channels", channels)
        if channels < 16:
            raise ValueError(
                f"{owner}: channels={channels!r} is not allowed; it is halved four times, so it "
                f"must be an integer >= 16 (binding {owner}.channels)"
            )
        widths = tuple(channels // 2**k for k in range(5))
        super().__init__(owner, latent_dim, widths, out_channels)


class _ConvInference(nn.Module):
    """conv3(→channels), stride-2 conv4 to channels·2, ·4, …, LeakyReLU 0.2, two conv4 heads."""

    def __init__(
        self, owner: str, latent_dim: int, channels: int, in_channels: int, n_down: int
    ) -> None:
        super().__init__()
        _check_positive(owner, "latent_dim", latent_dim)
        _check_positive(owner, "channels", channels)
        _check_positive(owner, "in_channels", in_channels)
        size = 4 * 2**n_down
        self.latent_dim = latent_dim
        self.input_shape: tuple[int, ...] = (in_channels, size, size)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1)]
        layers.append(nn.LeakyReLU(0.2))
        width = channels
        for _ in range(n_down):
            layers += [nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            width *= 2
        self.features = nn.Sequential(*layers)
        self.mean = nn.Conv2d(width, latent_dim, 4)
        self.log_var = nn.Conv2d(width, latent_dim, 4)
        self.apply(init_dual_mcmc)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.features(x)
        return self.mean(h).flatten(1), self.log_var(h).flatten(1)


class InferenceConv32(_ConvInference):
    """The paper's CIFAR-10 inference net: conv3, three stride-2 conv4, conv4 heads (μ, log σ²).

    Widths channels, ·2, ·4, ·8 (128/256/512/1024), LeakyReLU 0.2 after each conv; the 4×4
    map goes through two 4×4 convs to 1×1. Init: xavier_normal_ on convs.

    Arguments:
        latent_dim: d, the size of z.
        channels: the first conv's width.
        in_channels: image channels; input (B, in_channels, 32, 32).

    Returns (forward):
        (mean, log_var), each (B, latent_dim); the log-variance is not clamped.

    Example:
        >>> import torch
        >>> mean, log_var = InferenceConv32(latent_dim=4, channels=8)(torch.zeros(2, 3, 32, 32))
        >>> mean.shape, log_var.shape
        (torch.Size([2, 4]), torch.Size([2, 4]))
    """

    def __init__(self, latent_dim: int = 128, channels: int = 128, in_channels: int = 3) -> None:
        super().__init__("inference_models.Conv32", latent_dim, channels, in_channels, n_down=3)


class InferenceConv64(_ConvInference):
    """A 64×64 inference net (CelebA): conv3, four stride-2 conv4 (64→4), conv4 heads.

    Our design: the released code's nets are CIFAR-only. Widths channels, ·2, ·4, ·8, ·16; the
    default channels=64 ends at 1024 like the CIFAR net. Same init as `InferenceConv32`.

    Arguments:
        latent_dim: d, the size of z.
        channels: the first conv's width.
        in_channels: image channels; input (B, in_channels, 64, 64).

    Example:
        >>> import torch
        >>> mean, log_var = InferenceConv64(latent_dim=4, channels=4)(torch.zeros(2, 3, 64, 64))
        >>> mean.shape, log_var.shape
        (torch.Size([2, 4]), torch.Size([2, 4]))
    """

    def __init__(self, latent_dim: int = 128, channels: int = 64, in_channels: int = 3) -> None:
        super().__init__("inference_models.Conv64", latent_dim, channels, in_channels, n_down=4)


def register_networks(registry: Registry) -> None:
    """Register the generators (gin ``generators.*``) and inference models
    (gin ``inference_models.*``)."""
    registry.add("generator", "MLP", GeneratorMLP)
    registry.add("generator", "ResNet32", GeneratorResNet32)
    registry.add("generator", "ResNet64", GeneratorResNet64)
    registry.add("inference_model", "MLP", InferenceMLP)
    registry.add("inference_model", "Conv32", InferenceConv32)
    registry.add("inference_model", "Conv64", InferenceConv64)
