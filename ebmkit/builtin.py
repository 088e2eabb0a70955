r"""The built-in plugin: registers the core's components through the same hook as any plugin."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import gin
from ebmkit.commands import CommandTable
from ebmkit.data import images
from ebmkit.data.digits import digits
from ebmkit.data.toy import TOY_DATASETS
from ebmkit.density import FlowDensity, Tempered
from ebmkit.energies.conv import ConvEnergy
from ebmkit.energies.mlp import MLPEnergy
from ebmkit.energies.resnet import ResNetEnergy
from ebmkit.energies.shortrun import ShortRunConvNet
from ebmkit.energies.tempered import TemperedEnergy
from ebmkit.flows import register_flows
from ebmkit.hookspecs import hookimpl
from ebmkit.initializers.data import Data
from ebmkit.initializers.flow import Flow as FlowInitializer
from ebmkit.initializers.noise import Noise
from ebmkit.initializers.persistent import Persistent
from ebmkit.initializers.replay import Replay
from ebmkit.metrics import fid as fid_metric
from ebmkit.metrics import toy as toy_metrics
from ebmkit.registry import Registry
from ebmkit.samplers.composite import Composite
from ebmkit.samplers.langevin import Langevin
from ebmkit.samplers.mala import MALA
from ebmkit.trainers.contrastive import Contrastive

BUILTIN_KINDS = {
    "energy": ("energies", "E(x): a batch (B, ...) to energies (B,), lower is likelier"),
    "sampler": ("samplers", "Markov chains on an energy"),
    "initializer": ("initializers", "where chains start, and what they learn between rounds"),
    "trainer": ("trainers", "fits an energy (and every Learnable) round after round"),
    "dataset": ("datasets", "training data: toy 2-D sets and image sets"),
    "metric": ("metrics", "scores samples against data or an exact density"),
    "flow": ("flows", "normalizing flows: data ↔ N(0, I) with an exact (or estimated) density"),
}


@hookimpl
def ebmkit_add_kinds(registry: Registry) -> None:
    """The core's seven kinds; plugins add theirs through the same hook."""
    for kind, (plural, doc) in BUILTIN_KINDS.items():
        registry.add_kind(kind, plural=plural, doc=doc)


@hookimpl
def ebmkit_add_eval_tasks(tasks: CommandTable) -> None:
    """`ebmkit eval fid`."""
    tasks.add(
        "fid",
        help="Fréchet Inception Distance between two image sets",
        configure_parser=_fid_parser,
        run=_run_fid,
    )


def _fid_parser(parser: argparse.ArgumentParser) -> None:
    """The flags of `ebmkit eval fid`."""
    parser.add_argument(
        "--samples", required=True, help="a folder of images or an .npz of (mu, sigma)"
    )
    parser.add_argument(
        "--reference", required=True, help="a folder of images or an .npz of (mu, sigma)"
    )
    parser.add_argument("--dims", type=int, default=2048, help="64 | 192 | 768 | 2048 (default)")
    parser.add_argument(
        "--fid-weights",
        help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth (default: "
        "$EBMKIT_FID_WEIGHTS, else torch's hub cache)",
    )
    parser.add_argument(
        "--random-weights", action="store_true", help="untrained network (tests only)"
    )
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--save-stats", type=Path, help="also write the samples' (mu, sigma) .npz")


def _run_fid(args: argparse.Namespace) -> None:
    """Print the FID summary of `ebmkit eval fid` as JSON."""
    summary = fid_metric.fid_between_paths(
        args.samples,
        args.reference,
        dims=args.dims,
        weights=args.fid_weights,
        random_weights=args.random_weights,
        batch_size=args.batch_size,
        device=args.device,
        save_samples_stats=args.save_stats,
    )
    print(json.dumps(summary, indent=2))


@hookimpl
def ebmkit_register(registry: Registry) -> None:
    """Langevin/MALA, Noise/Data/Replay, MLP/Conv energies, the toy sets and toy metrics."""
    registry.add("sampler", "Langevin", Langevin)
    registry.add("sampler", "MALA", MALA)
    registry.add("initializer", "Noise", Noise)
    registry.add("initializer", "Data", Data)
    registry.add("initializer", "Replay", Replay)
    registry.add("initializer", "Persistent", Persistent)
    registry.add("initializer", "Flow", FlowInitializer)
    register_flows(registry)
    registry.add("sampler", "Composite", Composite)
    registry.add("energy", "MLP", MLPEnergy)
    registry.add("energy", "Conv", ConvEnergy)
    registry.add("energy", "Tempered", TemperedEnergy)
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


# Plain gin configurables (not components): module-level code runs once per process.
gin.external_configurable(auto_device, name="auto_device", module="ebmkit")
# The model densities a run may be scored on (`trainers.Contrastive.model_density`):
# `@ebmkit.Tempered()` for E/T, `@ebmkit.FlowDensity()` for a flow-only baseline's −log q.
gin.external_configurable(Tempered, name="Tempered", module="ebmkit")
gin.external_configurable(FlowDensity, name="FlowDensity", module="ebmkit")

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
