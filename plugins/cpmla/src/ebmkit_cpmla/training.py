r"""CPMLA's training schedules over `trainers.Contrastive`'s phases (no copy of the loop).

- Alg. 2 itself needs no new trainer: ``trainers.Contrastive`` with ``learn_order =
  "before_energy_step"`` samples x̂ (`samplers.MirrorLangevin` from `initializers.Flow`'s fresh
  CP-Flow samples), lets the CP-Flow take its Adam step on {x} ∪ {x̂} (``fit_on = "both"``),
  then the EBM its step on mean E(x) − mean E(x̂), both on the same x̂.
- `CPMLA` (gin ``trainers.CPMLA``) adds the `prt` variant as a schedule inside one run: rounds
  1..``pretrain_rounds`` are *flow rounds* (below), then Alg. 2 with the EBM still at its
  random initialisation. One run, one checkpoint stream, so a resume at any round continues
  the schedule (it depends on the round index only).
- `FlowOnly` (gin ``trainers.FlowOnly``): every round a flow round, the CP-Flow-alone
  baseline, scored as −log q of the flow (`ebmkit.density.FlowDensity` through the trainer's
  model-density hook, unless ``model_density`` is bound).

A *flow round*: data; the initializer's samples (for `initializers.Flow`, the flow's own
samples x = ∇G*(z), z from the flow's base); no chain, no energy loss, no energy step; the
round record scored under ``torch.no_grad`` by the model energy (`model_energy()`: the EBM for
`CPMLA`, −log q for `FlowOnly`), so logs, pictures and toy metrics read as in any run; the
Learnables learn by maximum likelihood on the **data batch only**: a Learnable with a
``fit_on`` setting (every `ebmkit.flows` flow) has it read as ``"data"`` for that phase and
restored after; then the initializer's update. The record's ``loss/total`` is the gap
mean E(x) − mean E(x̂) of the model energy, logged but not minimised.

The toy base: our CP-Flow's base is N(0, I), so `initializers.Flow` draws y₀ from the base the
flow is trained on, as the reference resolves it (its toy's N(0, e²I), ``plogv = 2``, is the
same family of maps with z rescaled by e; drawing N(0, I) under an N(0, e²I)-trained flow would
shrink the starts by e — here nothing is rescaled).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import attrs
import torch

from ebmkit import ChainState, Contrastive, Registry, RoundWork, SampleResult
from ebmkit.density import EnergyFunction, FlowDensity, resolve_model_energy
from ebmkit.protocols import Sampler
from ebmkit.records import Round

__all__ = ["CPMLA", "FlowOnly", "register_trainers"]


def _flow_round_phases(trainer: Contrastive) -> list[tuple[str, Callable[[RoundWork], None]]]:
    return [
        ("data", trainer.draw_data),
        ("initializer", trainer.start_chains),
        ("initializer_samples", _initializer_samples),
        ("score", trainer.score_round),  # type: ignore[attr-defined]
        ("learnables_on_data", trainer.learn_on_data),  # type: ignore[attr-defined]
        ("initializer_update", trainer.update_initializer),
    ]


def _initializer_samples(work: RoundWork) -> None:
    """Phase "initializer_samples": the round's samples are the chains' starts (no step)."""
    x = work.init.x.detach()
    work.result = SampleResult(
        x=x,
        state=ChainState(x=x, energy=None, grad=None),
        acceptance_rate=None,
        n_grad_evals=0,
        energy_trace=x.new_zeros(0),
        step_size=x.new_tensor(float("nan")),
    )


@contextlib.contextmanager
def _fitting_data(learnables: Iterator[object]) -> Iterator[None]:
    """Each Learnable with a ``fit_on`` setting reads "data" inside the block."""
    saved = [(part, part.fit_on) for part in learnables if hasattr(part, "fit_on")]
    try:
        for part, _ in saved:
            part.fit_on = "data"
        yield
    finally:
        for part, fit_on in saved:
            part.fit_on = fit_on


class _FlowRounds:
    """The phases of a flow round (see the module docstring); mixed into a Contrastive."""

    def score_round(self: Contrastive, work: RoundWork) -> None:  # type: ignore[misc]
        """Phase "score": the round record, energies by the model energy, no graph."""
        energy = self.model_energy()
        with torch.no_grad():
            energy_data = energy(work.x_data).reshape(-1)
            energy_model = energy(work.result.x).reshape(-1)
        gap = energy_data.mean() - energy_model.mean()
        work.energy_data, work.energy_model = energy_data, energy_model
        work.losses.update({"loss/total": gap, "loss/contrastive": gap})
        work.round = Round(
            index=work.index,
            x_data=work.x_data,
            init=work.init,
            result=work.result,
            energy_data=energy_data,
            energy_model=energy_model,
            losses=work.losses,
            energy=self.energy,
            epoch=work.epoch,
        )

    def learn_on_data(self: Contrastive, work: RoundWork) -> None:  # type: ignore[misc]
        """Phase "learnables_on_data": the Learnables learn with ``fit_on`` read as "data"."""
        with _fitting_data(iter(self.all_learnables.values())):
            self.learn(work)


@attrs.define(kw_only=True, eq=False)
class CPMLA(_FlowRounds, Contrastive):
    """`trainers.Contrastive` with CPMLA's `prt` schedule: flow rounds first, then Alg. 2.

    Rounds 1..`pretrain_rounds` are flow rounds (the CP-Flow fits the data alone by maximum
    likelihood; no chains, the EBM untouched), the rest `trainers.Contrastive`'s phases (with
    ``learn_order = "before_energy_step"``: Alg. 2). ``pretrain_rounds = 0`` is Alg. 2 from the
    start, the same run as `trainers.Contrastive`. Every `Contrastive` argument applies.

    Arguments:
        pretrain_rounds: N ≥ 0, the flow rounds at the start of the run.
    """

    pretrain_rounds: int = attrs.field(default=0, validator=attrs.validators.ge(0))

    def pretraining(self, index: int) -> bool:
        """Whether round `index` (1-based) is a pretraining flow round."""
        return index <= self.pretrain_rounds

    def phases(self) -> list[tuple[str, Callable[[RoundWork], None]]]:
        """Flow-round phases while the next round is ≤ `pretrain_rounds`, else Contrastive's."""
        if self.pretraining(self.round_index + 1):
            return _flow_round_phases(self)
        return super().phases()


