r"""A fully connected energy for vectors (toy 2-D sets, tabular data)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["MLPEnergy"]


class MLPEnergy(nn.Module):
    """E(x) = MLP(x): Linear → SiLU blocks → Linear to one number per sample.

    Arguments:
        in_features: dimension of x (2 for the toy sets).
        hidden: widths of the hidden layers.
        spectral_norm: wrap every Linear in spectral normalisation (a Lipschitz bound that
            keeps the energy smooth, as in JEM-style training).

    Example:
        >>> import torch
        >>> MLPEnergy(in_features=2, hidden=(16, 16))(torch.zeros(5, 2)).shape
        torch.Size([5])
    """

    def __init__(
        self,
        in_features: int = 2,
        hidden: Sequence[int] = (128, 128, 128),
        spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        if in_features < 1 or not hidden or min(hidden) < 1:
            raise ValueError(
                f"MLPEnergy needs in_features >= 1 and positive hidden widths, got "
                f"in_features={in_features}, hidden={tuple(hidden)}"
            )
        widths = [in_features, *hidden]
        layers: list[nn.Module] = []
        for width_in, width_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [_linear(width_in, width_out, spectral_norm), nn.SiLU()]
        layers.append(_linear(widths[-1], 1, spectral_norm))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1)).squeeze(-1)


def _linear(width_in: int, width_out: int, spectral_norm: bool) -> nn.Module:
    layer = nn.Linear(width_in, width_out)
    return nn.utils.parametrizations.spectral_norm(layer) if spectral_norm else layer
