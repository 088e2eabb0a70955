r"""The composability matrix: every registered sampler × every registered initializer case,
on a 2-D toy energy and on a tiny image energy, read from the registry.

Each pair is built as `trainers.Contrastive` (so the components' `check_compatible` runs),
trained two rounds (batch `BATCH_SIZE`, `N_STEPS` sampler step a round) with a checkpoint
after the first (`save_checkpoint`, the trainer's state and the RNG, as `ebmkit run` saves
it), then a freshly built trainer is resumed from it (as ``ebmkit run --resume`` does) and
runs round 2 again: its samples must be finite, of the chains' shape and bit-identical to
the first run's round 2. A pair a component refuses (`IncompatibleError` from its
`check_compatible`, or an initializer case that cannot serve the shape) is recorded with the
reason; a component whose `testing_cases` is missing or broken is a failing pair, never a
skip. The sampler of each pair is its registered class's first `testing_cases()` case, used
as it is on both shapes: a sampler whose case is bound to one shape refuses the other
through its own `check_compatible`. Every case an initializer's `testing_cases(shape)`
returns is crossed with every sampler, so an initializer offers one case per variant worth
crossing (`initializers.Flow`: one per registered flow; the others one).

`tests/test_composability_matrix.py` runs every pair; `scripts/composability_table.py`
runs them and writes `docs/composability.md` (`render_table`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from ebmkit.checkpoint.files import load_checkpoint, save_checkpoint
from ebmkit.checkpoint.rng import get_rng_state, seed_everything, set_rng_state
from ebmkit.compatibility import IncompatibleError, check_compatible
from ebmkit.registry import Registry, get_registry
from ebmkit.testing.cases import RegisteredCase, registered_sampler_cases
from ebmkit.testing.shape_cases import (
    RegisteredShapeCase,
    registered_flow_shape_cases,
    registered_initializer_cases,
)

__all__ = [
    "BATCH_SIZE",
    "MEASURED_PREFIX",
    "N_STEPS",
    "SHAPES",
    "MatrixPair",
    "PairOutcome",
    "matrix_pairs",
    "planned_outcome",
    "render_table",
    "run_pair",
    "toy_dataset",
    "toy_energy",
]

SHAPES: dict[str, tuple[int, ...]] = {"vectors": (2,), "images": (3, 8, 8)}
"""The two energies' chain shapes: a 2-D toy and a tiny RGB image."""

BATCH_SIZE = 4
"""Data and chain batch per round."""

N_STEPS = 1
"""Sampler steps per round."""

SEED = 0
"""The run seed (`seed_everything`) and the energies' and data's seed."""

MEASURED_PREFIX = "Measured:"
"""The table's one line that depends on the machine (left out when comparing tables)."""


