r"""What the flow kernels share: checking the flow, scoring E and log λ, proposing from the flow.

Notation (ebmkit's sign convention, p ∝ exp(−E)): the flow T maps base points z ~ N(0, I) to
x = T(z); its density is log λ(x) = log N(T⁻¹(x)) + log|det ∂T⁻¹/∂x|, and for a proposal made
from z, log λ(T(z)) = log N(z) − log|det ∂T/∂z| (no forward pass needed).

Two per-chain entries ride along in a `ChainState`:

- ``extras["flow/log_prob"]`` (`LOG_PROB`): log λ(x), a cache, dropped by any kernel that moves
  x and recomputed by `current_log_prob` (the pass `init` makes).
- ``owned["flow/latent"]`` (`LATENT`): the base point z of the proposal that put the chain at
  x (T(z) = x bit for bit), NaN when the chain got to x otherwise. It is carried so that a
  continued chain recomputes log λ(x) by the same formula its proposal used: a chain continued
  through a persistent bank is then bit-identical to one run without a break.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import attrs
import torch
from torch import Tensor

from ebmkit import (
    MALA,
    ChainState,
    DivergenceError,
    Energy,
    EvaluationCounts,
    batch_view,
    is_differentiable,
    kept_from_previous,
)
from ebmkit.flows import standard_normal_log_prob

__all__ = [
    "LATENT",
    "LOG_PROB",
    "TiltedEnergy",
    "base_noise",
    "cached_scores",
    "check_finite_output",
    "check_log_density",
    "check_flow",
    "check_flow_shape",
    "current_log_prob",
    "default_local_sampler",
    "energy_only",
    "flow_name",
    "flow_validator",
    "graph_switch",
    "inside_support",
    "no_step_size",
    "propose",
    "scored_init",
    "split_tilt",
    "testing_flow",
]

LOG_PROB = "flow/log_prob"
"""`extras` key of log λ(x), the flow's log-density at the chains (a cache)."""

LATENT = "flow/latent"
"""`owned` key of the base point z with T(z) = x exactly (NaN where unknown)."""

_REQUIRED = ("forward", "inverse", "log_prob")


def flow_name(flow: object) -> str:
    """The flow's gin name (``flows.Affine``), or its class name for a flow from elsewhere."""
    return str(getattr(flow, "component_name", type(flow).__name__))


def check_flow(flow: object, component: str) -> None:
    """Raise when `flow` is not an exact flow a flow kernel can use.

    Arguments:
        flow: the candidate.
        component: the gin name of the kernel holding it, for the message.

    Raises:
        TypeError: `flow` lacks forward / inverse / log_prob.
        ValueError: its `log_prob` is a stochastic estimate (``exact_log_prob = False``).
    """
    missing = [name for name in _REQUIRED if not callable(getattr(flow, name, None))]
    if missing:
        raise TypeError(
            f"{component}.flow must be a flow (forward, inverse, log_prob), e.g. "
            f"@flows.Affine() or @flows.RealNVP(); got a {type(flow).__name__} without "
            f"{', '.join(missing)}"
        )
    if not getattr(flow, "exact_log_prob", True):
        raise ValueError(
            f"{component}: the flow {flow_name(flow)} has a stochastic log-density "
            f"(exact_log_prob = False), but its Metropolis–Hastings ratio and importance "
            f"weights need the exact λ(x); use an exactly invertible flow with exact "
            f"densities (e.g. @flows.RealNVP(), @flows.Affine())"
        )


def flow_validator(component: str) -> Callable[[object, attrs.Attribute, object], None]:
    """An attrs validator running `check_flow` for the kernel named `component`."""

    def validate(instance: object, attribute: attrs.Attribute, value: object) -> None:
        check_flow(value, component)

    return validate


def check_flow_shape(flow: object, x: Tensor, component: str) -> None:
    """Raise ValueError when the chains' sample shape is not the flow's event shape."""
    event_shape = getattr(flow, "event_shape", None)
    if event_shape is None:
        return
    sample_shape = tuple(x.shape[1:])
    if sample_shape != tuple(event_shape):
        raise ValueError(
            f"{component}: its flow {flow_name(flow)} has event_shape {tuple(event_shape)} "
            f"but the chains are {sample_shape} per sample (batch {tuple(x.shape)}); build "
            f"the flow for the data's shape (e.g. flows.Affine.dim = {math.prod(sample_shape)}"
            f" or {flow_name(flow)}.event_shape = {sample_shape})"
        )


@contextlib.contextmanager
def graph_switch() -> Iterator[None]:
    """No autograd graph for energy-only and flow evaluations, unless the chains are run with
    ``differentiable=True`` (then everything stays on the graph)."""
    if is_differentiable():
        yield
    else:
        with torch.no_grad():
            yield


def energy_only(energy: Energy, x: Tensor) -> Tensor:
    """E(x) without a gradient (one energy-only evaluation), shape (B,)."""
    with graph_switch():
        value = energy(x)
    if value.shape != x.shape[:1]:
        raise ValueError(
            f"an energy must map a batch (B, ...) to shape (B,), got {tuple(value.shape)} "
            f"for input {tuple(x.shape)}; reduce the last layer to one number per sample"
        )
    return value