@attrs.define(kw_only=True, eq=False)
class FlowOnly(_FlowRounds, Contrastive):
    """The flow alone (the CP-Flow-alone baseline): every round a flow round.

    The flow is the initializer's (``initializers.Flow.flow``); it fits the data batch by
    maximum likelihood each round, the round's samples are its own, and the run is scored on
    −log q (`FlowDensity`) unless ``model_density`` is bound. The energy is built (a
    `Contrastive` needs one; bind a small one) but never stepped; no sampler is needed
    (``sampler`` defaults to None; a bound one is not run).
    """

    sampler: Sampler | None = None

    def __attrs_post_init__(self) -> None:
        flow = getattr(self.initializer, "flow", None)
        if not callable(getattr(flow, "log_prob", None)):
            raise TypeError(
                f"trainers.FlowOnly scores the initializer's flow, but "
                f"{type(self.initializer).__name__} has no flow with log_prob; bind "
                f"trainers.FlowOnly.initializer = @initializers.Flow()"
            )
        super().__attrs_post_init__()

    def model_energy(self) -> EnergyFunction:
        """−log q of the initializer's flow, or `model_density(energy)` when bound."""
        density = self.model_density or FlowDensity(flow=self.initializer.flow)
        return resolve_model_energy(self.energy, model_density=density)

    def phases(self) -> list[tuple[str, Callable[[RoundWork], None]]]:
        """data, initializer, initializer_samples, score, learnables_on_data,
        initializer_update."""
        return _flow_round_phases(self)


def register_trainers(registry: Registry) -> None:
    """``trainers.CPMLA`` (the prt schedule) and ``trainers.FlowOnly`` (the flow alone)."""
    registry.add("trainer", "CPMLA", CPMLA)
    registry.add("trainer", "FlowOnly", FlowOnly)