def toy_energy(shape: Sequence[int]) -> nn.Module:
    """A tiny energy for chains of `shape`: ``energies.MLP`` (16, 16) for vectors,
    ``energies.Conv`` (4, 8) for images (seeded; the global RNG untouched)."""
    from ebmkit.energies.conv import ConvEnergy
    from ebmkit.energies.mlp import MLPEnergy

    shape = tuple(shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        if len(shape) == 1:
            return MLPEnergy(in_features=shape[0], hidden=(16, 16))
        return ConvEnergy(in_channels=shape[0], channels=(4, 8))


def energy_name(shape: Sequence[int]) -> str:
    """The gin name of `toy_energy(shape)`'s class, for the table."""
    return "energies.MLP (16, 16)" if len(tuple(shape)) == 1 else "energies.Conv (4, 8)"


def toy_dataset(shape: Sequence[int], n: int = 8) -> torch.Tensor:
    """`n` points of `shape` uniform in [−1, 1] (seeded), a dataset as the trainer reads one."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED + 1)
        return torch.rand(n, *shape) * 2 - 1


@attrs.frozen(kw_only=True)
class MatrixPair:
    """One cell of the matrix: a sampler case, an initializer case, an energy shape.

    Arguments:
        shape_name: "vectors" or "images" (a key of `SHAPES`).
        shape: the chains' shape.
        sampler: the sampler's first registered case (or its problem).
        initializer: the initializer's case for `shape` (or its refusal, or its problem).
    """

    shape_name: str
    shape: tuple[int, ...]
    sampler: RegisteredCase
    initializer: RegisteredShapeCase

    @property
    def id(self) -> str:
        """A test id: ``<shape>-<sampler>-<initializer case>``."""
        return f"{self.shape_name}-{self.sampler.sampler}-{self.initializer.id}"

    @property
    def sampler_label(self) -> str:
        """``samplers.<Name>``."""
        return f"samplers.{self.sampler.sampler}"

    @property
    def initializer_label(self) -> str:
        """``initializers.<Name>[<case>]``, e.g. ``initializers.Flow[CPFlow]``."""
        return f"initializers.{self.initializer.component}[{self.initializer.name}]"


@attrs.frozen(kw_only=True)
class PairOutcome:
    """What a pair did: "ran" (trained, saved, resumed) or "refused" (with the reason).

    Arguments:
        pair: the pair.
        status: "ran" or "refused" (a failure raises instead).
        reason: who refused and why (status "refused").
        seconds: wall time of the pair (0 when only planned).
    """

    pair: MatrixPair
    status: str
    reason: str | None = None
    seconds: float = 0.0


def _first_cases(registry: Registry) -> list[RegisteredCase]:
    """Each registered sampler's first case (or its problem entry), in registry order."""
    first: dict[str, RegisteredCase] = {}
    for entry in registered_sampler_cases(registry):
        first.setdefault(entry.sampler, entry)
    return list(first.values())


def matrix_pairs(registry: Registry | None = None) -> list[MatrixPair]:
    """Every pair, shape by shape, sampler by sampler, initializer case by case.

    A flow whose `testing_cases(shape)` is broken becomes a pair of its own with the problem
    (``initializers.Flow[<flow>]``), so it fails in the matrix instead of vanishing from it.
    """
    registry = get_registry() if registry is None else registry
    samplers = _first_cases(registry)
    pairs = []
    for shape_name, shape in SHAPES.items():
        initializers = registered_initializer_cases(shape, registry)
        broken_flows = [
            attrs.evolve(entry, kind="initializer", component="Flow", name=entry.component)
            for entry in registered_flow_shape_cases(shape, registry)
            if entry.problem is not None
        ]
        for sampler in samplers:
            for initializer in [*initializers, *broken_flows]:
                pairs.append(
                    MatrixPair(
                        shape_name=shape_name,
                        shape=shape,
                        sampler=sampler,
                        initializer=initializer,
                    )
                )
    return pairs


def _components(pair: MatrixPair) -> dict[str, Any]:
    """Fresh copies of the pair's sampler and initializer, a fresh energy and the data."""
    sampler = pair.sampler.get().sampler
    initializer = pair.initializer.get()
    sampler, initializer = copy.deepcopy((sampler, initializer))
    return {
        "energy": toy_energy(pair.shape),
        "sampler": sampler,
        "initializer": initializer,
        "dataset": toy_dataset(pair.shape),
    }


def _trainer(components: dict[str, Any]) -> Any:
    from ebmkit.trainers.contrastive import Contrastive

    return Contrastive(
        **components,
        batch_size=BATCH_SIZE,
        n_rounds=2,
        n_steps=N_STEPS,
        learning_rate=1e-3,
        seed=SEED,
    )


def _refusal(pair: MatrixPair, energy: nn.Module | None = None) -> str | None:
    """Why the pair cannot run (the initializer case's refusal, or a component's
    `check_compatible`), or None; AssertionError for a component's problem.

    With `energy`, the components' `check_compatible` is called as the trainer calls it
    (nothing built, nothing copied); without, a trainer is built, which calls it.
    """
    sampler = pair.sampler.get().sampler
    if pair.initializer.problem is not None:
        raise AssertionError(pair.initializer.problem)
    if pair.initializer.refused is not None:
        return pair.initializer.refused
    try:
        if energy is None:
            _trainer(_components(pair))
        else:
            check_compatible(
                sampler=sampler, initializer=pair.initializer.case, energy=energy, shape=pair.shape
            )
    except IncompatibleError as error:
        return str(error)
    return None


def planned_outcome(pair: MatrixPair, energy: nn.Module | None = None) -> PairOutcome:
    """The pair's outcome without training: "refused" with the reason when a component
    refuses it, else "ran" (what `run_pair` must then confirm). `energy`: the pair's
    energy (`toy_energy(pair.shape)`) to check against without building a trainer (cheap:
    what `trainers.Contrastive` calls when built); None builds the trainer."""
    reason = _refusal(pair, energy)
    return PairOutcome(pair=pair, status="ran" if reason is None else "refused", reason=reason)


def _check_samples(pair: MatrixPair, x: torch.Tensor, when: str) -> None:
    expected = (BATCH_SIZE, *pair.shape)
    if tuple(x.shape) != expected:
        raise AssertionError(
            f"{pair.id}: {when} samples have shape {tuple(x.shape)}, not {expected}"
        )
    if not bool(torch.isfinite(x).all()):
        raise AssertionError(f"{pair.id}: {when} samples are not finite")


def run_pair(pair: MatrixPair, folder: Path) -> PairOutcome:
    """Build, train 2 rounds with a checkpoint after the first, resume a fresh build from it
    and rerun round 2; raises AssertionError (naming the pair) when a sample is not finite or
    of the wrong shape, or the resumed round differs. The global RNGs are restored after.

    Arguments:
        pair: the pair.
        folder: where the checkpoint is written (an empty folder for this pair).
    """
    start = time.perf_counter()
    reason = _refusal(pair)
    if reason is not None:
        return PairOutcome(pair=pair, status="refused", reason=reason)
    saved_rng = get_rng_state()
    try:
        seed_everything(SEED)
        trainer = _trainer(_components(pair))
        trainer.train_round()
        state = trainer.state_dict()
        state["rng"] = get_rng_state()
        checkpoint = save_checkpoint(state, folder, trainer.round_index, keep=2)
        second = trainer.train_round().result.x.detach().clone()
        _check_samples(pair, second, "round 2")
        resumed = _trainer(_components(pair))
        loaded = load_checkpoint(checkpoint)
        resumed.load_state_dict(loaded)
        set_rng_state(loaded["rng"])
        again = resumed.train_round().result.x.detach()
        _check_samples(pair, again, "resumed round 2")
        if not torch.equal(second, again):
            difference = float((second - again).abs().max())
            raise AssertionError(
                f"{pair.id}: round 2 resumed from the round-1 checkpoint differs from the "
                f"uninterrupted run (max |difference| {difference:.3g}): some state is not in "
                f"the checkpoint"
            )
    finally:
        set_rng_state(saved_rng)
    return PairOutcome(pair=pair, status="ran", seconds=time.perf_counter() - start)


def _cell(outcome: PairOutcome, notes: dict[str, int]) -> str:
    if outcome.status == "ran":
        return "ran"
    return f"refused [{notes.setdefault(outcome.reason or '', len(notes) + 1)}]"


def render_table(outcomes: Sequence[PairOutcome], measured: str | None = None) -> str:
    """docs/composability.md: per energy shape, the counts, a sampler × initializer grid and
    each distinct refusal reason, numbered. `measured`: the one machine-dependent line."""
    lines = [
        "# Composability matrix",
        "",
        "Generated by `scripts/composability_table.py` from the registry (do not edit; "
        "`tests/test_composability_matrix.py` checks it is current). Every registered sampler "
        "(its first `testing_cases()` case) × every registered initializer's "
        "`testing_cases(shape)` (`initializers.Flow` once per registered flow) is built as "
        f"`trainers.Contrastive` (batch {BATCH_SIZE}, {N_STEPS} sampler step a round), "
        "trains 2 rounds with a checkpoint after round 1, and a fresh build resumed from that "
        "checkpoint reruns round 2: **ran** means its samples were finite, of the chains' "
        "shape and bit-identical to the uninterrupted run's. **refused** means a component "
        "declared the pair incompatible (its `check_compatible`, or a flow that cannot serve "
        "the shape), with the reason below. See docs/plugins.md, 'Compatibility'.",
        "",
    ]
    if measured:
        lines += [f"{MEASURED_PREFIX} {measured}", ""]
    for shape_name, shape in SHAPES.items():
        chosen = [o for o in outcomes if o.pair.shape_name == shape_name]
        ran = sum(o.status == "ran" for o in chosen)
        lines += [
            f"## {shape_name}: chains of shape {shape}, {energy_name(shape)}",
            "",
            f"{len(chosen)} pairs: {ran} ran, {len(chosen) - ran} refused.",
            "",
        ]
        columns = list(dict.fromkeys(o.pair.initializer_label for o in chosen))
        rows = list(dict.fromkeys(o.pair.sampler_label for o in chosen))
        grid = {(o.pair.sampler_label, o.pair.initializer_label): o for o in chosen}
        if len(grid) != len(chosen):
            raise ValueError(f"two {shape_name} pairs share a sampler and initializer label")
        notes: dict[str, int] = {}
        lines.append(
            "| initializer | " + " | ".join(r.removeprefix("samplers.") for r in rows) + " |"
        )
        lines.append("|---" * (len(rows) + 1) + "|")
        for column in columns:
            cells = [_cell(grid[(row, column)], notes) for row in rows]
            lines.append(f"| {column.removeprefix('initializers.')} | " + " | ".join(cells) + " |")
        lines.append("")
        if notes:
            lines += ["Refusals:", ""]
            lines += [f"{number}. {reason}" for reason, number in notes.items()]
            lines.append("")
    return "\n".join(lines)
