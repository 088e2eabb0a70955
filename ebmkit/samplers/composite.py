r"""Kernels in sequence: each step applies every stage once (a global move, then a local one)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import attrs
import torch
from torch import Tensor

from ebmkit.autograd import energy_and_grad
from ebmkit.protocols import Energy, Sampler, StepScalable
from ebmkit.records import LONE_STEP, ChainState, StepContext, StepInfo
from ebmkit.samplers.base import MarkovKernel, kept_from_previous

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


@attrs.define(kw_only=True)
class Composite(MarkovKernel):
    """The composition K = K_last ∘ … ∘ K_first of registered kernels, one pass per step.

    Each stage leaves exp(−E) invariant if its kernel does, so the composition does too.
    E and ∇E pass from stage to stage (a stage that moves x recomputes or drops its caches);
    what each stage owns (its adapted step sizes, ``owned`` tensors) is kept apart under the
    stage's name, so two adaptive stages never mix. Every stage sees the caller's context
    (adaptation on or off); only the final stage of the run's last step is told ``last``.
    Each stage's diagnostics appear in `StepInfo.stats` as ``<stage>/<name>``, e.g.
    ``mala/acceptance``, ``mala/step_size``.

    Arguments:
        stages: name → sampler, applied in this order each step.
        n_steps: default number of steps for `sample`.

    Example:
        >>> from ebmkit.samplers.langevin import Langevin
        >>> from ebmkit.samplers.mala import MALA
        >>> stages = {"ula": Langevin(step_size=0.1), "mala": MALA(step_size=0.1)}
        >>> kernel = Composite(stages=stages)
        >>> result = kernel.sample(lambda x: 0.5 * x.square().sum(1), torch.zeros(8, 2), 5)
        >>> sorted(result.stats)
        ['mala/acceptance', 'mala/step_size', 'ula/step_size']
    """

    stages: dict[str, Sampler] = attrs.field(converter=dict, validator=_stage_names)
    n_steps: int = attrs.field(default=100, validator=attrs.validators.ge(0))

    @classmethod
    def testing_cases(cls) -> list[SamplerCase]:
        """Cases for `ebmkit.testing`: two ULA stages (exactly their composed Langevin law on a
        Gaussian), ULA then adaptive MALA (unadjusted: within 0.03 of the target), and two
        MALA stages, the second adapting (exact; each stage's owned state kept apart)."""
        from ebmkit.samplers.langevin import Langevin
        from ebmkit.samplers.mala import MALA
        from ebmkit.testing import LangevinMove, SamplerCase

        two_ula = {"coarse": Langevin(step_size=0.06), "fine": Langevin(step_size=0.03)}
        ula_mala = {"ula": Langevin(step_size=0.05), "mala": MALA(step_size=0.15, adapt_steps=15)}
        two_mala = {"global": MALA(step_size=0.4), "local": MALA(step_size=0.1, adapt_steps=15)}
        return [
            SamplerCase(
                name="ula-then-ula",
                sampler=Composite(stages=two_ula),
                exact=False,
                langevin_law=(LangevinMove(step_size=0.06), LangevinMove(step_size=0.03)),
                bias_tolerance=0.03,
            ),
            SamplerCase(
                name="ula-then-mala",
                sampler=Composite(stages=ula_mala),
                exact=False,
                bias_tolerance=0.03,
            ),
            SamplerCase(name="mala-then-mala", sampler=Composite(stages=two_mala), exact=True),
        ]

    def init(self, x: Tensor, energy: Energy, *, previous: ChainState | None = None) -> ChainState:
        """E and ∇E at `x`; what the stages own is kept from `previous` (or made on first use)."""
        _, owned = kept_from_previous(x, previous)
        value, grad = energy_and_grad(energy, x)
        return ChainState(x=x, energy=value, grad=grad, owned=owned)

    def step(
        self,
        state: ChainState,
        energy: Energy,
        *,
        generator: torch.Generator | None = None,
        context: StepContext | None = None,
    ) -> tuple[ChainState, StepInfo]:
        """Every stage once, in order; stats of each stage under its name."""
        context = LONE_STEP if context is None else context
        last_name = next(reversed(self.stages))
        stats: dict[str, Tensor] = {}
        n_grad_evals = 0
        owned = state.owned
        stage_state = state
        del state
        info = None
        for name, stage in self.stages.items():
            stage_state = self._stage_view(stage_state, owned, name)
            stage_context = attrs.evolve(context, last=context.last and name == last_name)
            stage_state, info = stage.step(
                stage_state, energy, generator=generator, context=stage_context
            )
            owned = self._stage_owned(stage_state, owned, name)
            n_grad_evals += info.n_grad_evals
            stats.update({f"{name}/{key}": value for key, value in info.named_stats().items()})
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
            n_grad_evals=n_grad_evals,
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