def check_finite_output(value: Tensor, what: str, flow: object, component: str) -> Tensor:
    """`value`, or DivergenceError naming the kernel and its flow when some entry is not finite.

    One host synchronisation per call: a non-finite proposal would otherwise be rejected
    silently in every step (a flow that diverged looks like a sampler that never moves).
    """
    if not bool(torch.isfinite(value).all()):
        rows = int((~torch.isfinite(value)).reshape(value.shape[0], -1).any(1).sum())
        raise DivergenceError(
            f"{component}: its flow {flow_name(flow)} gave a non-finite {what} ({rows} of "
            f"{value.shape[0]} chains)",
            -1,
            "lower the flow's learning rate or clip its gradient (grad_clip), or start it "
            "nearer the identity",
        )
    return value


def check_log_density(value: Tensor, what: str, flow: object, component: str) -> Tensor:
    """`value`, or DivergenceError like `check_finite_output` when an entry is NaN or +∞.

    −∞ is a valid log-density at the chains: a flow with bounded support (`flows.Glow`'s
    logit pre-processing) gives it where a local move or the initial noise put a chain
    outside that support. An independence move from there is then never accepted (its ratio
    λ(x)/λ(x') is 0) and i-SIR keeps the chain, while the local moves go on.
    """
    bad = torch.isnan(value) | torch.isposinf(value)
    if bool(bad.any()):
        rows = int(bad.reshape(value.shape[0], -1).any(1).sum())
        raise DivergenceError(
            f"{component}: its flow {flow_name(flow)} gave a NaN or +inf {what} ({rows} of "
            f"{value.shape[0]} chains)",
            -1,
            "lower the flow's learning rate or clip its gradient (grad_clip), or start it "
            "nearer the identity",
        )
    return value


def base_noise(flow: object, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """z ~ N(0, I) shaped like `like` (one per chain), drawn from `generator`."""
    draw = getattr(flow, "base_noise", None)
    if callable(draw):
        return draw(like.shape[0], generator=generator, like=like)
    return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)


def propose(
    flow: object, like: Tensor, generator: torch.Generator | None, component: str
) -> tuple[Tensor, Tensor, Tensor]:
    """One flow proposal per chain: (x' = T(z), z, log λ(x') = log N(z) − log|det ∂T/∂z|).

    One flow pass (the inverse); raises DivergenceError on a non-finite x' or log λ(x').
    """
    z = base_noise(flow, like, generator)
    with graph_switch():
        proposal, logdet = flow.inverse(z)
        log_prob = standard_normal_log_prob(z) - logdet
    check_finite_output(proposal, "proposal x' = T(z)", flow, component)
    check_finite_output(log_prob, "log-density log λ(x') of its proposal", flow, component)
    return proposal, z, log_prob


def inside_support(flow: object, x: Tensor) -> Tensor:
    """(B,) bool: which chains lie inside the flow's `support` (all True for a flow on Rᴰ)."""
    support = getattr(flow, "support", None)
    if support is None:
        return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    low, high = support
    return ((x > low) & (x < high)).reshape(x.shape[0], -1).all(1)


def current_log_prob(
    flow: object, x: Tensor, latent: Tensor | None, component: str
) -> tuple[Tensor, Tensor, int]:
    """log λ(x) at the chains, the latent to carry on, and the flow passes spent.

    Where the carried `latent` z reproduces x exactly (T(z) = x bit for bit: the chain sits
    where a proposal from z put it), log λ(x) = log N(z) − log|det ∂T/∂z|, the value that
    proposal was scored with; elsewhere (x moved by another kernel, the flow was updated, a
    fresh chain) log λ(x) = log N(T⁻¹x) + log|det ∂T⁻¹/∂x| by a forward pass, and the latent
    becomes NaN. `init` and a step that finds the cache missing both call this, so the cache
    is one function of (x, latent, flow).

    Returns:
        (log λ(x) (B,), the latent to carry (B, ...), flow passes: 1, or 2 with a latent).
    """
    check_flow_shape(flow, x, component)
    with graph_switch():
        inside = inside_support(flow, x)
        z, logdet = flow(torch.where(batch_view(inside, x), x, torch.zeros_like(x)))
        log_prob = standard_normal_log_prob(z) + logdet
        log_prob = log_prob.masked_fill(~inside, -math.inf)  # λ(x) = 0 outside its support
        unknown = torch.full_like(x, math.nan)
        passes = 1
        if latent is not None and latent.shape == x.shape:
            latent = latent.to(x.dtype)
            back, inverse_logdet = flow.inverse(latent)
            same = (back == x).reshape(x.shape[0], -1).all(1)
            from_latent = standard_normal_log_prob(latent) - inverse_logdet
            log_prob = torch.where(same, from_latent, log_prob)
            carried = torch.where(batch_view(same, x), latent, unknown)
            passes = 2
        else:
            carried = unknown
    check_log_density(log_prob, "log-density log λ(x) at the chains", flow, component)
    return log_prob, carried, passes


