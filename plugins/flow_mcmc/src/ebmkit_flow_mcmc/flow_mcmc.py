r"""Flow-MCMC: a flow's global move (IMH or i-SIR) alternated with k local moves, on Composite."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import attrs
import torch
from torch import Tensor

from ebmkit import (
    ChainState,
    Composite,
    Energy,
    EvaluationCounts,
    Sampler,
    StepContext,
    StepInfo,
    StepScalable,
    one_of,
)
from ebmkit_flow_mcmc.densities import (
    TiltedEnergy,
    check_flow,
    check_flow_shape,
    default_local_sampler,
    flow_validator,
    testing_flow,
)
from ebmkit_flow_mcmc.imh import FlowIMH
from ebmkit_flow_mcmc.isir import ISIR

if TYPE_CHECKING:
    from ebmkit.testing import SamplerCase

__all__ = ["GLOBAL_MOVES", "FlowMCMC"]

GLOBAL_MOVES = ("imh", "isir")
"""The global moves: independent Metropolis–Hastings (`FlowIMH`) or i-SIR (`ISIR`)."""

COMPONENT = "samplers.FlowMCMC"


def _is_sampler(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if isinstance(value, type) or not isinstance(value, Sampler):
        raise TypeError(
            f"samplers.FlowMCMC.local must be a sampler instance (init, step, sample), e.g. "
            f"@samplers.MALA(); got {value!r}"
        )


@attrs.define(kw_only=True)
class FlowMCMC(Composite):
    """Adaptive flow-MCMC: each step one global move from the flow, then k local moves.

    ``Composite(stages={"global": FlowIMH or ISIR, "local": local}, repeats={"local": k})``:
    a preset of the core composition (its loop, its per-stage owned state and stats), so
    each stage's diagnostics read ``global/acceptance``, ``global/flow_evals``,
    ``local/acceptance``, ``local/step_size``, plus ``flow_evals`` for the whole step. The
    global move jumps between modes the flow covers; the local moves (MALA by default:
    step 0.01 adapted toward acceptance 0.75 during each chain's first 500 local moves, as
    in the reference code) explore within them. Exact for exp(−E) when both stages are.

    The flow is the user's Learnable, referenced here and trained by the trainer (forward
    KL on the chain states: ``FlowModule(fit_on="samples")``; the reverse-KL mix through its
    `reverse_kl_weight`); the flow caches (E, log λ) are re-made by `init` each round.

    With ``tilt=True`` the model is the EBM tilted by the flow, p ∝ λ(x)·exp(−E(x)): both
    stages run on E − log λ (MALA's gradient includes ∇ log λ, one flow pass per gradient),
    the global ratio reduces to E(x) − E(x'), and `model_energy(E)` returns E − log λ, the
    energy the run's metrics and pictures score.

    Arguments:
        flow: the proposal flow (exact densities).
        local: the local kernel (default: MALA as above).
        global_move: "imh" (default) or "isir".
        local_steps: k ≥ 1, local moves per global move (default 5, the reference code).
        n_particles: N ≥ 2 candidates of an i-SIR move (used with ``global_move="isir"``).
        tilt: sample the tilted model λ·exp(−E) instead of exp(−E).
        n_steps: default number of steps (each one global + k local moves) for `sample`.

    References:
        Grenioux, Moulines & Gabrié (2023), Balanced training of energy-based models with
        adaptive flow sampling, arXiv:2306.00684. Gabrié, Rotskoff & Vanden-Eijnden (2022),
        Adaptive Monte Carlo augmented with normalizing flows, PNAS.

    Example:
        >>> from ebmkit.flows import ElementwiseAffine
        >>> from ebmkit import MALA
        >>> flow = ElementwiseAffine(event_shape=None, loc=0.5, scale=1.5).freeze()
        >>> sampler = FlowMCMC(flow=flow, local=MALA(step_size=0.2), local_steps=2)
        >>> result = sampler.sample(lambda x: 0.5 * x.square().sum(1), torch.zeros(4, 2), 10)
        >>> sorted(result.stats)  # doctest: +NORMALIZE_WHITESPACE
        ['flow_evals', 'global/acceptance', 'global/flow_evals', 'local/acceptance',
         'local/step_size']
    """

    flow: object = attrs.field(validator=flow_validator(COMPONENT))
    local: Sampler = attrs.field(factory=default_local_sampler, validator=_is_sampler)
    global_move: str = attrs.field(default="imh", validator=one_of(*GLOBAL_MOVES))
    local_steps: int = attrs.field(
        default=5, validator=[attrs.validators.instance_of(int), attrs.validators.ge(1)]
    )
    n_particles: int = attrs.field(
        default=4, validator=[attrs.validators.instance_of(int), attrs.validators.ge(2)]
    )
    tilt: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    stages: dict[str, Sampler] = attrs.field(init=False)
    repeats: dict[str, int] = attrs.field(init=False)

    @stages.default
    def _build_stages(self) -> dict[str, Sampler]:
        check_flow(self.flow, COMPONENT)  # before the stages do, so the error names FlowMCMC
        if self.global_move == "isir":
            move: Sampler = ISIR(flow=self.flow, n_particles=self.n_particles)
        else:
            move = FlowIMH(flow=self.flow)
        return {"global": move, "local": self.local}

    @repeats.default
    def _build_repeats(self) -> dict[str, int]:
        return {"local": self.local_steps}

    @classmethod
    def testing_cases(cls) -> list[SamplerCase]:
        """Exact cases with the off-centre flow 0.5 + 1.5·z: IMH + 2 MALA moves at step 0.2,
        and i-SIR (N = 4) + 1 MALA move adapting during 15 moves (between the continuation
        check's N = 10 and 2N steps, so adapted step sizes and ages are carried over). The
        defaults (5 local moves of MALA from 0.01) are checked by the plugin's tests."""
        from ebmkit import MALA
        from ebmkit.testing import SamplerCase

        imh = cls(flow=testing_flow(), local=MALA(step_size=0.2), local_steps=2)
        isir = cls(
            flow=testing_flow(),
            local=MALA(step_size=0.1, adapt_steps=15),
            global_move="isir",
            local_steps=1,
        )
        return [
            SamplerCase(name="imh-mala", sampler=imh, exact=True),
            SamplerCase(name="isir-adaptive-mala", sampler=isir, exact=True),
        ]

    def target_energy(self, energy: Energy) -> Energy:
        """The energy the stages run on: `energy`, or E − log λ with ``tilt=True``."""
        if self.tilt and not (isinstance(energy, TiltedEnergy) and energy.flow is self.flow):
            return TiltedEnergy(energy, self.flow)
        return energy

    def model_energy(self, energy: Energy) -> Energy:
        """The energy of the model the chains sample: E, or E − log λ with ``tilt=True``
        (what a run's metrics and density pictures score)."""
        return TiltedEnergy(energy, self.flow) if self.tilt else energy

    def init_with_cost(
        self, x: Tensor, energy: Energy, *, previous: ChainState | None = None
    ) -> tuple[ChainState, EvaluationCounts]:
        """Composite's `init` on the target energy; the tilt's flow passes counted."""
        check_flow_shape(self.flow, x, COMPONENT)
        target = self.target_energy(energy)
        before = _calls(target)
        state, cost = super().init_with_cost(x, target, previous=previous)
        return state, cost + EvaluationCounts(n_flow_evals=_calls(target) - before)

    def step(
        self,
        state: ChainState,
        energy: Energy,
        *,
        generator: torch.Generator | None = None,
        context: StepContext | None = None,
    ) -> tuple[ChainState, StepInfo]:
        """One global move and `local_steps` local moves (Composite's step)."""
        target = self.target_energy(energy)
        before = _calls(target)
        new_state, info = super().step(state, target, generator=generator, context=context)
        n_flow_evals = info.n_flow_evals + _calls(target) - before
        # An independence move has no step size: its NaN would only blur the stats.
        stats = {name: value for name, value in info.stats.items() if name != "global/step_size"}
        stats["flow_evals"] = torch.tensor(float(n_flow_evals), device=new_state.x.device)
        return new_state, attrs.evolve(info, n_flow_evals=n_flow_evals, stats=stats)

    def current_step_size(self) -> float:
        """The local kernel's step size."""
        if isinstance(self.local, StepScalable):
            return self.local.current_step_size()
        return math.nan

    def scale_step_size(self, factor: float) -> None:
        """Scale the local kernel's step (the global move has none)."""
        if not isinstance(self.local, StepScalable):
            raise ValueError(
                f"samplers.FlowMCMC: its local kernel {type(self.local).__name__} cannot scale "
                f"its step size, and the global move has none"
            )
        self.local.scale_step_size(factor)


def _calls(energy: Energy) -> int:
    """The flow passes a tilted energy spent (its calls), 0 for any other energy."""
    return energy.calls if isinstance(energy, TiltedEnergy) else 0
