r"""The built-in plugin: registers the core's components through the same hook as any plugin."""

from __future__ import annotations

import torch

import gin
from ebmkit.data import images
from ebmkit.data.digits import digits
from ebmkit.data.toy import TOY_DATASETS
from ebmkit.energies.conv import ConvEnergy
from ebmkit.energies.mlp import MLPEnergy
from ebmkit.energies.resnet import ResNetEnergy
from ebmkit.energies.shortrun import ShortRunConvNet
from ebmkit.hookspecs import hookimpl
from ebmkit.initializers.data import Data
from ebmkit.initializers.noise import Noise
from ebmkit.initializers.replay import Replay
from ebmkit.metrics import fid as fid_metric
from ebmkit.metrics import toy as toy_metrics
from ebmkit.registry import Registry
from ebmkit.samplers.langevin import Langevin
from ebmkit.samplers.mala import MALA
from ebmkit.trainers.contrastive import Contrastive


@hookimpl
def ebmkit_register(registry: Registry) -> None:
    """Langevin/MALA, Noise/Data/Replay, MLP/Conv energies, the toy sets and toy metrics."""
    registry.add("sampler", "Langevin", Langevin)
    registry.add("sampler", "MALA", MALA)
    registry.add("initializer", "Noise", Noise)
    registry.add("initializer", "Data", Data)
    registry.add("initializer", "Replay", Replay)
    registry.add("energy", "MLP", MLPEnergy)
    registry.add("energy", "Conv", ConvEnergy)
    registry.add("trainer", "Contrastive", Contrastive)
    for name, dataset in TOY_DATASETS.items():
        registry.add("dataset", name, dataset)
    registry.add("metric", "grid_kl", toy_metrics.grid_kl)
    registry.add("metric", "mmd", toy_metrics.mmd)
    registry.add("metric", "sliced_wasserstein", toy_metrics.sliced_wasserstein)
    registry.add("metric", "mode_weights", toy_metrics.mode_weights)
    registry.add("metric", "log_likelihood", toy_metrics.log_likelihood)
    _register_images(registry)


def auto_device() -> str:
    """The device to use: "cuda" when a GPU is visible, else "cpu".

    A gin configurable, not a component: `DEVICE = @ebmkit.auto_device()`.
    """
    return "cuda" if torch.cuda.is_available() else "cpu"


# A plain gin configurable (not a component): module-level code runs once per process.
gin.external_configurable(auto_device, name="auto_device", module="ebmkit")

IMAGE_DATASETS = {
    "CIFAR10": images.cifar10,
    "SVHN": images.svhn,
    "CelebA": images.celeba,
    "Flowers102": images.flowers102,
    "MNIST": images.mnist,
    "ImageFolder": images.image_folder,
    "Digits": digits,
}


def _register_images(registry: Registry) -> None:
    """The image side: image sets from a local root, image energies, FID."""
    for name, factory in IMAGE_DATASETS.items():
        registry.add("dataset", name, factory)
    registry.add("energy", "ShortRunConvNet", ShortRunConvNet)
    registry.add("energy", "ResNet", ResNetEnergy)
    registry.add("metric", "fid", fid_metric.fid)
