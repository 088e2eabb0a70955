r"""Mirror Langevin (CPMLA's sampler): Langevin in the dual y = ∇G(x) with Hessian noise."""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

import attrs
import torch
from torch import Tensor

from ebmkit import (
    LONE_STEP,
    ChainState,
    Energy,
    EvaluationCounts,
    MarkovKernel,
    Registry,
    StepContext,
    StepInfo,
    energy_and_grad,
    gaussian_noise,
    is_differentiable,
    kept_from_previous,
    metropolis_accept,
    one_of,
    select_chains,
    ula_noise_scale,
)
from ebmkit.compatibility import check_event_shape
from ebmkit_cpmla.cg import conjugate_gradient
from ebmkit_cpmla.mirror import MirrorMap, QuadraticMirror, check_mirror_shape
from ebmkit_cpmla.solve import SolveResult

if TYPE_CHECKING:
    from ebmkit.testing import SamplerCase

__all__ = [
    "DUAL",
    "NOISES",
    "MirrorLangevin",
    "UnconvergedSolveError",
    "UnconvergedSolveWarning",
    "attach_implicit_gradient",
    "register_samplers",
    "solve_with_hessian",
]

COMPONENT = "samplers.MirrorLangevin"

DUAL = "mirror/dual"
"""`extras` key of the dual point y = ∇G(x): a cache, recomputed by `init` under the current
mirror (never chain state: a persistent chain re-enters the dual under the map it finds)."""

NOISES = ("exact", "lanczos", "diagonal")
"""Dual noise: H^{1/2}ε by eigh, H^{1/2}ε by Lanczos, or the paper's sqrt(diag H) ⊙ ε."""

IMPLICIT_EXACT_LIMIT = 64
"""Up to this D the implicit gradient solves with the Hessian; above it, by CG."""


class UnconvergedSolveWarning(RuntimeWarning):
    """An inverse solve x = ∇G*(y) left chains above the mirror's residual tolerance."""


class UnconvergedSolveError(RuntimeError):
    """The same, raised with ``on_unconverged="raise"``."""


def _check_mirror(instance: MirrorLangevin, attribute: attrs.Attribute, value: object) -> None:
    if not isinstance(value, MirrorMap):
        missing = [
            name
            for name in ("event_shape", "single_block", "grad", "inverse", "sqrt_hessian_times")
            if not hasattr(value, name)
        ]
        raise TypeError(
            f"{COMPONENT}.mirror must be a mirror map (ebmkit_cpmla.mirror.MirrorMap, e.g. "
            f"@mirrors.QuadraticMirror() or @flows.CPFlow()), got {value!r} (missing "
            f"{', '.join(missing) or 'some methods'})"
        )


def attach_implicit_gradient(y: Tensor, x: Tensor, mirror: MirrorMap) -> Tensor:
    """`x` = ∇G*(y) (a solve's result) put on the graph of `y` with ∂x/∂y = H(x)⁻¹.

    The backward pass solves H(x)u = ∂L/∂x per chain (`solve_with_hessian`), instead of
    differentiating through the solver's iterations; the mirror's parameters get no gradient.
    """
    return _ImplicitInverse.apply(y, x, mirror)


class _ImplicitInverse(torch.autograd.Function):
    """x = ∇G*(y) on the graph of y by implicit differentiation: ∂x/∂y = H(x)⁻¹.

    The mirror's own parameters get no gradient through the solve (only y does)."""

    @staticmethod
    def forward(ctx: object, y: Tensor, x: Tensor, mirror: MirrorMap) -> Tensor:
        ctx.mirror = mirror
        ctx.save_for_backward(x)
        return x.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: object, grad_x: Tensor) -> tuple[Tensor, None, None]:
        (x,) = ctx.saved_tensors
        return solve_with_hessian(ctx.mirror, x, grad_x), None, None


