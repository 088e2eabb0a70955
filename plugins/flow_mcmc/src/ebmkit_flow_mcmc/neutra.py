r"""neutra-MCMC: a local sampler run in a normalizing flow's latent space, states mapped back."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
import torch
from torch import Tensor

from ebmkit import (
    ChainState,
    Energy,
    EvaluationCounts,
    MarkovKernel,
    Sampler,
    StepContext,
    StepInfo,
    StepScalable,
    initialize,
    kept_from_previous,
    select_chains,
)
from ebmkit.compatibility import check_event_shape
from ebmkit_flow_mcmc.densities import (
    LATENT,
    check_finite_output,
    check_flow_shape,
    default_local_sampler,
    flow_name,
    flow_validator,
    graph_switch,
    testing_flow,
)

if TYPE_CHECKING:
    from ebmkit.testing import SamplerCase

__all__ = ["LATENT_ENERGY", "LATENT_GRAD", "LatentEnergy", "NeutraMCMC"]

LATENT_ENERGY = "neutra/energy"
"""`extras` key of Ũ(z), the latent target's energy at the chains' latents (a cache)."""

LATENT_GRAD = "neutra/grad"
"""`extras` key of ∇_z Ũ(z) (a cache, when the local kernel keeps one)."""

_LOCAL_EXTRAS = "neutra/extras/"
_LOCAL_OWNED = "local/"


@attrs.define(eq=False)
class LatentEnergy:
    """The latent target's energy Ũ(z) = E(T(z)) − log|det ∂T/∂z|, so π̃(z) ∝ exp(−Ũ(z)).

    If x ~ exp(−E) then z = T⁻¹(x) ~ π̃. Counts its calls (one flow pass each) in `calls`.

    Arguments:
        energy: E, on the data space.
        flow: T (its `inverse` maps z to x).

    Example:
        >>> from ebmkit.flows import ElementwiseAffine
        >>> flow = ElementwiseAffine(event_shape=None, loc=0.0, scale=2.0)
        >>> latent = LatentEnergy(lambda x: 0.5 * x.square().sum(1), flow)
        >>> round(latent(torch.ones(1, 1)).item(), 4)  # ½·2² − log 2
        1.3069
    """

    energy: Energy
    flow: object
    calls: int = 0

    def __call__(self, z: Tensor) -> Tensor:
        """Ũ(z), shape (B,)."""
        self.calls += 1
        x, logdet = self.flow.inverse(z)
        return self.energy(x) - logdet


def _split_owned(owned: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(the local kernel's owned entries, unprefixed; every other entry but the latent)."""
    local = {k[len(_LOCAL_OWNED) :]: v for k, v in owned.items() if k.startswith(_LOCAL_OWNED)}
    others = {k: v for k, v in owned.items() if not k.startswith(_LOCAL_OWNED) and k != LATENT}
    return local, others


