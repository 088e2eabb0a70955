r"""The built-in plugin: registers the core's components through the same hook as any plugin."""

from __future__ import annotations

from ebmkit.data.toy import TOY_DATASETS
from ebmkit.energies.conv import ConvEnergy
from ebmkit.energies.mlp import MLPEnergy
from ebmkit.hookspecs import hookimpl
from ebmkit.initializers.data import Data
from ebmkit.initializers.noise import Noise
from ebmkit.initializers.replay import Replay
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