def scored_init(
    flow: object, x: Tensor, energy: Energy, previous: ChainState | None, component: str
) -> tuple[ChainState, EvaluationCounts]:
    """The `init` of the flow kernels (`FlowIMH`, `ISIR`) and its cost.

    Chains at `x` with U(x) in ``energy`` (E, or E − log λ on a tilted energy of this flow)
    and log λ(x) in ``extras["flow/log_prob"]``, both without a gradient (∇E stays None);
    what the chains own is kept from `previous`, the latent re-checked (`current_log_prob`).
    Costs one energy-only evaluation and one flow pass (two with a carried latent).
    """
    step_size, owned = kept_from_previous(x, previous)
    base, tilted = split_tilt(energy, flow)
    log_prob, latent, passes = current_log_prob(flow, x, owned.get(LATENT), component)
    value = energy_only(base, x)
    with graph_switch():
        value = value - log_prob if tilted else value
    state = ChainState(
        x=x,
        energy=value,
        grad=None,
        step_size=step_size,
        extras={LOG_PROB: log_prob},
        owned={**owned, LATENT: latent},
    )
    return state, EvaluationCounts(n_energy_evals=1, n_flow_evals=passes)


def testing_flow() -> object:
    """The flow of the plugin's `testing_cases`: x = 0.5 + 1.5·z on every coordinate, frozen.

    Off-centre and wider than the checks' targets, so the MH correction matters; scalar
    parameters, so it maps the checks' (2,), (1,) and (3, 4, 4) chains alike.
    """
    from ebmkit.flows import ElementwiseAffine

    return ElementwiseAffine(event_shape=None, loc=0.5, scale=1.5).freeze()


def default_local_sampler() -> MALA:
    """The local move of the reference code: MALA from step 0.01, adapted toward acceptance
    0.75 during each chain's first 500 moves (its burn-in), then fixed (exact)."""
    return MALA(step_size=0.01, adapt_steps=500, target_acceptance=0.75)


def no_step_size(like: Tensor) -> Tensor:
    """The `StepInfo.step_size` of a kernel without one: NaN (a scalar on `like`'s device)."""
    return torch.full((), math.nan, device=like.device)


def cached_scores(
    state: ChainState, energy: Energy, tilted: bool, flow: object, component: str
) -> tuple[Tensor, Tensor, Tensor, EvaluationCounts]:
    """U(x), log λ(x) and the latent at the chains, from the state's caches or recomputed.

    U is the energy the chains target (E, or E − log λ when `tilted`). A state whose
    ``extras["flow/log_prob"]`` is missing (another kernel moved x) gets it recomputed by
    `current_log_prob`, the pass `init` makes; a missing E (the end of an unadjusted run)
    costs one energy-only evaluation.

    Returns:
        (U(x), log λ(x), the latent to carry, what recomputing cost).
    """
    latent = state.owned.get(LATENT)
    log_prob = state.extras.get(LOG_PROB)
    cost = EvaluationCounts()
    if log_prob is None or latent is None:
        log_prob, latent, passes = current_log_prob(flow, state.x, latent, component)
        cost = cost + EvaluationCounts(n_flow_evals=passes)
    value = state.energy
    if value is None:
        value = energy_only(energy, state.x)
        value = value - log_prob if tilted else value
        cost = cost + EvaluationCounts(n_energy_evals=1)
    return value, log_prob, latent, cost


@attrs.define(eq=False)
class TiltedEnergy:
    """The EBM tilted by the flow: energy E(x) − log λ(x), density p ∝ λ(x)·exp(−E(x)).

    What `FlowMCMC(tilt=True)` runs its stages on. Counts its calls (each costs a flow pass)
    in `calls`, so the kernel using it can report its flow evaluations.

    Arguments:
        energy: the trained energy E.
        flow: the flow λ.

    Example:
        >>> from ebmkit.flows import ElementwiseAffine
        >>> flow = ElementwiseAffine(event_shape=None, loc=1.0, scale=2.0)
        >>> tilted = TiltedEnergy(lambda x: 0.5 * x.square().sum(1), flow)
        >>> x = torch.zeros(3, 2)
        >>> torch.allclose(tilted(x), -flow.log_prob(x)), tilted.calls
        (True, 1)
    """

    energy: Energy
    flow: object
    calls: int = 0

    def __call__(self, x: Tensor) -> Tensor:
        """E(x) − log λ(x), shape (B,)."""
        self.calls += 1
        return self.energy(x) - self.flow.log_prob(x)


def split_tilt(energy: Energy, flow: object) -> tuple[Energy, bool]:
    """(E, True) when `energy` is E tilted by this very `flow`, else (`energy`, False).

    A flow kernel on a tilted energy E − log λ proposing from λ needs only E: λ cancels from
    its ratio (log A = E(x) − E(x')), and so no forward pass at the proposal is spent.
    """
    if isinstance(energy, TiltedEnergy) and energy.flow is flow:
        return energy.energy, True
    return energy, False
