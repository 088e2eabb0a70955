"""ToyNet, the authors' toy network: shape, gradients, the 1×1-conv reference, the registry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ebmkit
from ebmkit_stanley import ToyNet


def conv_reference(n_f: int = 32, leak: float = 0.05) -> nn.Sequential:
    """The reference network as written there: 1×1 convolutions on (B, 2, 1, 1) points."""
    return nn.Sequential(
        nn.Conv2d(2, n_f, 1, 1, 0),
        nn.LeakyReLU(leak),
        nn.Conv2d(n_f, n_f * 2, 1, 1, 0),
        nn.LeakyReLU(leak),
        nn.Conv2d(n_f * 2, n_f * 2, 1, 1, 0),
        nn.LeakyReLU(leak),
        nn.Conv2d(n_f * 2, n_f * 2, 1, 1, 0),
        nn.LeakyReLU(leak),
        nn.Conv2d(n_f * 2, 1, 1, 1, 0),
    )


def test_maps_points_to_one_energy_each() -> None:
    net = ToyNet()
    assert net(torch.zeros(7, 2)).shape == (7,)
    assert net(torch.zeros(7, 2, 1, 1)).shape == (7,)  # the reference's point layout
    assert net(torch.zeros(1, 2)).shape == (1,)
    widths = [(m.in_features, m.out_features) for m in net.modules() if isinstance(m, nn.Linear)]
    assert widths == [(2, 32), (32, 64), (64, 64), (64, 64), (64, 1)]
    slopes = {m.negative_slope for m in net.modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.05}


def test_a_gradient_reaches_every_parameter_and_the_input() -> None:
    torch.manual_seed(0)
    net = ToyNet(temperature=0.005)
    x = torch.randn(16, 2, requires_grad=True)
    net(x).sum().backward()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum() > 0, name
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_equals_the_one_by_one_conv_network_with_the_same_weights() -> None:
    """Weights copied from the conv reference: same energies on a fixed input (float64)."""
    torch.manual_seed(1)
    reference = conv_reference().double()
    net = ToyNet().double()
    convs = [m for m in reference if isinstance(m, nn.Conv2d)]
    linears = [m for m in net.net if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for conv, linear in zip(convs, linears, strict=True):
            linear.weight.copy_(conv.weight[:, :, 0, 0])
            linear.bias.copy_(conv.bias)
    x = torch.linspace(-4.0, 4.0, 2 * 50, dtype=torch.float64).reshape(50, 2)
    expected = reference(x[:, :, None, None]).squeeze()
    torch.testing.assert_close(net(x), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(net(x[:, :, None, None]), expected, rtol=1e-12, atol=1e-12)


def test_a_seeded_net_starts_where_the_seeded_reference_starts() -> None:
    """Linear and 1×1 Conv2d draw their default initialisation identically from the stream."""
    torch.manual_seed(123)  # the reference config's seed
    reference = conv_reference()
    torch.manual_seed(123)
    net = ToyNet()
    convs = [m for m in reference if isinstance(m, nn.Conv2d)]
    linears = [m for m in net.net if isinstance(m, nn.Linear)]
    for conv, linear in zip(convs, linears, strict=True):
        assert torch.equal(linear.weight, conv.weight[:, :, 0, 0])
        assert torch.equal(linear.bias, conv.bias)


def test_temperature_divides_the_output() -> None:
    torch.manual_seed(2)
    cold = ToyNet(temperature=0.005)
    plain = ToyNet()
    plain.load_state_dict(cold.state_dict())
    x = torch.randn(9, 2)
    torch.testing.assert_close(cold(x), plain(x) / 0.005)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"n_f": 0}, "n_f"),
    ],
)
def test_bad_settings_name_the_binding(settings: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ToyNet(**settings)


def test_registered_as_an_energy_of_the_stanley_plugin() -> None:
    found = ebmkit.get_registry().get("energy", "ToyNet")
    assert found.factory is ToyNet
    assert found.plugin == "stanley"
    assert found.gin_name == "energies.ToyNet"
