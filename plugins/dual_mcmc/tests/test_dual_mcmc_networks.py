"""Dual-MCMC networks: shapes through the registry, output ranges, gradients to every parameter,
the init, spectral norm without biases on the energy, and errors that name the binding."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

import ebmkit
from ebmkit import Registry
from ebmkit_dual_mcmc.energy import DualResNetEnergy, register_energies
from ebmkit_dual_mcmc.networks import (
    GeneratorMLP,
    GeneratorResNet32,
    GeneratorResNet64,
    InferenceConv32,
    InferenceConv64,
    InferenceMLP,
)

# (registered name, class, tiny settings, the latent size)
GENERATORS: list[tuple[str, type[nn.Module], dict[str, Any]]] = [
    ("MLP", GeneratorMLP, {"latent_dim": 4, "output_shape": (1, 8, 8), "hidden": (16, 16)}),
    ("ResNet32", GeneratorResNet32, {"latent_dim": 4, "channels": 8}),
    ("ResNet64", GeneratorResNet64, {"latent_dim": 4, "channels": 16}),
]
INFERENCE_MODELS: list[tuple[str, type[nn.Module], dict[str, Any]]] = [
    ("MLP", InferenceMLP, {"latent_dim": 4, "input_shape": (1, 8, 8), "hidden": (16,)}),
    ("Conv32", InferenceConv32, {"latent_dim": 4, "channels": 4}),
    ("Conv64", InferenceConv64, {"latent_dim": 4, "channels": 4}),
]
ENERGIES: list[tuple[dict[str, Any], tuple[int, ...]]] = [
    ({"channels": 8}, (3, 32, 32)),
    ({"widths": (4, 8, 8, 16, 16), "down_blocks": 5, "plain_blocks": 1}, (3, 64, 64)),
    ({"in_channels": 1, "channels": 4, "down_blocks": 1, "plain_blocks": 0}, (1, 8, 8)),
]


def _assert_every_parameter_has_a_gradient(module: nn.Module) -> None:
    missing = [name for name, p in module.named_parameters() if p.grad is None]
    assert not missing, f"no gradient reached {missing}"
    assert all(torch.isfinite(p.grad).all() for p in module.parameters())


@pytest.mark.parametrize(("name", "cls", "settings"), GENERATORS, ids=[g[0] for g in GENERATORS])
def test_generator_built_by_name_maps_z_to_output_shape_and_trains_every_parameter(
    name: str, cls: type[nn.Module], settings: dict[str, Any]
) -> None:
    torch.manual_seed(0)
    generator = ebmkit.get_registry().create("generator", name, **settings)
    assert type(generator) is cls
    z = torch.randn(3, generator.latent_dim)
    x = generator(z)
    assert x.shape == (3, *generator.output_shape)
    assert torch.isfinite(x).all()
    x.square().sum().backward()
    _assert_every_parameter_has_a_gradient(generator)


def test_image_generators_give_their_documented_sizes() -> None:
    assert GeneratorResNet32(latent_dim=4, channels=8).output_shape == (3, 32, 32)
    assert GeneratorResNet64(latent_dim=4, channels=16, out_channels=1).output_shape == (1, 64, 64)


@pytest.mark.parametrize(
    ("name", "cls", "settings"), INFERENCE_MODELS, ids=[i[0] for i in INFERENCE_MODELS]
)
def test_inference_model_built_by_name_gives_mean_and_log_var_and_trains_every_parameter(
    name: str, cls: type[nn.Module], settings: dict[str, Any]
) -> None:
    torch.manual_seed(0)
    model = ebmkit.get_registry().create("inference_model", name, **settings)
    assert type(model) is cls
    mean, log_var = model(torch.randn(3, *model.input_shape))
    assert mean.shape == log_var.shape == (3, model.latent_dim)
    (mean.square().sum() + log_var.exp().sum()).backward()
    _assert_every_parameter_has_a_gradient(model)


def test_inference_log_var_is_unclamped() -> None:
    model = InferenceMLP(input_shape=(2,), latent_dim=2, hidden=(8,))
    with torch.no_grad():
        model.net[-1].bias.fill_(-50.0)
    _, log_var = model(torch.zeros(3, 2))
    assert (log_var < -40).all()


@pytest.mark.parametrize(("settings", "shape"), ENERGIES)
def test_energy_gives_one_number_per_sample_and_trains_every_parameter(
    settings: dict[str, Any], shape: tuple[int, ...]
) -> None:
    torch.manual_seed(0)
    energy = DualResNetEnergy(**settings)
    x = torch.randn(3, *shape, requires_grad=True)
    out = energy(x)
    assert out.shape == (3,)
    out.sum().backward()
    _assert_every_parameter_has_a_gradient(energy)
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_energy_has_no_biases_and_spectral_norm_on_every_conv_and_linear() -> None:
    energy = DualResNetEnergy(channels=8, down_blocks=2, plain_blocks=2)
    layers = [m for m in energy.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) == 2 * 4 + 2 + 1  # two convs per block, two shortcuts, the head
    for layer in layers:
        assert layer.bias is None
        assert nn.utils.parametrize.is_parametrized(layer, "weight")
        assert "spectral" in type(layer.parametrizations.weight[0]).__name__.lower()
    assert not any("bias" in name for name, _ in energy.named_parameters())


def test_energy_with_the_default_channels_has_the_papers_parameter_count() -> None:
    # 512 channels: two 3×3 convs per block (4 blocks), 1×1 shortcuts in the 2 down-blocks,
    # the first conv from 3 channels, and the 512 → 1 head; no biases.
    c = 512
    expected = (3 * c * 9 + c * c * 9) + 3 * (2 * c * c * 9) + (3 * c + c * c) + c
    energy = DualResNetEnergy()
    assert sum(p.numel() for p in energy.parameters()) == expected


def test_register_energies_adds_dual_resnet_as_a_gin_energy() -> None:
    registry = Registry()  # a fresh one: the process-wide registry stays as plugin.py made it
    registry.add_kind("energy", plural="energies")
    register_energies(registry)
    found = registry.get("energy", "DualResNet")
    assert found.factory is DualResNetEnergy
    assert found.gin_name == "energies.DualResNet"


def test_tanh_outputs_stay_in_the_unit_interval_and_linear_ones_can_leave_it() -> None:
    torch.manual_seed(0)
    z = torch.randn(3, 4) * 10
    for generator in [
        GeneratorResNet32(latent_dim=4, channels=8),
        GeneratorMLP(latent_dim=4, output_shape=(2,), hidden=(8,), output="tanh"),
    ]:
        x = generator(z)
        assert x.abs().max() <= 1.0
    linear = GeneratorMLP(latent_dim=4, output_shape=(2,), hidden=(8,), output="linear")
    tanh = GeneratorMLP(latent_dim=4, output_shape=(2,), hidden=(8,), output="tanh")
    with torch.no_grad():
        for generator in (linear, tanh):
            generator.net[-1].weight.mul_(100.0)
    assert linear(z).abs().max() > 1.0
    assert tanh(z).abs().max() <= 1.0


def _xavier_std(conv: nn.Conv2d) -> float:
    receptive = conv.weight[0, 0].numel()
    fan_in, fan_out = conv.in_channels * receptive, conv.out_channels * receptive
    return math.sqrt(2.0 / (fan_in + fan_out))


@pytest.mark.parametrize(
    "network",
    [
        lambda: GeneratorResNet32(latent_dim=4, channels=64),
        lambda: GeneratorResNet64(latent_dim=4, channels=256),
        lambda: InferenceConv32(latent_dim=4, channels=16),
        lambda: InferenceConv64(latent_dim=4, channels=8),
    ],
    ids=["ResNet32", "ResNet64", "Conv32", "Conv64"],
)
def test_conv_weights_are_xavier_normal_and_batchnorm_scales_are_standard_normal(
    network: Any,
) -> None:
    torch.manual_seed(0)
    net = network()
    big = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.weight.numel() >= 4000]
    assert big
    for conv in big:
        std = conv.weight.std().item()
        assert abs(std / _xavier_std(conv) - 1) < 0.15, (conv, std, _xavier_std(conv))
        assert abs(conv.weight.mean().item()) < 0.15 * _xavier_std(conv)
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    if norms:
        gammas = torch.cat([m.weight.detach() for m in norms])
        assert 0.7 < gammas.std().item() < 1.3 and abs(gammas.mean().item()) < 0.3
        assert all((m.bias == 0).all() for m in norms)


def test_xavier_check_rejects_the_pytorch_default_init() -> None:
    conv = nn.Conv2d(64, 64, 3)  # kaiming_uniform(a=√5): std 1/√(3·fan_in), not Xavier's
    assert abs(conv.weight.std().item() / _xavier_std(conv) - 1) > 0.15


@pytest.mark.parametrize(
    ("build", "argument", "value", "allowed"),
    [
        (lambda: GeneratorMLP(output="sigmoid"), "output", "'sigmoid'", "['linear', 'tanh']"),
        (lambda: GeneratorMLP(activation="gelu"), "activation", "'gelu'", "'silu'"),
        (lambda: InferenceMLP(activation="tanh"), "activation", "'tanh'", "'leaky_relu'"),
        (lambda: GeneratorMLP(latent_dim=0), "latent_dim", "0", ">= 1"),
        (lambda: GeneratorMLP(output_shape=()), "output_shape", "()", ">= 1"),
        (lambda: InferenceMLP(hidden=(8, 0)), "hidden", "0", ">= 1"),
        (lambda: GeneratorResNet32(latent_dim=0), "latent_dim", "0", ">= 1"),
        (lambda: GeneratorResNet64(channels=8), "channels", "8", ">= 16"),
        (lambda: InferenceConv32(channels=-1), "channels", "-1", ">= 1"),
        (lambda: InferenceConv64(latent_dim=0), "latent_dim", "0", ">= 1"),
        (lambda: DualResNetEnergy(down_blocks=0), "down_blocks", "0", ">= 1"),
        (lambda: DualResNetEnergy(widths=(8, 16, 32)), "widths", "(8, 16, 32)", "down_blocks"),
    ],
)
def test_bad_arguments_name_the_argument_the_value_and_what_is_allowed(
    build: Any, argument: str, value: str, allowed: str
) -> None:
    with pytest.raises(ValueError) as caught:
        build()
    message = str(caught.value)
    assert f"{argument}={value}" in message
    assert allowed in message


def test_ebmkit_plugins_lists_every_generator_and_inference_model() -> None:
    registry = ebmkit.get_registry()
    info = registry.plugins["dual_mcmc"]
    assert info.ok
    gin_names = {c.gin_name: c.plugin for c in registry.components()}
    for gin_name in [
        "generators.MLP",
        "generators.ResNet32",
        "generators.ResNet64",
        "inference_models.MLP",
        "inference_models.Conv32",
        "inference_models.Conv64",
    ]:
        assert gin_names.get(gin_name) == "dual_mcmc", gin_name


def test_gin_builds_a_generator_by_its_configurable_name() -> None:
    import gin

    ebmkit.get_registry()
    gin.clear_config()
    try:
        gin.parse_config(
            "generators.MLP.latent_dim = 3\n"
            "generators.MLP.output_shape = (1, 8, 8)\n"
            'generators.MLP.output = "tanh"\n',
            skip_unknown=False,
        )
        generator = gin.get_configurable("generators.MLP")()
        assert isinstance(generator, GeneratorMLP)
        assert generator(torch.zeros(3, 3)).shape == (3, 1, 8, 8)
        assert generator.output == "tanh"
    finally:
        gin.clear_config()
