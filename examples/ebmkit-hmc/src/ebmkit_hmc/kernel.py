r"""Hamiltonian Monte Carlo: L leapfrog steps of size ε, then an MH test on the Hamiltonian."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs
import torch
from ebmkit import (
    LONE_STEP,
    ChainState,
    Energy,
    MarkovKernel,
    StepContext,
    StepInfo,
    batch_view,
    energy_and_grad,
    gaussian_noise,
    kept_from_previous,
    metropolis_accept,
    select_chains,
)
from torch import Tensor

from ebmkit_hmc.adaptation import DualAveraging

if TYPE_CHECKING:
    from ebmkit.testing import SamplerCase

__all__ = ["HMC", "kinetic_energy"]

DIVERGENCE = 1000.0
"""|ΔH| above which a proposal counts as divergent (reported in ``stats["divergent"]``)."""


def _masses(value: float | Sequence[float]) -> float | tuple[float, ...]:
    """A scalar mass, or one mass per coordinate (a one-entry sequence is a scalar)."""
    if isinstance(value, int | float):
        return float(value)
    masses = tuple(float(m) for m in value)
    return masses[0] if len(masses) == 1 else masses


def _positive_masses(instance: HMC, attribute: attrs.Attribute, value: object) -> None:
    masses = value if isinstance(value, tuple) else (value,)
    if not masses or not all(m > 0 for m in masses):
        raise ValueError(
            f"samplers.HMC.mass must be > 0 (a number or one per coordinate), got {value}"
        )


def kinetic_energy(momentum: Tensor, mass: Tensor) -> Tensor:
    """K(p) = ½ pᵀM⁻¹p per chain (B,), M diagonal (`mass` broadcasts against `momentum`)."""
    return 0.5 * (momentum.square() / mass).flatten(1).sum(1)


@attrs.define(kw_only=True)
class HMC(MarkovKernel):
    """HMC: momentum p ~ N(0, M), L leapfrog steps of size ε on H = E(x) + ½pᵀM⁻¹p, MH accept.

    The leapfrog map is volume-preserving and reversible, so accepting with
    min(1, exp(H(x, p) − H(x′, p′))) leaves exp(−E) invariant for any ε, L and mass: the
    kernel is exact. Each step costs L gradient evaluations (∇E at the start is the cached
    one; one more when the state comes without ∇E). Per-chain acceptance is reported, and
    ``stats["divergent"]`` is the fraction of proposals whose |ΔH| exceeded 1000.

    With ``adapt_steps > 0`` each chain's ε follows dual averaging toward
    `target_acceptance` during its first `adapt_steps` steps (counted per chain in
    ``owned["age"]``, so a persistent chain adapts once over its rounds), then keeps the
    averaged ε̄. While a chain adapts, its kernel depends on its past and is NOT exact;
    afterwards it is. Adaptation acts only when the step context allows it.

    Arguments:
        step_size: ε > 0 (the starting value when adapting).
        n_leapfrog: L ≥ 1 leapfrog steps per proposal.
        mass: the diagonal mass matrix M: one number (M = m·I) or one per coordinate of a
            sample (a flattened (d,) tuple, e.g. ``(1.0, 4.0)`` for 2-D points).
        n_steps: default number of steps for `sample`.
        adapt_steps: each chain's adaptive steps (0: a fixed ε).
        target_acceptance: what the adaptation aims at.

    References:
        Duane, Kennedy, Pendleton & Roweth (1987), Hybrid Monte Carlo; Neal (2011), MCMC
        using Hamiltonian dynamics; Hoffman & Gelman (2014), The No-U-Turn Sampler (dual
        averaging, Algorithm 5).

    Example:
        >>> sampler = HMC(step_size=0.3, n_leapfrog=3, n_steps=10)
        >>> result = sampler.sample(lambda x: 0.5 * x.square().sum(1), torch.zeros(4, 2))
        >>> result.n_grad_evals  # 1 at init + 3 per step
        31
    """

    step_size: float = attrs.field(converter=float, validator=attrs.validators.gt(0.0))
    n_leapfrog: int = attrs.field(default=5, validator=attrs.validators.ge(1))
    mass: float | tuple[float, ...] = attrs.field(
        default=1.0, converter=_masses, validator=_positive_masses
    )
    n_steps: int = attrs.field(default=100, validator=attrs.validators.ge(0))
    adapt_steps: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    target_acceptance: float = attrs.field(
        default=0.65, validator=[attrs.validators.gt(0.0), attrs.validators.lt(1.0)]
    )

    @classmethod
    def testing_cases(cls) -> list[SamplerCase]:
        """Exact cases for `ebmkit.testing`: unit mass, and a scalar mass adapting for 15 steps
        (between the continuation check's N = 10 and 2N, so the adapted ε is carried)."""
        from ebmkit.testing import SamplerCase

        return [
            SamplerCase(name="leapfrog-2", sampler=HMC(step_size=0.3, n_leapfrog=2), exact=True),
            SamplerCase(
                name="adaptive-mass",
                sampler=HMC(step_size=0.1, n_leapfrog=2, mass=0.5, adapt_steps=15),
                exact=True,
            ),
        ]

    @property
    def adaptation(self) -> DualAveraging | None:
        """The dual averaging scheme when adapting, else None."""
        if not self.adapt_steps:
            return None
        return DualAveraging(steps=self.adapt_steps, target_acceptance=self.target_acceptance)

    def init(self, x: Tensor, energy: Energy, *, previous: ChainState | None = None) -> ChainState:
        """Chains at `x` with E, ∇E and per-chain ε; a continued chain keeps its ε and its
        adaptation state (a NaN ε, a persistent bank's "not set yet", becomes `step_size`)."""
        step_size, owned = kept_from_previous(x, previous)
        if step_size is None:
            step_size = torch.full(x.shape[:1], self.step_size, device=x.device, dtype=x.dtype)
        else:
            step_size = torch.where(step_size.isnan(), self.step_size, step_size)
        if (adaptation := self.adaptation) is not None:
            owned = adaptation.resolve(owned, step_size)
        value, grad = energy_and_grad(energy, x)
        return ChainState(x=x, energy=value, grad=grad, step_size=step_size, owned=owned)

    def mass_like(self, x: Tensor) -> Tensor:
        """M's diagonal shaped to broadcast against a batch `x` (B, ...)."""
        mass = torch.as_tensor(self.mass, dtype=x.dtype, device=x.device)
        if mass.dim() == 0:
            return mass
        if mass.numel() != x[0].numel():
            raise ValueError(
                f"samplers.HMC.mass has {mass.numel()} entries but a sample has "
                f"{x[0].numel()} coordinates {tuple(x.shape[1:])}; give one mass per "
                f"coordinate or a single number"
            )
        return mass.reshape(x.shape[1:])

    def step(
        self,
        state: ChainState,
        energy: Energy,
        *,
        generator: torch.Generator | None = None,
        context: StepContext | None = None,
    ) -> tuple[ChainState, StepInfo]:
        """One HMC transition: fresh momentum, L leapfrog steps, the MH test on H."""
        context = LONE_STEP if context is None else context
        n_grad_evals = self.n_leapfrog
        if state.grad is None:  # evaluate E and ∇E here (E alone may be set: it is redone)
            n_grad_evals += 1
            state = self.init(state.x, energy, previous=state)
        elif state.step_size is None:  # a state another kernel made: HMC's own ε starts
            step_size = torch.full_like(state.energy, self.step_size, dtype=state.x.dtype)
            state = attrs.evolve(state, step_size=step_size)
        x, step_size, mass = state.x, state.step_size, self.mass_like(state.x)
        momentum = mass.sqrt() * gaussian_noise(x, generator)
        proposal, new_momentum, proposal_energy, proposal_grad = self.leapfrog(
            x, momentum, state.grad, energy, batch_view(step_size, x), mass
        )
        delta = (proposal_energy + kinetic_energy(new_momentum, mass)) - (
            state.energy + kinetic_energy(momentum, mass)
        )
        accepted, acceptance_prob = metropolis_accept(-delta, generator)
        owned = state.owned
        if (adaptation := self.adaptation) is not None and context.adapt:
            step_size, owned = adaptation.update(step_size, owned, acceptance_prob, self.step_size)
        new_state = ChainState(
            x=select_chains(accepted, proposal, x),
            energy=torch.where(accepted, proposal_energy, state.energy),
            grad=select_chains(accepted, proposal_grad, state.grad),
            step_size=step_size,
            owned=owned,  # no extras: x moved, and HMC caches none of its own
        )
        divergent = ~(delta.abs() <= DIVERGENCE)  # NaN counts as divergent
        info = StepInfo(
            acceptance_prob=acceptance_prob,
            accepted=accepted,
            step_size=step_size,
            n_grad_evals=n_grad_evals,
            stats={"divergent": divergent.to(x.dtype)},
        )
        return new_state, info

    def leapfrog(
        self, x: Tensor, momentum: Tensor, grad: Tensor, energy: Energy, eps: Tensor, mass: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """L leapfrog steps from (x, p) with ∇E(x) given: (x_L, p_L, E(x_L), ∇E(x_L)).

        Half a momentum step, then L position steps each followed by a full momentum step,
        the last one a half step; L gradient evaluations.
        """
        momentum = momentum - 0.5 * eps * grad
        for index in range(self.n_leapfrog):
            x = x + eps * momentum / mass
            value, grad = energy_and_grad(energy, x)
            scale = 0.5 if index == self.n_leapfrog - 1 else 1.0
            momentum = momentum - scale * eps * grad
        return x, momentum, value, grad
