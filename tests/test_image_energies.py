"""Image energies: one number per image, gradients everywhere, spectral norm, save/load."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ebmkit.autograd import energy_and_grad
from ebmkit.energies.resnet import ResNetEnergy
from ebmkit.energies.shortrun import ShortRunConvNet
from ebmkit.registry import create

CASES = {
    "shortrun": (ShortRunConvNet, dict(n_f=4), (3, 32, 32)),
    "shortrun-gray": (ShortRunConvNet, dict(n_f=4, in_channels=1), (1, 32, 32)),
    "resnet-32": (ResNetEnergy, dict(widths=(8, 16, 16), blocks_per_stage=1), (3, 32, 32)),
    "resnet-16-silu-sum": (
        ResNetEnergy,
        dict(widths=(8, 16), activation="silu", pooling="sum"),
        (3, 16, 16),
    ),
    "resnet-8-gray": (ResNetEnergy, dict(in_channels=1, widths=(8, 16, 16)), (1, 8, 8)),
    "resnet-sn": (ResNetEnergy, dict(widths=(8, 16), spectral_norm=True), (3, 8, 8)),
}


def _build(name: str, seed: int) -> tuple[nn.Module, tuple[int, ...]]:
    factory, kwargs, shape = CASES[name]
    torch.manual_seed(seed)
    return factory(**kwargs), shape


@pytest.mark.parametrize("name", CASES)
def test_one_finite_energy_per_image(name):
    energy, shape = _build(name, 0)
    x = torch.rand(5, *shape) * 2 - 1
    value = energy(x)
    assert value.shape == (5,) and value.dtype == torch.float32
    assert torch.isfinite(value).all()
    # Each image's energy depends on that image only (eval: spectral norm's power iteration
    # would otherwise move between the two calls).
    energy.eval()
    torch.testing.assert_close(energy(x[2:3]), energy(x)[2:3])


@pytest.mark.parametrize("name", CASES)
def test_gradients_reach_every_parameter_and_the_input(name):
    energy, shape = _build(name, 0)
    x = torch.rand(4, *shape) * 2 - 1
    energy(x).sum().backward()
    for parameter_name, parameter in energy.named_parameters():
        assert parameter.grad is not None, parameter_name
        assert parameter.grad.abs().sum() > 0, parameter_name
    value, grad = energy_and_grad(energy, x)
    assert grad.shape == x.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("name", CASES)
def test_save_and_load_round_trip(name, tmp_path):
    energy, shape = _build(name, 0)
    x = torch.rand(3, *shape) * 2 - 1
    energy(x)  # one training-mode forward (moves spectral norm's power iteration)
    torch.save(energy.state_dict(), tmp_path / "energy.pt")
    fresh, _ = _build(name, 1)
    energy.eval(), fresh.eval()
    assert not torch.equal(fresh(x), energy(x))
    fresh.load_state_dict(torch.load(tmp_path / "energy.pt", weights_only=True))
    torch.testing.assert_close(fresh(x), energy(x), rtol=0, atol=0)


def test_short_run_convnet_matches_the_reference_layers():
    energy = ShortRunConvNet()  # n_f = 64
    convs = [m for m in energy.modules() if isinstance(m, nn.Conv2d)]
    assert [
        (c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs
    ] == [
        (3, 64, (3, 3), (1, 1), (1, 1)),
        (64, 128, (4, 4), (2, 2), (1, 1)),
        (128, 256, (4, 4), (2, 2), (1, 1)),
        (256, 512, (4, 4), (2, 2), (1, 1)),
        (512, 1, (4, 4), (1, 1), (0, 0)),
    ]
    slopes = {m.negative_slope for m in energy.modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.2}
    sizes = []
    hooks = [c.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1])) for c in convs]
    assert energy(torch.zeros(2, 3, 32, 32)).shape == (2,)
    for hook in hooks:
        hook.remove()
    assert sizes == [32, 16, 8, 4, 1]


def test_short_run_convnet_rejects_other_sizes_with_the_fix():
    with pytest.raises(ValueError, match=r"32, 32.*image_size = 32.*energies.ResNet"):
        ShortRunConvNet(n_f=4)(torch.zeros(2, 3, 64, 64))


def test_spectral_norm_parametrizes_every_layer_and_bounds_it():
    plain, _ = _build("resnet-32", 0)
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in plain.modules())
    energy, shape = _build("resnet-sn", 0)
    layers = [m for m in energy.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert layers and all(torch.nn.utils.parametrize.is_parametrized(m, "weight") for m in layers)
    x = torch.rand(2, *shape)
    for _ in range(30):  # each training-mode forward runs one power iteration
        energy(x)
    energy.eval()
    for layer in layers:
        top = torch.linalg.matrix_norm(layer.weight.flatten(1), ord=2)
        torch.testing.assert_close(top, torch.tensor(1.0), atol=0.02, rtol=0)


def test_registered_as_energies():
    assert isinstance(create("energy", "ShortRunConvNet", n_f=4), ShortRunConvNet)
    resnet = create("energy", "ResNet", widths=(4, 8), blocks_per_stage=1)
    assert isinstance(resnet, ResNetEnergy)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(activation="relu"), "unknown activation"),
        (dict(pooling="max"), "pooling"),
        (dict(widths=()), "positive widths"),
    ],
)
def test_resnet_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResNetEnergy(**kwargs)
