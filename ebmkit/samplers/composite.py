r"""Kernels in sequence: each step applies every stage (a global move, then k local ones)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import attrs
import torch
from torch import Tensor

from ebmkit.protocols import Energy, Sampler, StepScalable
from ebmkit.records import LONE_STEP, ChainState, StepContext, StepInfo
from ebmkit.samplers.base import (
    EvaluationCounts,
    MarkovKernel,
    default_init_cost,
    initialize,
    kept_from_previous,
)

if TYPE_CHECKING:
    from ebmkit.testing import SamplerCase

__all__ = ["Composite"]


def _stage_names(
    instance: object, attribute: attrs.Attribute, value: Mapping[str, Sampler]
) -> None:
    if not value:
        raise ValueError("samplers.Composite.stages needs at least one stage, got none")
    for name, stage in value.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(
                f"samplers.Composite.stages: stage names are non-empty strings without '/', "
                f"got {name!r}"
            )
        if not isinstance(stage, Sampler):
            raise TypeError(
                f"samplers.Composite.stages[{name!r}] is a {type(stage).__name__}, not a "
                f"sampler (it needs init, step and sample)"
            )


def _repeat_counts(instance: Composite, attribute: attrs.Attribute, value: dict) -> None:
    names = list(instance.stages)
    for name, count in value.items():
        if name not in instance.stages:
            problem = f"names {name!r}, which is not a stage"
        elif isinstance(count, bool) or not isinstance(count, int) or count < 1:
            problem = f"gives stage {name!r} the count {count!r}"
        else:
            continue
        raise ValueError(
            f"samplers.Composite.repeats {problem}; the stages are {names}. Map stage names "
            f"to whole numbers of moves per step >= 1 (stages left out make one), e.g. "
            f"samplers.Composite.repeats = {{{names[-1]!r}: 5}}"
        )


@attrs.define(kw_only=True)
class Composite(MarkovKernel):
    """The composition K = K_last^k_last ∘ … ∘ K_first^k_first of registered kernels per step.

    Each stage leaves exp(−E) invariant if its kernel does, so the composition does too.
    E and ∇E pass from stage to stage (a stage that moves x recomputes or drops its caches;
    one that needs ∇E and finds it None evaluates it); what each stage owns (its adapted
    step sizes, ``owned`` tensors) is kept apart under the stage's name, so two adaptive
    stages never mix. A stage repeated k times (`repeats`) makes k moves in a row each
    step, all on the one owned state of that stage: one adapted step size per stage, not
    per repeat (a MALA stage's age counts its moves, so its `adapt_steps` are moves, k per
    step). Every stage sees the caller's context (adaptation on or off); only the final
    repeat of the final stage of the run's last step is told ``last``. Each stage's
    diagnostics appear in `StepInfo.stats` as ``<stage>/<name>``, e.g. ``mala/acceptance``,
    ``mala/step_size``, averaged over the stage's repeats; the step's costs are summed over
    stages and repeats.

    `init` runs every stage's `init` in stage order, each on its own view: x, the extras
    made by the stages before it, and its own owned entries (its step size included), so a
    continued chain's "not set yet" entries (a persistent bank's NaN step sizes) are
    resolved by the stage that owns them. Each stage's extras are merged into the shared
    ones; E and ∇E are the last ones a stage evaluated. It costs the sum of the stages'
    `init`s (K stages that each evaluate ∇E: K gradient evaluations).

    Arguments:
        stages: name → sampler, applied in this order each step.
        repeats: name → k ≥ 1, the moves that stage makes in a row each step (default 1),
            e.g. ``{"local": 5}``: five local moves per global move.
        n_steps: default number of steps for `sample`.

    Example:
        >>> from ebmkit.samplers.langevin import Langevin
        >>> from ebmkit.samplers.mala import MALA
        >>> stages = {"ula": Langevin(step_size=0.1), "mala": MALA(step_size=0.1)}
        >>> kernel = Composite(stages=stages, repeats={"mala": 3})
        >>> result = kernel.sample(lambda x: 0.5 * x.square().sum(1), torch.zeros(8, 2), 5)
        >>> sorted(result.stats)
        ['mala/acceptance', 'mala/step_size', 'ula/step_size']
        >>> result.n_grad_evals  # 2 inits, then 5 steps of 1 ULA + 3 MALA gradients
        22
    """

    stages: dict[str, Sampler] = attrs.field(converter=dict, validator=_stage_names)
    repeats: dict[str, int] = attrs.field(factory=dict, converter=dict, validator=_repeat_counts)
    n_steps: int = attrs.field(default=100, validator=attrs.validators.ge(0))

    @classmethod
    def testing_cases(cls) -> list[SamplerCase]:
        """Cases for `ebmkit.testing`: two ULA stages (exactly their composed Langevin law on a
        Gaussian), the second repeated twice (exactly its three Langevin moves), ULA then
        adaptive MALA (unadjusted: within 0.03 of the target), two MALA stages, the second
        adapting (exact; each stage's owned state kept apart), and the same with the
        adapting stage repeated 3 times per step (45 adaptive moves: 15 steps, between the
        continuation check's N = 10 and 2N, so the shared step size is carried over)."""
        from ebmkit.samplers.langevin import Langevin
        from ebmkit.samplers.mala import MALA
        from ebmkit.testing import LangevinMove, SamplerCase

        two_ula = {"coarse": Langevin(step_size=0.06), "fine": Langevin(step_size=0.03)}
        ula_mala = {"ula": Langevin(step_size=0.05), "mala": MALA(step_size=0.15, adapt_steps=15)}
        two_mala = {"global": MALA(step_size=0.4), "local": MALA(step_size=0.1, adapt_steps=15)}
        repeated = {"global": MALA(step_size=0.4), "local": MALA(step_size=0.1, adapt_steps=45)}
        coarse, fine = LangevinMove(step_size=0.06), LangevinMove(step_size=0.03)
        return [
            SamplerCase(
                name="ula-then-ula",
                sampler=Composite(stages=two_ula),
                exact=False,
                langevin_law=(coarse, fine),
                bias_tolerance=0.03,
            ),
            SamplerCase(
                name="ula-then-ula-twice",
                sampler=Composite(
                    stages={"coarse": Langevin(step_size=0.06), "fine": Langevin(step_size=0.03)},
                    repeats={"fine": 2},
                ),
                exact=False,
                langevin_law=(coarse, fine, fine),
                bias_tolerance=0.03,
            ),
            SamplerCase(
                name="ula-then-mala",
                sampler=Composite(stages=ula_mala),
                exact=False,
                bias_tolerance=0.03,
            ),
            SamplerCase(name="mala-then-mala", sampler=Composite(stages=two_mala), exact=True),
            SamplerCase(
                name="mala-then-mala-x3",
                sampler=Composite(stages=repeated, repeats={"local": 3}),
                exact=True,
            ),
        ]

    def check_compatible(self, **components: object) -> None:
        """What each stage declares (`check_compatible`, in stage order): a stage that
        cannot run on these chains makes the composition refuse them."""
        for stage in self.stages.values():
            check = getattr(stage, "check_compatible", None)
            if callable(check):
                check(**components)

    def init(self, x: Tensor, energy: Energy, *, previous: ChainState | None = None) -> ChainState:
        """Every stage's `init` on its own view, in stage order (see the class docstring)."""
        return self.init_with_cost(x, energy, previous=previous)[0]

    def init_with_cost(
        self, x: Tensor, energy: Energy, *, previous: ChainState | None = None
    ) -> tuple[ChainState, EvaluationCounts]:
        """`init` and its cost: the sum of what the stages' `init`s cost."""
        _, owned = kept_from_previous(x, previous)
        del previous  # its E, ∇E and caches are stale: every stage recomputes its own
        shared = ChainState(x=x, energy=None, grad=None)
        cost = EvaluationCounts()
        for name, stage in self.stages.items():
            view = self._stage_view(shared, owned, name)
            stage_state, stage_cost = initialize(stage, x, energy, previous=view)
            cost = cost + stage_cost
            owned = self._stage_owned(stage_state, owned, name)
            shared = ChainState(
                x=x,
                energy=shared.energy if stage_state.energy is None else stage_state.energy,
                grad=shared.grad if stage_state.grad is None else stage_state.grad,
                extras={**shared.extras, **stage_state.extras},
            )
        return attrs.evolve(shared, owned=owned), cost

    def init_cost(self, state: ChainState) -> EvaluationCounts:
        """The stages' `init_cost`s, each on its view of `state` (`sample` instead counts each
        stage's `init` as it runs, through `init_with_cost`, which is exact also for a stage
        whose cost depends on what its own `init` left in the state)."""
        cost = EvaluationCounts()
        for name, stage in self.stages.items():
            view = self._stage_view(state, state.owned, name)
            cost = cost + getattr(stage, "init_cost", default_init_cost)(view)
        return cost

    def step(
        self,
        state: ChainState,
        energy: Energy,
        *,
        generator: torch.Generator | None = None,
        context: StepContext | None = None,
    ) -> tuple[ChainState, StepInfo]:
        """Every stage in order, each `repeats` times; stats of each stage under its name."""
        context = LONE_STEP if context is None else context
        last_name = next(reversed(self.stages))
        stats: dict[str, Tensor] = {}
        cost = EvaluationCounts()
        owned = state.owned
        stage_state = state
        del state
        info = None
        for name, stage in self.stages.items():
            repeats = self.repeats.get(name, 1)
            sums: dict[str, Tensor] = {}
            counts: dict[str, int] = {}
            for repeat in range(repeats):
                stage_state = self._stage_view(stage_state, owned, name)
                final = context.last and name == last_name and repeat == repeats - 1
                stage_context = attrs.evolve(context, last=final)
                stage_state, info = stage.step(
                    stage_state, energy, generator=generator, context=stage_context
                )
                owned = self._stage_owned(stage_state, owned, name)
                cost = cost + EvaluationCounts.of_step(info)
                for key, value in info.named_stats().items():
                    sums[key] = value if key not in sums else sums[key] + value
                    counts[key] = counts.get(key, 0) + 1
            for key, total in sums.items():
                stats[f"{name}/{key}"] = total if counts[key] == 1 else total / counts[key]
        new_state = ChainState(
            x=stage_state.x,
            energy=stage_state.energy,
            grad=stage_state.grad,
            extras=stage_state.extras,
            owned=owned,
        )
        return new_state, StepInfo(
            acceptance_prob=None,
            accepted=None,
            step_size=info.step_size,
            n_grad_evals=cost.n_grad_evals,
            n_energy_evals=cost.n_energy_evals,
            n_flow_evals=cost.n_flow_evals,
            stats=stats,
        )

    @staticmethod
    def _stage_view(state: ChainState, owned: dict[str, Tensor], name: str) -> ChainState:
        """The state as stage `name` sees it: shared x/E/∇E/extras, its own owned tensors."""
        prefix = f"{name}/"
        mine = {
            key[len(prefix) :]: value for key, value in owned.items() if key.startswith(prefix)
        }
        return ChainState(
            x=state.x,
            energy=state.energy,
            grad=state.grad,
            step_size=mine.pop("step_size", None),
            extras=state.extras,
            owned=mine,
        )

    @staticmethod
    def _stage_owned(state: ChainState, owned: dict[str, Tensor], name: str) -> dict[str, Tensor]:
        """`owned` with stage `name`'s entries replaced by what its step returned."""
        prefix = f"{name}/"
        updated = {key: value for key, value in owned.items() if not key.startswith(prefix)}
        updated.update({prefix + key: value for key, value in state.owned.items()})
        if state.step_size is not None:
            updated[prefix + "step_size"] = state.step_size
        return updated

    def current_step_size(self) -> float:
        """The first stage's step size (the stages' own are in each step's stats)."""
        first = next(iter(self.stages.values()))
        return first.current_step_size() if isinstance(first, StepScalable) else float("nan")

    def scale_step_size(self, factor: float) -> None:
        """Scale every stage that can; refuses when none can."""
        scalable = [stage for stage in self.stages.values() if isinstance(stage, StepScalable)]
        if not scalable:
            raise ValueError(
                f"samplers.Composite: none of the stages {sorted(self.stages)} can scale its "
                f"step size"
            )
        for stage in scalable:
            stage.scale_step_size(factor)