def solve_with_hessian(
    mirror: MirrorMap, x: Tensor, b: Tensor, exact_limit: int = IMPLICIT_EXACT_LIMIT
) -> Tensor:
    """The backward of x = ∇G*(y): H(x)⁻ᵀb per chain (H⁻¹b for one convex G, H symmetric).

    A dense solve up to `exact_limit` coordinates, else per-chain conjugate gradient with
    Hessian-vector products (at most D iterations, each chain stopping at ‖r‖ < 1e-10·‖u‖).
    For a composite mirror (``single_block`` False: stacked blocks, whose Jacobian J is not
    symmetric) the solve is with Jᵀ: dense, or CG on the normal equations J Jᵀu = J b with
    Jᵀ products by autograd (found by the inpainting work: J⁻¹b was used, a wrong gradient).
    """
    dim = x[0].numel()
    symmetric = getattr(mirror, "single_block", True)
    if dim <= exact_limit:
        hessian = mirror.hessian(x.detach())
        if not symmetric:
            hessian = hessian.transpose(-1, -2)
        return torch.linalg.solve(hessian, b.flatten(1).unsqueeze(-1)).reshape(b.shape)
    if symmetric:
        result = conjugate_gradient(
            lambda u: mirror.hvp(x.detach(), u), b, max_iterations=dim, atol=0.0, rtol=1e-10
        )
        return result.solution

    def transpose_times(u: Tensor) -> Tensor:
        with torch.enable_grad():
            point = x.detach().requires_grad_(True)
            image = mirror.grad(point, create_graph=True)
            return torch.autograd.grad(image, point, u)[0]

    def normal_times(u: Tensor) -> Tensor:
        return mirror.hvp(x.detach(), transpose_times(u))

    result = conjugate_gradient(
        normal_times,
        mirror.hvp(x.detach(), b),
        max_iterations=4 * dim,
        atol=0.0,
        rtol=1e-10,
    )
    return result.solution