@attrs.define(kw_only=True)
class NeutraMCMC(MarkovKernel):
    """A local sampler on the flow's latent target π̃(z) ∝ exp(−E(T(z)))·|det ∂T/∂z|; x = T(z).

    The flow reshapes the target (a good flow makes π̃ close to N(0, I)), the local kernel
    (MALA by default) moves z, and the chains' states are x = T(z). Exact for exp(−E)
    whenever the local kernel is exact for π̃. Unlike `FlowMCMC`, it cannot jump between
    modes the flow separates by a barrier, but it stays robust with a poor flow or in
    high dimension (Grenioux et al. 2023).

    z is the chain's coordinate in ``owned["flow/latent"]``; `init` keeps it where T(z)
    still reproduces x bit for bit and re-derives z = T⁻¹(x) elsewhere (a fresh chain, a
    chain moved by another kernel, every chain after a flow update), so a persistent chain
    is continued bit for bit and re-enters the latent space under the current flow. The
    local kernel's owned state (adapted step sizes, ages) is kept under ``local/``; its
    caches (Ũ, ∇Ũ) ride in `extras`. E(x) = Ũ(z) + log|det ∂T/∂z| is read off the local
    kernel's energy (no extra evaluation); ∇ₓE is left None.

    Costs: the local kernel's gradient evaluations of Ũ (each one gradient of E through T,
    one flow pass), plus one flow pass per step to map z back to x; `init` adds one or two
    flow passes (T⁻¹(x), and T(z) for a carried z), plus one for the inverse check.

    Arguments:
        flow: T, an exact flow (``exact_log_prob`` True), referenced, never trained here.
        local: the kernel run on the latent target (default: MALA from step 0.01, adapted
            toward acceptance 0.75 during the first 500 moves).
        n_steps: default number of steps for `sample`.
        inverse_tolerance: `init` checks that T(T⁻¹(x)) reproduces the chains it re-derives
            within this (relative to 1 + |x|), one more flow pass, and raises naming the
            flow when it does not (a non-invertible flow would move the chains without an MH
            step noticing); None skips the check.

    References:
        Hoffman, Sountsov, Dillon, Langmore, Tran & Vasudevan (2019), NeuTra-lizing bad
        geometry in Hamiltonian Monte Carlo using neural transport, arXiv:1903.03704.
        Grenioux, Durmus, Moulines & Gabrié (2023), On sampling with approximate transport
        maps, arXiv:2302.04763.

    Example:
        >>> from ebmkit.flows import ElementwiseAffine
        >>> from ebmkit import MALA
        >>> flow = ElementwiseAffine(event_shape=None, loc=0.5, scale=1.5).freeze()
        >>> sampler = NeutraMCMC(flow=flow, local=MALA(step_size=0.1))
        >>> result = sampler.sample(lambda x: 0.5 * x.square().sum(1), torch.zeros(4, 2), 10)
        >>> result.n_grad_evals, result.n_flow_evals
        (11, 23)
    """

    flow: object = attrs.field(validator=flow_validator("samplers.NeutraMCMC"))
    local: Sampler = attrs.field(factory=default_local_sampler)
    n_steps: int = attrs.field(default=100, validator=attrs.validators.ge(0))
    inverse_tolerance: float | None = attrs.field(
        default=1e-3, validator=attrs.validators.optional(attrs.validators.gt(0.0))
    )

    component = "samplers.NeutraMCMC"

    @classmethod
    def testing_cases(cls) -> list[SamplerCase]:
        """Exact cases with the off-centre flow 0.5 + 1.5·z: latent MALA at step 0.1 (about
        0.2 in x), and the same adapting for 15 steps (the continuation check's N = 10 < 15
        < 2N, so adapted step sizes and ages are carried over)."""
        from ebmkit import MALA
        from ebmkit.testing import SamplerCase

        adaptive = MALA(step_size=0.1, adapt_steps=15)
        return [
            SamplerCase(
                name="mala",
                sampler=cls(flow=testing_flow(), local=MALA(step_size=0.1)),
                exact=True,
            ),
            SamplerCase(
                name="adaptive-mala", sampler=cls(flow=testing_flow(), local=adaptive), exact=True
            ),
        ]

    def check_compatible(
        self,
        *,
        sampler: object,
        initializer: object,
        energy: object,
        shape: tuple | None,
        batch_size: int | None = None,
    ) -> None:
        """Refuse a flow built for another event shape than the chains' (the latent has the
        chains' shape); what the local kernel declares is not checked: it runs on z."""
        check_event_shape(
            self.flow,
            self.component,
            "flow",
            shape,
            f"build it for the data's shape ({flow_name(self.flow)}.event_shape or its dim)",
        )

    def init(self, x: Tensor, energy: Energy, *, previous: ChainState | None = None) -> ChainState:
        """Chains at `x`: z = the carried latent where T(z) = x exactly, else T⁻¹(x); the local
        kernel's `init` on the latent target."""
        return self.init_with_cost(x, energy, previous=previous)[0]

    def init_with_cost(
        self, x: Tensor, energy: Energy, *, previous: ChainState | None = None
    ) -> tuple[ChainState, EvaluationCounts]:
        """`init` and its cost: one to three flow passes plus the local kernel's `init`."""
        step_size, owned = kept_from_previous(x, previous)
        check_flow_shape(self.flow, x, self.component)
        carried = owned.get(LATENT)
        with graph_switch():
            z, forward_logdet = self.flow(x)
            logdet = -forward_logdet  # log|det ∂T/∂z| at z = T⁻¹(x)
            passes = 1
            if carried is not None and carried.shape == x.shape:
                carried = carried.to(x.dtype)
                back, carried_logdet = self.flow.inverse(carried)
                same = (back == x).reshape(x.shape[0], -1).all(1)
                z = select_chains(same, carried, z)
                logdet = torch.where(same, carried_logdet, logdet)
                passes = 2
        check_finite_output(z, "latent T⁻¹(x) of the chains", self.flow, self.component)
        if self.inverse_tolerance is not None:
            self._check_inverse(x, z)
            passes += 1
        local_owned, others = _split_owned(owned)
        view = ChainState(x=z, energy=None, grad=None, step_size=step_size, owned=local_owned)
        latent_energy = LatentEnergy(energy, self.flow)
        local_state, local_cost = initialize(self.local, z, latent_energy, previous=view)
        state = self._outer(x, logdet, local_state, others)
        cost = local_cost + EvaluationCounts(n_flow_evals=passes + latent_energy.calls)
        return state, cost

    def _check_inverse(self, x: Tensor, z: Tensor) -> None:
        """ValueError naming the flow when T(z) does not give back x (z = T⁻¹(x) re-derived)."""
        with torch.no_grad():
            back, _ = self.flow.inverse(z.detach())
            check_finite_output(back, "image T(T⁻¹(x)) of the chains", self.flow, self.component)
            error = ((back - x.detach()).abs() / (1 + x.detach().abs())).flatten(1).amax(1)
        worst = float(error.max())
        if not worst <= self.inverse_tolerance:
            rows = int((error > self.inverse_tolerance).sum())
            raise ValueError(
                f"{self.component}: its flow {flow_name(self.flow)} is not invertible at the "
                f"chains: T(T⁻¹(x)) misses x by up to {worst:.3g} (relative) on {rows} of "
                f"{x.shape[0]} chains, tolerance {self.inverse_tolerance}; use a bijective "
                f"flow (check it with ebmkit.testing.check_flow_invertible), run it in "
                f"float64, or raise samplers.NeutraMCMC.inverse_tolerance"
            )

    def _outer(
        self, x: Tensor, logdet: Tensor, local: ChainState, others: dict[str, Tensor]
    ) -> ChainState:
        """The data-space state of chains at x = T(z), from the local kernel's latent state."""
        extras = {_LOCAL_EXTRAS + key: value for key, value in local.extras.items()}
        value = None
        if local.energy is not None:
            extras[LATENT_ENERGY] = local.energy
            with graph_switch():
                value = local.energy + logdet  # E(T(z)) = Ũ(z) + log|det ∂T/∂z|
        if local.grad is not None:
            extras[LATENT_GRAD] = local.grad
        owned = {**others, LATENT: local.x}
        owned.update({_LOCAL_OWNED + key: kept for key, kept in local.owned.items()})
        return ChainState(
            x=x, energy=value, grad=None, step_size=local.step_size, extras=extras, owned=owned
        )

    def _latent_view(self, state: ChainState) -> ChainState | None:
        """The local kernel's state from `state`'s caches; None when they are missing."""
        if LATENT_ENERGY not in state.extras or LATENT not in state.owned:
            return None
        local_owned, _ = _split_owned(state.owned)
        extras = {
            key[len(_LOCAL_EXTRAS) :]: value
            for key, value in state.extras.items()
            if key.startswith(_LOCAL_EXTRAS)
        }
        return ChainState(
            x=state.owned[LATENT],
            energy=state.extras[LATENT_ENERGY],
            grad=state.extras.get(LATENT_GRAD),
            step_size=state.step_size,
            extras=extras,
            owned=local_owned,
        )

    def step(
        self,
        state: ChainState,
        energy: Energy,
        *,
        generator: torch.Generator | None = None,
        context: StepContext | None = None,
    ) -> tuple[ChainState, StepInfo]:
        """One move of the local kernel on the latent target, mapped back to x = T(z)."""
        cost = EvaluationCounts()
        view = self._latent_view(state)
        if view is None:  # another kernel moved x: back into the latent space first
            state, cost = self.init_with_cost(state.x, energy, previous=state)
            view = self._latent_view(state)
        _, others = _split_owned(state.owned)
        del state
        latent_energy = LatentEnergy(energy, self.flow)
        local_state, info = self.local.step(
            view, latent_energy, generator=generator, context=context
        )
        with graph_switch():
            x, logdet = self.flow.inverse(local_state.x)
        check_finite_output(x, "state x = T(z)", self.flow, self.component)
        new_state = self._outer(x, logdet, local_state, others)
        cost = (
            cost
            + EvaluationCounts.of_step(info)
            + EvaluationCounts(n_flow_evals=latent_energy.calls + 1)
        )
        flow_evals = torch.tensor(float(cost.n_flow_evals), device=x.device)
        stats = {**info.stats, "flow_evals": flow_evals}
        return new_state, StepInfo(
            acceptance_prob=info.acceptance_prob,
            accepted=info.accepted,
            step_size=info.step_size,
            n_grad_evals=cost.n_grad_evals,
            n_energy_evals=cost.n_energy_evals,
            n_flow_evals=cost.n_flow_evals,
            stats=stats,
        )

    def current_step_size(self) -> float:
        """The local kernel's step size (in latent units)."""
        if isinstance(self.local, StepScalable):
            return self.local.current_step_size()
        return float("nan")

    def scale_step_size(self, factor: float) -> None:
        """Scale the local kernel's step size."""
        if not isinstance(self.local, StepScalable):
            raise ValueError(
                f"{self.component}: its local kernel {type(self.local).__name__} cannot scale "
                f"its step size (flow {flow_name(self.flow)})"
            )
        self.local.scale_step_size(factor)
