r"""STANLEY / AniLA: Langevin with a gradient-dependent diagonal step Γ(x), optionally MH-exact."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import attrs
import torch
from torch import Tensor

from ebmkit import (
    LONE_STEP,
    ChainState,
    Energy,
    MarkovKernel,
    StepContext,
    StepInfo,
    batch_view,
    check_clamp,
    diagonal_gaussian_log_prob,
    energy_and_grad,
    gaussian_noise,
    kept_from_previous,
    metropolis_accept,
    select_chains,
)
from ebmkit.validators import one_of

if TYPE_CHECKING:
    from ebmkit.testing import SamplerCase

__all__ = [
    "LEGACY_NOISE_SCALE",
    "REDUCTIONS",
    "Stanley",
    "anisotropic_step_size",
    "gradient_magnitude",
    "metropolis_log_ratio",
    "proposal_log_prob",
    "proposal_mean",
]

REDUCTIONS = ("elementwise", "channel", "sample")
"""How r(x), the gradient magnitude that sets Γ(x), is taken: see `gradient_magnitude`."""

LEGACY_NOISE_SCALE = 0.01
"""The authors' image code's default noise `eps` (used only with ``legacy_code=True``)."""

_FINITE_POSITIVE = [attrs.validators.gt(0.0), attrs.validators.lt(math.inf)]


def gradient_magnitude(grad: Tensor, reduce: str) -> Tensor:
    """r(x), shaped like `grad`: the gradient size that sets each coordinate's step.

    Arguments:
        grad: ∇ₓE at the chains, shape (B, ...) with at least one dimension after B.
        reduce: "elementwise": r_i = |g_i| (the paper: one step per coordinate);
            "channel": the L2 norm of g over dimension 1, shared by the channels of a pixel
            (the authors' image code); "sample": the L2 norm of each sample's whole gradient
            (the authors' toy code).

    Returns:
        r, same shape as `grad` (the reductions are broadcast views, not copies).
    """
    if reduce == "elementwise":
        return grad.abs()
    if grad.dim() < 2:
        raise ValueError(
            f"reduce={reduce!r} needs chains shaped (B, ...), got {tuple(grad.shape)}"
        )
    if reduce == "channel":
        return torch.linalg.vector_norm(grad, dim=1, keepdim=True).expand_as(grad)
    if reduce == "sample":
        return batch_view(torch.linalg.vector_norm(grad.flatten(1), dim=1), grad).expand_as(grad)
    raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")


def anisotropic_step_size(grad: Tensor, step_size: float, th: float, reduce: str) -> Tensor:
    """Γ(x) = diag(γᵢ), γᵢ = step_size · th / max(th, rᵢ(x)), shaped like `grad`.

    γᵢ equals `step_size` where the gradient is below the threshold and shrinks as th/rᵢ
    above it. The ratio th / max(th, r) is formed first, so it is exactly 1 below the
    threshold and Γ is then exactly step_size·I (the ULA limit holds bit for bit).

    Arguments:
        grad: ∇ₓE(x), shape (B, ...).
        step_size: ε > 0, the largest step.
        th: the threshold > 0 on the gradient magnitude.
        reduce: how rᵢ is taken (see `gradient_magnitude`).
    """
    magnitude = gradient_magnitude(grad, reduce)
    return step_size * (th / magnitude.clamp(min=th))


def proposal_mean(x: Tensor, grad: Tensor, gamma: Tensor) -> Tensor:
    """μ(x) = x − ½ Γ(x) ∇E(x), the centre of the STANLEY proposal from x."""
    return x - (0.5 * gamma) * grad


def proposal_log_prob(y: Tensor, x: Tensor, grad: Tensor, gamma: Tensor) -> Tensor:
    """log q(y | x) = log N(y; μ(x), Γ(x)) per chain (B,), with its normalising term.

    Arguments:
        y: where the proposal lands, shape (B, ...).
        x: where it starts, with `grad` = ∇E(x) and `gamma` = Γ(x) (both shaped like x).

    Returns:
        −Σᵢ [ (yᵢ − μᵢ(x))² / (2γᵢ(x)) + ½ log(2π γᵢ(x)) ], shape (B,). The log-det term
        depends on x through Γ(x), so it does not cancel in an MH ratio.
    """
    return diagonal_gaussian_log_prob(y, proposal_mean(x, grad, gamma), gamma)


def metropolis_log_ratio(current: ChainState, proposal: ChainState) -> Tensor:
    """log α-ratio = E(x) − E(y) + log q(x|y) − log q(y|x), per chain (B,).

    The reverse density q(x|y) uses μ(y) and Γ(y), both from the gradient at y; states
    must carry E, ∇E and ``extras["gamma"]`` (as `Stanley.init` makes them).
    """
    forward = proposal_log_prob(proposal.x, current.x, current.grad, current.extras["gamma"])
    reverse = proposal_log_prob(current.x, proposal.x, proposal.grad, proposal.extras["gamma"])
    return current.energy - proposal.energy + reverse - forward


@attrs.define(kw_only=True)
class Stanley(MarkovKernel):
    """STANLEY (AniLA): Langevin whose diagonal step Γ(x) shrinks where the gradient is large.

    Each chain moves as x' = x − ½ Γ(x) ∇E(x) + Γ(x)^{1/2} ξ, ξ ~ N(0, I), with
    Γ(x) = diag(γᵢ(x)), γᵢ(x) = step_size · th / max(th, rᵢ(x)) and rᵢ the gradient size
    chosen by `reduce`. Because Γ depends on x the unadjusted chain is biased even for small
    steps (its continuous limit lacks the drift ½ ∂ᵢγᵢ); with ``metropolis=True`` the move is
    a proposal accepted with min(1, π(y) q(x|y) / (π(x) q(y|x))), q(·|y) = N(μ(y), Γ(y)),
    which leaves exp(−E) exactly invariant. E, ∇E and Γ are cached at the accepted state, so
    a step costs one gradient evaluation either way.

    Arguments:
        step_size: ε > 0, the step where the gradient is below the threshold (the paper: 1).
        th: the gradient threshold > 0 above which γᵢ = ε·th/rᵢ.
        reduce: "elementwise" (rᵢ = |gᵢ|, the paper), "channel" (L2 over dim 1, the
            authors' image code) or "sample" (L2 over each sample, the authors' toy code).
        metropolis: add the Metropolis–Hastings correction (exact; off in the paper's
            Algorithm 1 and the code).
        legacy_code: reproduce the authors' image-code update x ← x − ∇E(x) + Γ(x)(σξ), in
            which Γ scales only the noise (σ = `noise_scale`; `step_size` then scales only
            the noise too). Not Langevin-consistent; cannot be combined with `metropolis`.
        noise_scale: σ of `legacy_code` (default 0.01, the code's `eps`); an error otherwise.
        n_steps: default number of steps for `sample` (the code: K = 100 short-run steps).
        clamp: keep x inside (low, high), e.g. (−1, 1) for images. Unadjusted moves are
            clipped to the box; with `metropolis` a proposal outside it is rejected instead,
            which is exact for exp(−E) restricted to the box.

    References:
        Karimi, Xie & Li (2023), STANLEY: Stochastic Gradient Anisotropic Langevin Dynamics
        for Learning Energy-Based Models, arXiv:2310.12667.

    Example:
        >>> import torch
        >>> sampler = Stanley(step_size=0.5, th=0.5, metropolis=True, n_steps=10)
        >>> result = sampler.sample(lambda x: 0.5 * x.square().sum(1), torch.zeros(4, 2))
        >>> result.x.shape, result.acceptance_rate.shape, result.n_grad_evals
        (torch.Size([4, 2]), torch.Size([4]), 11)
    """

    step_size: float = attrs.field(default=1.0, converter=float, validator=_FINITE_POSITIVE)
    th: float = attrs.field(default=1e-3, converter=float, validator=_FINITE_POSITIVE)
    reduce: str = attrs.field(default="elementwise", validator=one_of(*REDUCTIONS))
    metropolis: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    legacy_code: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    noise_scale: float | None = attrs.field(
        default=None,
        converter=attrs.converters.optional(float),
        validator=attrs.validators.optional(
            [attrs.validators.ge(0.0), attrs.validators.lt(math.inf)]
        ),
    )
    n_steps: int = attrs.field(
        default=100, validator=[attrs.validators.instance_of(int), attrs.validators.ge(0)]
    )
    clamp: tuple[float, float] | None = attrs.field(
        default=None, converter=attrs.converters.optional(tuple), validator=check_clamp
    )

    def __attrs_post_init__(self) -> None:
        if self.legacy_code and self.metropolis:
            raise ValueError(
                "samplers.Stanley: legacy_code=True (the authors' x − ∇E + Γ·σξ, where Γ "
                "scales only the noise) has no drift matched to its noise, so no MH "
                "correction makes it exact; set legacy_code=False to use metropolis=True"
            )
        if self.noise_scale is not None and not self.legacy_code:
            raise ValueError(
                f"samplers.Stanley.noise_scale={self.noise_scale} is only used with "
                f"legacy_code=True (the paper's noise is Γ^(1/2)ξ); drop noise_scale or set "
                f"legacy_code=True"
            )
        if self.legacy_code and self.noise_scale is None:
            self.noise_scale = LEGACY_NOISE_SCALE

    @classmethod
    def testing_cases(cls) -> list[SamplerCase]:
        """Cases for `ebmkit.testing`.

        - "paper-ula-limit": the paper's unadjusted update with th = 20, above every gradient
          on the test targets, so Γ = εI and the step is exactly ULA(ε/2, √ε): held to that
          biased Langevin law on a Gaussian (and the mixture within 0.03).
        - "paper": the unadjusted update with Γ(x) active (th = 2). Its continuous limit lacks
          the drift ½∂ᵢγᵢ, so it is biased whatever ε; held to the target only within 0.15.
        - "metropolis": the MH-corrected kernel (th = ε = 0.5, Γ active), exact.
        """
        from ebmkit.testing import LangevinMove, SamplerCase

        ula_limit = LangevinMove(step_size=0.1, noise_scale=math.sqrt(0.2))
        return [
            SamplerCase(
                name="paper-ula-limit",
                sampler=Stanley(step_size=0.2, th=20.0),
                exact=False,
                langevin_law=(ula_limit,),
                bias_tolerance=0.03,
            ),
            SamplerCase(
                name="paper",
                sampler=Stanley(step_size=0.2, th=2.0),
                exact=False,
                bias_tolerance=0.15,
            ),
            SamplerCase(
                name="metropolis",
                sampler=Stanley(step_size=0.5, th=0.5, metropolis=True),
                exact=True,
            ),
        ]

    def scale_step_size(self, factor: float) -> None:
        """ε ← factor·ε, so Γ(x) and the noise Γ^(1/2) shrink together (same temperature).

        The legacy update has no step in its drift (x − ∇E + Γσξ), so it refuses.
        """
        if self.legacy_code:
            raise ValueError(
                "samplers.Stanley with legacy_code=True has no step size in its drift "
                "(x − ∇E(x) + Γ(x)σξ), so shrinking it cannot calm a divergence; use the "
                "paper's update (legacy_code=False) or experiment.on_divergence = 'stop'"
            )
        super().scale_step_size(factor)

    def step_sizes(self, grad: Tensor) -> Tensor:
        """Γ(x) from ∇E(x) with this sampler's settings, shaped like `grad`."""
        return anisotropic_step_size(grad, self.step_size, self.th, self.reduce)

    def _noise_std(self, gamma: Tensor) -> Tensor:
        """Γ^(1/2) as sqrt(ε)·sqrt(Γ/ε): exactly core Langevin's sqrt(ε) where Γ = ε.

        (torch's vectorised float64 sqrt can differ from `math.sqrt` in the last bit.)
        """
        return math.sqrt(self.step_size) * (gamma / self.step_size).sqrt()

    def init(self, x: Tensor, energy: Energy, *, previous: ChainState | None = None) -> ChainState:
        """Chains at `x` with E, ∇E and Γ (``extras["gamma"]``) cached.

        A continued chain (`previous`) keeps what other kernels own; Γ is recomputed.
        """
        if x.dim() < 2:
            raise ValueError(
                f"Stanley needs chains shaped (B, ...) with at least one dimension per "
                f"sample, got {tuple(x.shape)}; reshape to (B, 1)"
            )
        step_size, owned = kept_from_previous(x, previous)
        value, grad = energy_and_grad(energy, x)
        return ChainState(
            x=x,
            energy=value,
            grad=grad,
            step_size=step_size,
            extras={"gamma": self.step_sizes(grad)},
            owned=owned,
        )

    def _ready(self, state: ChainState, energy: Energy) -> tuple[ChainState, int]:
        """`state` with E, ∇E and Γ at x, and the gradient evaluations that cost (0 or 1)."""
        if state.grad is None:
            return self.init(state.x, energy, previous=state), 1
        # Γ(x) is re-derived from the cached ∇E at every step (a few elementwise operations),
        # never taken from the cache: a state made by another kernel has none, and one made
        # before `step_size`, `th` or `reduce` changed holds a stale Γ, which would make the
        # MH ratio wrong until the next acceptance.
        extras = {**state.extras, "gamma": self.step_sizes(state.grad)}
        return attrs.evolve(state, extras=extras), 0

    def step(
        self,
        state: ChainState,
        energy: Energy,
        *,
        generator: torch.Generator | None = None,
        context: StepContext | None = None,
    ) -> tuple[ChainState, StepInfo]:
        """One STANLEY move (MH-corrected if `metropolis`); Γ comes with the state's ∇E."""
        context = LONE_STEP if context is None else context
        state, n_grad_evals = self._ready(state, energy)
        x, grad, gamma = state.x, state.grad, state.extras["gamma"]
        noise = gaussian_noise(x, generator)
        if self.legacy_code:
            proposal = x - grad + gamma * (self.noise_scale * noise)
        else:
            proposal = proposal_mean(x, grad, gamma) + self._noise_std(gamma) * noise
        mean_step = gamma.mean(dim=tuple(range(1, gamma.dim())))
        if self.metropolis:
            return self._metropolis(state, proposal, energy, generator, n_grad_evals, mean_step)
        if self.clamp is not None:
            proposal = proposal.clamp(*self.clamp)
        kept = ChainState(
            x=proposal, energy=None, grad=None, step_size=state.step_size, owned=state.owned
        )
        del state, x, grad, gamma, noise  # free the old ∇E and Γ before the next gradient
        if context.last:  # nothing needs ∇E at the last point: skip that gradient evaluation
            new_state = kept
        else:
            new_state = self.init(proposal, energy, previous=kept)
            n_grad_evals += 1
        info = StepInfo(
            acceptance_prob=None, accepted=None, step_size=mean_step, n_grad_evals=n_grad_evals
        )
        return new_state, info

    def _metropolis(
        self,
        state: ChainState,
        proposal: Tensor,
        energy: Energy,
        generator: torch.Generator | None,
        n_grad_evals: int,
        mean_step: Tensor,
    ) -> tuple[ChainState, StepInfo]:
        """Accept or reject `proposal` per chain; E, ∇E and Γ at y come from one gradient."""
        candidate = self.init(proposal, energy, previous=state)
        log_ratio = metropolis_log_ratio(state, candidate)
        if self.clamp is not None:  # exp(−E) restricted to the box: outside has density 0
            low, high = self.clamp
            inside = ((proposal >= low) & (proposal <= high)).flatten(1).all(1)
            log_ratio = log_ratio.masked_fill(~inside, -math.inf)
        accepted, acceptance_prob = metropolis_accept(log_ratio, generator)
        gamma = select_chains(accepted, candidate.extras["gamma"], state.extras["gamma"])
        new_state = ChainState(
            x=select_chains(accepted, candidate.x, state.x),
            energy=torch.where(accepted, candidate.energy, state.energy),
            grad=select_chains(accepted, candidate.grad, state.grad),
            step_size=state.step_size,
            extras={"gamma": gamma},  # other kernels' caches are dropped: x has moved
            owned=state.owned,
        )
        info = StepInfo(
            acceptance_prob=acceptance_prob,
            accepted=accepted,
            step_size=mean_step,
            n_grad_evals=n_grad_evals + 1,
        )
        return new_state, info
