r"""What the flow's independence moves (IMH, i-SIR) share: cached scores at init, their step
record, and having no step size."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ebmkit import ChainState, Energy, EvaluationCounts, MarkovKernel, StepInfo
from ebmkit.compatibility import check_event_shape
from ebmkit_flow_mcmc.densities import flow_name, no_step_size, scored_init

__all__ = ["IndependenceMove"]


class IndependenceMove(MarkovKernel):
    """Base of a kernel proposing from a flow, independently of the current point.

    `init` caches E(x) (``state.energy``) and log λ(x) (``extras["flow/log_prob"]``) with one
    energy-only evaluation and one or two flow passes, never ∇E; such a move has no step
    size (NaN, and `scale_step_size` refuses). Subclasses hold `flow` and write `step`.
    """

    flow: object
    component: str

    def check_compatible(
        self,
        *,
        sampler: object,
        initializer: object,
        energy: object,
        shape: tuple | None,
        batch_size: int | None = None,
    ) -> None:
        """Refuse a proposal flow built for another event shape than the chains'."""
        check_event_shape(
            self.flow,
            self.component,
            "proposal flow",
            shape,
            f"build it for the data's shape ({flow_name(self.flow)}.event_shape or its dim)",
        )

    def init(self, x: Tensor, energy: Energy, *, previous: ChainState | None = None) -> ChainState:
        """Chains at `x` with E(x) and log λ(x) cached (no gradient)."""
        return self.init_with_cost(x, energy, previous=previous)[0]

    def init_with_cost(
        self, x: Tensor, energy: Energy, *, previous: ChainState | None = None
    ) -> tuple[ChainState, EvaluationCounts]:
        """`init` and its cost: one energy-only evaluation and one or two flow passes."""
        return scored_init(self.flow, x, energy, previous, self.component)

    @staticmethod
    def move_info(
        acceptance_prob: Tensor, accepted: Tensor, cost: EvaluationCounts, x: Tensor
    ) -> StepInfo:
        """The step record of an independence move: its acceptance and its costs."""
        return StepInfo(
            acceptance_prob=acceptance_prob,
            accepted=accepted,
            step_size=no_step_size(x),
            n_grad_evals=0,
            n_energy_evals=cost.n_energy_evals,
            n_flow_evals=cost.n_flow_evals,
            stats={"flow_evals": torch.tensor(float(cost.n_flow_evals), device=x.device)},
        )

    def current_step_size(self) -> float:
        """NaN: an independence move has no step size."""
        return math.nan

    def scale_step_size(self, factor: float) -> None:
        """Refused: an independence move has no step to shrink."""
        raise ValueError(
            f"{self.component} proposes from its flow ({flow_name(self.flow)}), so it has "
            f"no step size to scale (factor {factor}); roll back with a smaller step only "
            f"through a kernel that has one (e.g. samplers.FlowMCMC scales its local stage)"
        )
