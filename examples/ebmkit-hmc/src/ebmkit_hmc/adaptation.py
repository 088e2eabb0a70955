r"""Per-chain dual averaging of the step size (Hoffman & Gelman 2014, Algorithm 5)."""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor

__all__ = ["AGE", "GAP_AVERAGE", "LOG_STEP_AVERAGE", "DualAveraging"]

AGE = "age"
"""`owned` key: the adaptive steps each chain has taken (int64)."""

GAP_AVERAGE = "acceptance_gap_average"
"""`owned` key: H̄, the running average of (target acceptance − acceptance)."""

LOG_STEP_AVERAGE = "log_step_size_average"
"""`owned` key: log ε̄, the averaged log step size the chain keeps once adaptation ends."""


@attrs.frozen(kw_only=True)
class DualAveraging:
    r"""Nesterov dual averaging of log ε toward a target acceptance, one chain at a time.

    At a chain's t-th adaptive step (t = age + 1), with acceptance probability α:

    - H̄ ← (1 − 1/(t + t0))·H̄ + (δ − α)/(t + t0)
    - log ε ← μ − √t/γ · H̄, with μ = log(10·ε₀)
    - log ε̄ ← t^(−κ)·log ε + (1 − t^(−κ))·log ε̄

    and after its last adaptive step the chain keeps ε̄. While a chain adapts its kernel
    depends on its past, so it is not exact; afterwards it is.

    Arguments:
        steps: the adaptive steps of each chain's life.
        target_acceptance: δ (0.65 is the usual HMC target; Beskos et al. 2013 give 0.651
            as optimal in high dimension).
        gamma, t0, kappa: the scheme's constants (defaults of Hoffman & Gelman).
    """

    steps: int = attrs.field(validator=attrs.validators.ge(1))
    target_acceptance: float = attrs.field(
        default=0.65, validator=[attrs.validators.gt(0.0), attrs.validators.lt(1.0)]
    )
    gamma: float = attrs.field(default=0.05, validator=attrs.validators.gt(0.0))
    t0: float = attrs.field(default=10.0, validator=attrs.validators.ge(0.0))
    kappa: float = attrs.field(default=0.75, validator=[attrs.validators.gt(0.5)])

    def start(self, like: Tensor) -> dict[str, Tensor]:
        """The owned entries of chains that have not adapted yet (B chains of `like`)."""
        zeros = torch.zeros(like.shape[:1], device=like.device, dtype=like.dtype)
        return {AGE: zeros.to(torch.int64), GAP_AVERAGE: zeros, LOG_STEP_AVERAGE: zeros.clone()}

    def resolve(self, owned: dict[str, Tensor], like: Tensor) -> dict[str, Tensor]:
        """`owned` with this scheme's entries present, "not set yet" (NaN) ones at their start."""
        fresh = self.start(like)
        if AGE not in owned:
            return {**owned, **fresh}
        resolved = dict(owned)
        for key in (GAP_AVERAGE, LOG_STEP_AVERAGE):
            value = owned.get(key, fresh[key])
            resolved[key] = torch.where(value.isnan(), fresh[key], value)
        return resolved

    def update(
        self,
        step_size: Tensor,
        owned: dict[str, Tensor],
        acceptance_prob: Tensor,
        initial_step_size: float,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The step sizes and owned entries after one step with acceptance `acceptance_prob`.

        Chains older than `steps` keep theirs unchanged; every chain's age grows by one.
        """
        owned = self.resolve(owned, step_size)
        age = owned[AGE]
        adapting = age < self.steps
        t = (age + 1).to(step_size.dtype)
        weight = 1.0 / (t + self.t0)
        gap = (1 - weight) * owned[GAP_AVERAGE] + weight * (
            self.target_acceptance - acceptance_prob.to(step_size.dtype)
        )
        log_step = math.log(10.0 * initial_step_size) - t.sqrt() / self.gamma * gap
        eta = t.pow(-self.kappa)
        log_average = eta * log_step + (1 - eta) * owned[LOG_STEP_AVERAGE]
        finished = age + 1 == self.steps
        adapted = torch.where(finished, log_average.exp(), log_step.exp())
        return torch.where(adapting, adapted, step_size), {
            **owned,
            AGE: age + 1,
            GAP_AVERAGE: torch.where(adapting, gap, owned[GAP_AVERAGE]),
            LOG_STEP_AVERAGE: torch.where(adapting, log_average, owned[LOG_STEP_AVERAGE]),
        }