@attrs.define(kw_only=True)
class MirrorLangevin(MarkovKernel):
    """Mirror Langevin: y = ∇G(x); y′ = y − η∇E(x) + sqrt(2η)·H(x)^{1/2}ε; x′ = ∇G*(y′).

    The discretisation built is the mirror Langevin algorithm of Zhang et al. (2020), the
    first reading of CPMLA's "MLA-AFD": the noise Hessian is taken at the current x_k, one
    inverse solve per step (warm-started at x_k); not Ahn & Chewi's forward discretisation,
    which takes it at ∇G*(y_k − η∇E(x_k)) at the price of a second solve. Its bias vanishes as
    η → 0; with G = ½|x|² it is ULA exactly, with G = ½xᵀAx preconditioned ULA.

    y = ∇G(x) is recomputed by autograd in `init` and after every move and kept in
    ``extras["mirror/dual"]`` as a cache: nothing mirror-specific is chain state, so any
    initializer can start the chains, a persistent chain re-enters the dual under the current
    map, and N + N continued steps equal 2N bit for bit. `InitBatch.latents` are never read.

    Noise (`noise`): "exact", the symmetric H^{1/2}ε by eigh of the full Hessian (small D);
    "lanczos", H^{1/2}ε from `lanczos_steps` Hessian-vector products (the unbiased choice at
    image scale); "diagonal", the paper's sqrt(diag H) ⊙ ε (Hutchinson's diagonal above the
    mirror's exact limit). **The diagonal noise is biased**: it changes the diffusion itself,
    so its O(1) error does not vanish as η → 0 (tests: covariance off by 0.14 after 100
    steps and 0.22 after 1000 with a curved G at η = 1e-2; by 0.27 at η = 1e-2 and at 5e-3
    with G = ½xᵀAx). Only full H^{1/2} noise has the target as its stationary law.

    With `metropolis` (single-block mirrors, small D: two D × D Hessians per step) the move
    is a proposal with density q(x′|x) = N(∇G(x′); ∇G(x) − η∇E(x), 2ηH(x))·det H(x′), accepted
    with the MH ratio of both directions: the kernel is then exact for exp(−E) at any η.

    Costs: one gradient evaluation of E per step (none at the run's last point unless
    Metropolis), one in `init`; `n_flow_evals` counts the mirror's forward passes ∇G and
    inverse solves (one each per step, one ∇G in `init`); Hessian products for the noise are
    not counted. Stats per step: ``solve/residual`` (the largest ‖∇G(x′) − y′‖ over chains)
    and ``solve/iterations`` (the mean). A solve leaving any chain unconverged (residual
    above the mirror's tolerance) warns (`UnconvergedSolveWarning`) or, with
    ``on_unconverged="raise"``, raises, since the stats are averaged over the run.

    ``sample(..., differentiable=True)`` keeps the graph: ∇E and ∇G on the graph, and
    x′ = ∇G*(y′) differentiated implicitly (∂x′/∂y′ = H(x′)⁻¹: a dense solve up to D = 64,
    CG above), not through the solver's iterations. The mirror's parameters get no gradient
    through ∇G*, and H(x)^{1/2} in the noise term is held fixed (its dependence on x is not
    differentiated; exact for a quadratic G).

    Arguments:
        mirror: the mirror map (a `MirrorMap`: mirrors.QuadraticMirror, mirrors.CurvedMirror,
            flows.CPFlow), referenced, not copied: share it with an initializer by identity.
        step_size: η > 0.
        n_steps: default number of steps for `sample`.
        noise: "exact", "lanczos" or "diagonal".
        lanczos_steps: Lanczos steps for ``noise="lanczos"``.
        metropolis: MH-correct each move (needs ``noise="exact"`` and a single block).
        tolerance, max_iterations: the inverse solve's residual tolerance and iteration
            budget; None (default) uses the mirror's own (1e-6 and 50 for mirrors built on
            `PotentialMirror`).
        on_unconverged: "warn" or "raise" when a solve leaves chains unconverged.

    References:
        Yang, Ullah, Li, Li & Li (2025), Convex potential mirror Langevin algorithm for
        efficient sampling of energy-based models (NeurIPS).
        Zhang, Peyré, Fadili & Pereyra (2020), Wasserstein control of mirror Langevin
        Monte Carlo (COLT).

    Example:
        >>> sampler = MirrorLangevin(mirror=QuadraticMirror(scale=2.0), step_size=0.1)
        >>> sampler.sample(lambda x: 0.5 * x.square().sum(1), torch.zeros(4, 2)).x.shape
        torch.Size([4, 2])
    """

    mirror: MirrorMap = attrs.field(validator=_check_mirror)
    step_size: float = attrs.field(
        default=1e-2, converter=float, validator=attrs.validators.gt(0.0)
    )
    n_steps: int = attrs.field(default=10, validator=attrs.validators.ge(0))
    noise: str = attrs.field(default="exact", validator=one_of(*NOISES))
    lanczos_steps: int = attrs.field(default=10, validator=attrs.validators.ge(1))
    metropolis: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    tolerance: float | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.gt(0.0))
    )
    max_iterations: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.ge(0))
    )
    on_unconverged: str = attrs.field(default="warn", validator=one_of("warn", "raise"))

    def __attrs_post_init__(self) -> None:
        single = bool(getattr(self.mirror, "single_block", True))
        if not single and (self.metropolis or self.noise != "diagonal"):
            asked = "metropolis=True" if self.metropolis else f"noise={self.noise!r}"
            raise ValueError(
                f"{COMPONENT}: {asked} needs a mirror that is the gradient of one convex "
                f"function, but {type(self.mirror).__name__} has several blocks "
                f"(single_block=False); use noise='diagonal' (the Jacobian-diagonal "
                f"heuristic) with metropolis=False, or a single-block mirror"
            )
        if self.metropolis and self.noise != "exact":
            raise ValueError(
                f"{COMPONENT}: metropolis=True scores the proposal's exact density and needs "
                f"noise='exact', got noise={self.noise!r}; set {COMPONENT}.noise = 'exact'"
            )

    def check_compatible(
        self,
        *,
        sampler: object,
        initializer: object,
        energy: object,
        shape: tuple | None,
        batch_size: int | None = None,
    ) -> None:
        """Refuse a mirror built for another event shape than the chains' (it would fail at
        the first step, in `check_mirror_shape`)."""
        check_event_shape(
            self.mirror,
            COMPONENT,
            "mirror",
            shape,
            f"build the mirror for the data's shape (mirrors.CurvedMirror.dim = the number "
            f"of coordinates, a QuadraticMirror scale of shape {shape} or a number, a "
            f"flows.CPFlow with dim = the number of coordinates)",
        )

    @property
    def noise_scale(self) -> float:
        """sqrt(2η), the scale of the dual noise."""
        return ula_noise_scale(self.step_size)

    @classmethod
    def testing_cases(cls) -> list[SamplerCase]:
        """For `ebmkit.testing`, with the per-coordinate G = x² (a = 2, any shape): the
        Metropolis-corrected kernel at η = 0.4 (exact), and the unadjusted one at η = 0.2,
        which is ULA with step η/a = 0.1 and noise sqrt(2η/a) (its exact law)."""
        from ebmkit.testing import LangevinMove, SamplerCase

        exact = cls(mirror=QuadraticMirror(scale=2.0), step_size=0.4, metropolis=True)
        unadjusted = cls(mirror=QuadraticMirror(scale=2.0), step_size=0.2)
        return [
            SamplerCase(name="metropolis", sampler=exact, exact=True),
            SamplerCase(
                name="quadratic",
                sampler=unadjusted,
                exact=False,
                langevin_law=(LangevinMove(step_size=0.1),),
                bias_tolerance=0.03,
            ),
        ]

    # ----------------------------------------------------------------------------------
    # The pieces of a move (a variant overrides one of them)

    def dual(self, x: Tensor) -> Tensor:
        """y = ∇G(x) by autograd (on the graph in a differentiable run)."""
        return self.mirror.grad(x, create_graph=is_differentiable())

    def drift(self, state: ChainState, energy: Energy) -> tuple[Tensor, int]:
        """The drift's gradient ∇E(x_k) (cached in the state) and the gradients it cost."""
        return state.grad, 0

    def noise_term(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """H(x)^{1/2}ε, ε ~ N(0, I) (or sqrt(diag H) ⊙ ε with ``noise="diagonal"``)."""
        eps = gaussian_noise(x, generator)
        if self.noise == "diagonal":
            diagonal = self.mirror.hessian_diagonal(x.detach(), generator=generator)
            return diagonal.clamp(min=0).sqrt() * eps
        return self.mirror.sqrt_hessian_times(
            x.detach(), eps, method=self.noise, steps=self.lanczos_steps
        )

    def invert(self, y: Tensor, start: Tensor) -> SolveResult:
        """∇G*(y) warm-started at `start`, with the sampler's solve settings."""
        settings = {}
        if self.tolerance is not None:
            settings["tolerance"] = self.tolerance
        if self.max_iterations is not None:
            settings["max_iterations"] = self.max_iterations
        return self.mirror.inverse(y.detach(), start.detach(), **settings)

    # ----------------------------------------------------------------------------------

    def init(self, x: Tensor, energy: Energy, *, previous: ChainState | None = None) -> ChainState:
        """Chains at `x` with E, ∇E and the dual y = ∇G(x) cached; `owned` kept."""
        check_mirror_shape(self.mirror, x, COMPONENT)
        step_size, owned = kept_from_previous(x, previous)
        value, grad = energy_and_grad(energy, x)
        extras = {DUAL: self.dual(x)}
        return ChainState(
            x=x, energy=value, grad=grad, step_size=step_size, extras=extras, owned=owned
        )

    def init_cost(self, state: ChainState) -> EvaluationCounts:
        """One gradient evaluation of E and one mirror forward pass ∇G."""
        return EvaluationCounts(n_grad_evals=1, n_flow_evals=1)

    def _moved(self, y: Tensor, x: Tensor, context: StepContext) -> tuple[Tensor, SolveResult]:
        solve = self.invert(y, x)
        self._check_solve(solve, context)
        new_x = solve.x.to(x.dtype)
        if is_differentiable() and y.requires_grad:
            new_x = attach_implicit_gradient(y, new_x, self.mirror)
        return new_x, solve

    def _check_solve(self, solve: SolveResult, context: StepContext) -> None:
        if bool(solve.converged.all()):
            return
        failed = int((~solve.converged).sum())
        tolerance = self.tolerance or getattr(self.mirror, "tolerance", "the mirror's")
        budget = self.max_iterations or getattr(self.mirror, "max_iterations", "its")
        message = (
            f"{COMPONENT}: the inverse solve x = ∇G*(y) left {failed} of "
            f"{solve.converged.numel()} chains unconverged at step {context.index}: residual "
            f"‖∇G(x) − y‖ up to {solve.residual.max().item():.3g} > tolerance {tolerance} "
            f"after {int(solve.iterations[~solve.converged].max())} iterations; raise "
            f"{COMPONENT}.max_iterations "
            f"(now {budget}), loosen {COMPONENT}.tolerance, or lower {COMPONENT}.step_size"
        )
        if self.on_unconverged == "raise":
            raise UnconvergedSolveError(message)
        warnings.warn(message, UnconvergedSolveWarning, stacklevel=3)

    @staticmethod
    def _stats(solve: SolveResult) -> dict[str, Tensor]:
        return {
            "solve/residual": solve.residual.detach().max(),
            "solve/iterations": solve.iterations.to(torch.float64).mean(),
        }

    def step(
        self,
        state: ChainState,
        energy: Energy,
        *,
        generator: torch.Generator | None = None,
        context: StepContext | None = None,
    ) -> tuple[ChainState, StepInfo]:
        """One mirror Langevin move (MH-corrected with ``metropolis=True``).

        A state without ∇E is re-evaluated first (one more gradient, counted); a state
        without the dual cache (another kernel's) gets y = ∇G(x) (one more forward pass).
        """
        context = LONE_STEP if context is None else context
        n_grad_evals, n_flow_evals = 0, 0
        if state.grad is None:
            state, n_grad_evals, n_flow_evals = self.init(state.x, energy, previous=state), 1, 1
        elif DUAL not in state.extras:
            state = attrs.evolve(state, extras={**state.extras, DUAL: self.dual(state.x)})
            n_flow_evals = 1
        if self.metropolis:
            return self._metropolis_step(
                state, energy, generator, context, n_grad_evals, n_flow_evals
            )
        x, step_size, owned = state.x, state.step_size, state.owned
        gradient, cost = self.drift(state, energy)
        y = state.extras[DUAL] - self.step_size * gradient
        y = y + self.noise_scale * self.noise_term(x, generator)
        del state, gradient  # free the old E/∇E before the next gradient
        new_x, solve = self._moved(y, x, context)
        n_grad_evals, n_flow_evals = n_grad_evals + cost, n_flow_evals + 1
        if context.last:  # nothing needs ∇E or y at the last point
            new_state = ChainState(
                x=new_x, energy=None, grad=None, step_size=step_size, owned=owned
            )
        else:
            value, grad = energy_and_grad(energy, new_x)
            new_state = ChainState(
                x=new_x,
                energy=value,
                grad=grad,
                step_size=step_size,
                extras={DUAL: self.dual(new_x)},
                owned=owned,
            )
            n_grad_evals, n_flow_evals = n_grad_evals + 1, n_flow_evals + 1
        info = StepInfo(
            acceptance_prob=None,
            accepted=None,
            step_size=torch.scalar_tensor(self.step_size),
            n_grad_evals=n_grad_evals,
            n_flow_evals=n_flow_evals,
            stats=self._stats(solve),
        )
        return new_state, info

    def log_proposal_density(
        self, to_dual: Tensor, mean: Tensor, cholesky: Tensor, target_cholesky: Tensor
    ) -> Tensor:
        """log N(to_dual; mean, 2ηLLᵀ) + log det H at the proposal's end (its Cholesky)."""
        residual = (to_dual - mean).flatten(1).unsqueeze(-1)
        whitened = torch.linalg.solve_triangular(cholesky, residual, upper=False).squeeze(-1)
        dim = whitened.shape[1]
        log_det = 2 * torch.diagonal(cholesky, dim1=1, dim2=2).log().sum(1)
        target_log_det = 2 * torch.diagonal(target_cholesky, dim1=1, dim2=2).log().sum(1)
        return (
            -whitened.square().sum(1) / (4 * self.step_size)
            - 0.5 * (log_det + dim * math.log(4 * math.pi * self.step_size))
            + target_log_det
        )

    def _metropolis_step(
        self,
        state: ChainState,
        energy: Energy,
        generator: torch.Generator | None,
        context: StepContext,
        n_grad_evals: int,
        n_flow_evals: int,
    ) -> tuple[ChainState, StepInfo]:
        """Propose as the unadjusted move, then accept with the ratio of both directions."""
        x, y = state.x, state.extras[DUAL]
        gradient, cost = self.drift(state, energy)
        forward_mean = y - self.step_size * gradient
        proposal_dual = forward_mean + self.noise_scale * self.noise_term(x, generator)
        proposal, solve = self._moved(proposal_dual, x, context)
        proposal_energy, proposal_grad = energy_and_grad(energy, proposal)
        landed = self.dual(proposal)  # ∇G(x′): the proposal's density is read in x′
        reverse_mean = landed - self.step_size * proposal_grad
        here = torch.linalg.cholesky(self.mirror.hessian(x.detach()))
        there = torch.linalg.cholesky(self.mirror.hessian(proposal.detach()))
        log_forward = self.log_proposal_density(landed, forward_mean, here, there)
        log_reverse = self.log_proposal_density(y, reverse_mean, there, here)
        log_ratio = state.energy - proposal_energy + log_reverse - log_forward
        accepted, acceptance_prob = metropolis_accept(log_ratio.detach(), generator)
        new_state = ChainState(
            x=select_chains(accepted, proposal, x),
            energy=torch.where(accepted, proposal_energy, state.energy),
            grad=select_chains(accepted, proposal_grad, state.grad),
            step_size=state.step_size,
            extras={DUAL: select_chains(accepted, landed, y)},
            owned=state.owned,
        )
        info = StepInfo(
            acceptance_prob=acceptance_prob,
            accepted=accepted,
            step_size=torch.scalar_tensor(self.step_size),
            n_grad_evals=n_grad_evals + cost + 1,
            n_flow_evals=n_flow_evals + 2,
            stats=self._stats(solve),
        )
        return new_state, info


def register_samplers(registry: Registry) -> None:
    """Register `MirrorLangevin` (gin ``samplers.MirrorLangevin``)."""
    registry.add("sampler", "MirrorLangevin", MirrorLangevin)
