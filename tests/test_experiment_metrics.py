"""`experiment.metrics`: runs compute the metrics a config names, beside the core toy metrics."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from ebmkit.runs.experiment import Experiment
from ebmkit.runs.observer import named_metrics

pytestmark = pytest.mark.usefixtures("builtin_registry")


def _round_and_trainer() -> tuple[SimpleNamespace, SimpleNamespace]:
    from ebmkit.data.toy import EightGaussians

    dataset = EightGaussians(n_samples=16)
    energy = torch.nn.Linear(2, 1)
    trainer = SimpleNamespace(energy=energy, dataset=dataset, device="cpu")
    samples = dataset.sample(64, torch.Generator().manual_seed(0))
    round = SimpleNamespace(index=3, result=SimpleNamespace(x=samples))
    return trainer, round


def test_callables_get_the_arguments_their_signature_names() -> None:
    trainer, round = _round_and_trainer()
    seen = {}

    def by_samples(samples, dataset, scale=2.0):
        seen["samples"] = samples
        return scale * samples.shape[0] + (dataset is trainer.dataset)

    def by_energy(energy, generator):
        seen["grad"] = torch.is_grad_enabled()
        return float(energy(torch.zeros(1, 2)).sum()) + 0 * generator.initial_seed()

    values = named_metrics({"a": by_samples, "b": by_energy}, trainer, round)
    assert values["a"] == 129.0
    assert values["b"] == pytest.approx(trainer.energy.bias.item())
    assert seen["samples"].device.type == "cpu"
    assert seen["grad"] is False


def test_registered_names_are_looked_up_and_the_rng_is_untouched() -> None:
    trainer, round = _round_and_trainer()
    state = torch.get_rng_state()
    values = named_metrics(["grid_kl"], trainer, round)
    assert torch.equal(state, torch.get_rng_state())
    from ebmkit.metrics.toy import grid_kl

    assert values == {"grid_kl": grid_kl(trainer.energy, trainer.dataset)}


def test_a_metric_asking_for_something_else_is_refused_by_name() -> None:
    trainer, round = _round_and_trainer()
    with pytest.raises(TypeError, match="'x' is none of"):
        named_metrics({"mmd": lambda x, y: 0.0}, trainer, round)
    with pytest.raises(TypeError, match="mapping name"):
        named_metrics("grid_kl", trainer, round)


def test_the_default_names_no_metric() -> None:
    assert Experiment(trainer=object()).metrics == {}
