"""Any sampler × any initializer: the composability matrix, read from the registry, and the
compatibility convention (`check_compatible`, shape-aware `testing_cases(shape)`).

The matrix is `ebmkit.testing.matrix`: every registered sampler's first case × every
registered initializer's case for the shape (`initializers.Flow` once per registered flow),
on a 2-D toy energy and on a (3, 8, 8) image energy, each pair trained two rounds, saved,
resumed and its round 2 compared bit for bit; or refused by a component, with its reason.
A new plugin's components are pairs here without editing this file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import torch
from helpers import run_cli, write_lines

from ebmkit.compatibility import IncompatibleError, check_compatible, data_shape
from ebmkit.flows import Affine, ElementwiseAffine, Glow
from ebmkit.initializers.flow import Flow
from ebmkit.initializers.noise import Noise
from ebmkit.initializers.persistent import Persistent
from ebmkit.initializers.replay import Replay
from ebmkit.registry import get_registry
from ebmkit.samplers.composite import Composite
from ebmkit.samplers.mala import MALA
from ebmkit.testing import (
    RegisteredShapeCase,
    ShapeCase,
    check_flow_invertible,
    check_flow_sampling_reproducible,
    registered_flow_shape_cases,
    registered_initializer_cases,
)
from ebmkit.testing.matrix import (
    BATCH_SIZE,
    MEASURED_PREFIX,
    SHAPES,
    MatrixPair,
    matrix_pairs,
    planned_outcome,
    render_table,
    run_pair,
    toy_dataset,
    toy_energy,
)
from ebmkit.trainers.contrastive import Contrastive

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "docs" / "composability.md"
TOY_GIN = ROOT / "gin" / "base" / "toy.gin"

pytestmark = pytest.mark.usefixtures("builtin_registry")

PAIRS = matrix_pairs()


# -- the matrix ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("pair", PAIRS, ids=[pair.id for pair in PAIRS])
def test_every_pair_trains_saves_and_resumes_or_is_refused_with_a_reason(
    pair: MatrixPair, tmp_path: Path
) -> None:
    outcome = run_pair(pair, tmp_path)
    if outcome.status == "refused":
        assert outcome.reason and len(outcome.reason) > 20, outcome
    else:
        assert outcome.status == "ran"


def test_the_matrix_covers_every_registered_sampler_initializer_and_flow() -> None:
    registry = get_registry()
    samplers = {component.name for component in registry.components("sampler")}
    initializers = {component.name for component in registry.components("initializer")}
    flows = {component.name for component in registry.components("flow")}
    assert {pair.sampler.sampler for pair in PAIRS} == samplers
    assert {pair.initializer.component for pair in PAIRS} == initializers
    for shape_name in SHAPES:
        over_flows = {
            pair.initializer.name
            for pair in PAIRS
            if pair.shape_name == shape_name and pair.initializer.component == "Flow"
        }
        assert over_flows == flows, shape_name
    assert {"CPFlow", "Glow"} <= flows  # the matrix reaches the plugins' flows and the core's


def test_the_committed_table_is_what_the_registry_gives_now() -> None:
    """Pair names, outcomes and refusal reasons (building each trainer, no training): a
    component added, removed or newly refusing makes docs/composability.md stale here;
    `python scripts/composability_table.py` regenerates it (and trains every pair)."""
    energies = {name: toy_energy(shape) for name, shape in SHAPES.items()}
    expected = render_table([planned_outcome(p, energies[p.shape_name]) for p in PAIRS])
    committed = "\n".join(
        line for line in TABLE.read_text().splitlines() if not line.startswith(MEASURED_PREFIX)
    )
    expected = "\n".join(
        line for line in expected.splitlines() if not line.startswith(MEASURED_PREFIX)
    )
    assert committed.split() == expected.split(), (
        "docs/composability.md is stale: run `python scripts/composability_table.py`"
    )


def test_the_table_counts_and_explains_each_refusal() -> None:
    pairs = [p for p in PAIRS if p.initializer.refused is not None][:1]
    refused = planned_outcome(pairs[0])
    text = render_table([refused])
    assert "1 pairs: 0 ran, 1 refused." in text
    assert f"1. {refused.reason}" in text and "refused [1]" in text


@attrs.define(kw_only=True)
class Forgetful:
    """Noise shifted by a draw counter it does not checkpoint: a resume must differ."""

    shape: tuple[int, ...]
    draws: int = 0

    def sample(self, n: int) -> Any:
        self.draws += 1
        batch = Noise(shape=self.shape).sample(n)
        return attrs.evolve(batch, x=batch.x + self.draws)

    def update(self, round: Any) -> None:
        """Nothing."""


def test_the_resume_check_catches_state_missing_from_the_checkpoint(tmp_path: Path) -> None:
    template = next(p for p in PAIRS if p.shape_name == "vectors" and p.sampler.sampler == "MALA")
    entry = RegisteredShapeCase(
        kind="initializer",
        component="Forgetful",
        plugin="test",
        shape=(2,),
        name="counter",
        case=Forgetful(shape=(2,)),
    )
    pair = attrs.evolve(template, initializer=entry)
    with pytest.raises(AssertionError, match="resumed from the round-1 checkpoint differs"):
        run_pair(pair, tmp_path)


def test_a_pair_of_a_component_without_cases_fails_naming_it(tmp_path: Path) -> None:
    template = PAIRS[0]
    entry = RegisteredShapeCase(
        kind="initializer",
        component="Bare",
        plugin="fake",
        shape=(2,),
        name="no-cases",
        problem="registered initializer 'Bare' (plugin 'fake') offers no testing cases",
    )
    with pytest.raises(AssertionError, match="'Bare'"):
        run_pair(attrs.evolve(template, initializer=entry), tmp_path)


# -- shape-aware cases ---------------------------------------------------------------------


@attrs.frozen
class FakeComponent:
    name: str
    plugin: str
    factory: Callable


class FakeRegistry:
    def __init__(self, **factories: Callable) -> None:
        self.found = [FakeComponent(name, "fake", factory) for name, factory in factories.items()]

    def components(self, kind: str) -> list[FakeComponent]:
        return self.found


class ShapelessCases(Affine):
    """A flow whose `testing_cases` predates shapes (no argument)."""

    @classmethod
    def testing_cases(cls) -> list:
        return [Affine(dim=2)]


class WrongShape(Affine):
    @classmethod
    def testing_cases(cls, shape: Any = None) -> list:
        return [cls(dim=3)]


class EmptyInitializerCases:
    @staticmethod
    def testing_cases(shape: Any) -> list:
        return []


def test_initializers_and_flows_without_shape_cases_are_failing_entries() -> None:
    found = registered_initializer_cases(
        (2,), FakeRegistry(Bare=lambda: Noise(shape=(2,)), Empty=EmptyInitializerCases)
    )
    problems = {entry.component: entry.problem for entry in found}
    assert "offers no testing cases" in problems["Bare"]
    assert "testing_cases(shape)" in problems["Bare"] and "ShapeCase" in problems["Bare"]
    assert "no cases (and no refused reason)" in problems["Empty"]
    with pytest.raises(AssertionError, match="'Bare'"):
        found[0].get()
    flows = registered_flow_shape_cases((2,), FakeRegistry(Old=ShapelessCases, Wrong=WrongShape))
    problems = {entry.component: entry.problem for entry in flows}
    assert "TypeError" in problems["Old"] and "testing_cases(shape=None)" in problems["Old"]
    assert "event_shape (3,)" in problems["Wrong"]


def test_a_flow_that_cannot_serve_a_shape_says_why_and_what_would() -> None:
    entries = {entry.component: entry for entry in registered_flow_shape_cases((3, 8, 8))}
    refused = entries["CPFlow"].refused
    assert refused and "for vectors" in refused and "flows.CPFlowImage" in refused
    assert "flows.Glow" in entries["RealNVP"].refused
    assert entries["Glow"].case.event_shape == (3, 8, 8)
    vectors = {entry.component: entry for entry in registered_flow_shape_cases((2,))}
    assert "flows.CPFlow for vectors" in vectors["CPFlowImage"].refused
    assert vectors["CPFlow"].case.event_shape == (2,)


@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_every_flow_case_for_a_shape_is_invertible_and_reproducible(
    shape: tuple[int, ...],
) -> None:
    """In float32 as the matrix runs them (observed: at most 1e-3, Glow's logit; CP-Flows
    6e-5 and 1e-5 with their solves to 1e-4)."""
    served = [entry for entry in registered_flow_shape_cases(shape) if entry.refused is None]
    assert served
    for entry in served:
        check_flow_invertible(entry.get(), dtype=None, atol=5e-3)
        check_flow_sampling_reproducible(entry.get())


def test_flows_keep_their_shapeless_cases_for_the_flow_checks() -> None:
    assert [flow.event_shape for flow in Glow.testing_cases()] == [(3, 4, 4), (1, 4, 4)]
    assert [flow.event_shape for flow in Affine.testing_cases()] == [(3,)]
    shaped = ElementwiseAffine.testing_cases((3, 8, 8))
    assert shaped[0].event_shape == (3, 8, 8) and shaped[1].event_shape is None


@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_every_initializer_case_draws_chains_of_its_shape(shape: tuple[int, ...]) -> None:
    for entry in registered_initializer_cases(shape):
        if entry.refused is not None:
            continue
        batch = entry.get().sample(BATCH_SIZE)
        assert tuple(batch.x.shape) == (BATCH_SIZE, *shape), entry.id


def test_the_flow_initializer_has_a_case_or_a_refusal_per_registered_flow() -> None:
    cases = {case.name: case for case in Flow.testing_cases((3, 8, 8))}
    assert set(cases) == {component.name for component in get_registry().components("flow")}
    assert cases["CPFlow"].refused and cases["Glow"].component.flow.event_shape == (3, 8, 8)


def test_a_shape_case_is_an_instance_or_a_reason() -> None:
    with pytest.raises(ValueError, match="exactly one of"):
        ShapeCase(name="neither")
    with pytest.raises(ValueError, match="exactly one of"):
        ShapeCase(name="both", component=Noise(shape=(2,)), refused="why")


# -- declared incompatibilities ------------------------------------------------------------


def build(sampler: Any, initializer: Any, shape: tuple[int, ...]) -> Contrastive:
    return Contrastive(
        energy=toy_energy(shape),
        sampler=sampler,
        initializer=initializer,
        dataset=toy_dataset(shape),
        batch_size=4,
    )


def mirror_langevin(dim: int) -> Any:
    from ebmkit_cpmla.mirror import CurvedMirror
    from ebmkit_cpmla.mirror_langevin import MirrorLangevin

    return MirrorLangevin(mirror=CurvedMirror(dim=dim), step_size=0.01)


def test_mirror_langevin_refuses_a_mirror_of_another_dimension_at_build() -> None:
    with pytest.raises(IncompatibleError) as caught:
        build(mirror_langevin(3), Noise(shape=(2,)), (2,))
    message = str(caught.value)
    assert "samplers.MirrorLangevin" in message and "(3,)" in message and "(2,)" in message
    assert "mirrors.CurvedMirror.dim" in message
    build(mirror_langevin(2), Noise(shape=(2,)), (2,))  # the matching mirror is accepted


def test_a_composite_refuses_what_a_stage_refuses() -> None:
    stages = {"mirror": mirror_langevin(3), "mala": MALA(step_size=0.1)}
    with pytest.raises(IncompatibleError, match="samplers.MirrorLangevin"):
        build(Composite(stages=stages), Noise(shape=(2,)), (2,))


def test_flow_samplers_refuse_a_flow_of_another_event_shape() -> None:
    from ebmkit_flow_mcmc.flow_mcmc import FlowMCMC
    from ebmkit_flow_mcmc.imh import FlowIMH
    from ebmkit_flow_mcmc.isir import ISIR
    from ebmkit_flow_mcmc.neutra import NeutraMCMC

    for make in (
        lambda flow: FlowIMH(flow=flow),
        lambda flow: ISIR(flow=flow),
        lambda flow: NeutraMCMC(flow=flow),
        lambda flow: FlowMCMC(flow=flow),
    ):
        with pytest.raises(IncompatibleError, match=r"event_shape \(3,\).*\(2,\)"):
            build(make(Affine(dim=3)), Noise(shape=(2,)), (2,))
        build(make(Affine(dim=2)), Noise(shape=(2,)), (2,))
        build(make(ElementwiseAffine(event_shape=None)), Noise(shape=(3, 8, 8)), (3, 8, 8))


def test_initializers_refuse_chains_of_another_shape() -> None:
    wrong = Noise(shape=(2,))
    for initializer in (
        wrong,
        Replay(noise=wrong, capacity=8),
        Persistent(n_chains=8, start=wrong),
        Flow(flow=Glow(event_shape=(3, 4, 4), levels=1, steps_per_level=1, hidden_channels=4)),
    ):
        with pytest.raises(IncompatibleError, match=r"\(3, 8, 8\)"):
            build(MALA(step_size=0.1), initializer, (3, 8, 8))


def test_a_generator_of_another_shape_is_refused() -> None:
    from ebmkit_dual_mcmc.initializer import Generator

    (case,) = Generator.testing_cases((2,))
    with pytest.raises(IncompatibleError, match=r"output_shape \(2,\).*\(3, 8, 8\)"):
        build(MALA(step_size=0.1), case.component, (3, 8, 8))
    build(MALA(step_size=0.1), case.component, (2,))


def test_check_compatible_passes_every_component_the_whole_combination() -> None:
    seen: list[dict] = []

    class Recorder:
        def check_compatible(self, **components: Any) -> None:
            seen.append(components)

    sampler, initializer, energy = Recorder(), Recorder(), Recorder()
    parts = {"sampler": sampler, "initializer": initializer, "energy": energy}
    check_compatible(**parts, shape=[2], batch_size=16)
    assert len(seen) == 3
    assert all(s == {**parts, "shape": (2,), "batch_size": 16} for s in seen)


def test_the_chains_shape_is_one_data_item_s() -> None:
    assert data_shape(torch.zeros(5, 3, 8, 8)) == (3, 8, 8)
    assert data_shape([(torch.zeros(2), 1)]) == (2,)
    assert data_shape([]) is None and data_shape(["text"]) is None


def test_the_cli_prints_a_refusal_as_an_ebmkit_error(tmp_path: Path) -> None:
    config = write_lines(
        tmp_path,
        "wrong_mirror.gin",
        [
            f"include '{TOY_GIN}'",
            "trainers.Contrastive.dataset = @datasets.EightGaussians()",
            "datasets.EightGaussians.n_samples = 64",
            "trainers.Contrastive.sampler = @samplers.MirrorLangevin()",
            "samplers.MirrorLangevin.mirror = @mirrors.CurvedMirror()",
            "mirrors.CurvedMirror.dim = 3",
            "trainers.Contrastive.initializer = @initializers.Noise()",
            "trainers.Contrastive.n_rounds = 2",
        ],
    )
    status, _, err = run_cli(["run", str(config), "--out", str(tmp_path / "run")])
    assert status == 1
    assert err.startswith("ebmkit: error: samplers.MirrorLangevin: its mirror CurvedMirror")
    assert "event_shape (3,)" in err and "are (2,) per sample" in err
    assert not (tmp_path / "run" / "checkpoints").exists()
