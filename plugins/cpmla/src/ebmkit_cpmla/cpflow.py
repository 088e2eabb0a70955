r"""`flows.CPFlow`: the Convex Potential Flow, a registered flow and a mirror map at once."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebmkit import Registry
from ebmkit.compatibility import require_vector_shape
from ebmkit.flows import FlowModule, standard_normal_log_prob
from ebmkit.records import Round
from ebmkit_cpmla.cg import conjugate_gradient, logdet_surrogate
from ebmkit_cpmla.icnn import ICNN
from ebmkit_cpmla.lanczos import lanczos_logdet, rademacher_probes
from ebmkit_cpmla.mirror import PotentialMirror
from ebmkit_cpmla.solve import METHODS, SolveResult

__all__ = [
    "LOGDET_MODES",
    "CPFlow",
    "CPFlowInverse",
    "InverseSolveError",
    "InverseSolveWarning",
    "register_flows",
]

COMPONENT = "flows.CPFlow"

LOGDET_MODES = ("exact", "stochastic")
"""log det ∇²G: d Hessian-vector products and slogdet, or Lanczos (value) + CG (gradient)."""

ON_UNCONVERGED = ("warn", "raise")

SMALL_CURVATURE = 1e-6
"""softplus(w₀) + α below this: G is barely strongly convex (a warning says so)."""

IMPLICIT_EXACT_LIMIT = 64
"""The implicit gradient of the inverse solves with the dense Hessian up to this d, else CG."""


class InverseSolveWarning(RuntimeWarning):
    """`flows.CPFlow.inverse` left chains with ‖∇G(x) − z‖ above its tolerance."""


class InverseSolveError(RuntimeError):
    """The same, raised with ``on_unconverged="raise"``."""


class _ImplicitInverse(torch.autograd.Function):
    """x = ∇G*(z) on the graph of z and of G's parameters by implicit differentiation:
    for a loss gradient g = ∂L/∂x, w = H(x)⁻¹g gives ∂L/∂z = w and ∂L/∂ψ = −∂ψ⟨∇G(x), w⟩."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, x: Tensor, flow: CPFlow, *parameters: Tensor) -> Tensor:
        ctx.flow = flow
        ctx.save_for_backward(x, *parameters)
        return x.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_x: Tensor) -> tuple[Tensor | None, ...]:
        x, *parameters = ctx.saved_tensors
        flow: CPFlow = ctx.flow
        with torch.enable_grad():
            point = x.detach().requires_grad_(True)
            gradient = flow._gradient(point)
            w = flow._solve_hessian(point, gradient, grad_x)
            found = torch.autograd.grad(gradient, parameters, -w, allow_unused=True)
        return (w, None, None, *found)


@attrs.frozen(eq=False, kw_only=True)
class CPFlowInverse(SolveResult):
    """`CPFlow.inverse`'s answer, read as a mirror map's solve or as a flow's inverse.

    As a `SolveResult` (the mirror-map interface, what `samplers.MirrorLangevin` reads): the
    fields `x` (detached), `residual`, `iterations` and `converged`. As a flow's inverse (the
    `FlowModule` interface): it unpacks as ``x, log_det = flow.inverse(z)``, x on the graph of
    z and of the flow's parameters (implicit differentiation) when grad is enabled, and
    log|det ∂x/∂z| = −log det ∇²G(x). The log-det is computed when first unpacked (a mirror
    step never pays for it), and an unconverged chain is reported then (the sampler reports
    its own).

    Arguments:
        flow_point: makes the flow's x (with the implicit graph where needed).
        flow_log_det: makes the log-det from that x.
    """

    flow_point: Callable[[], Tensor] = attrs.field(repr=False)
    flow_log_det: Callable[[Tensor], Tensor] = attrs.field(repr=False)
    _made: dict[str, Tensor] = attrs.field(factory=dict, init=False, repr=False)

    def point(self) -> Tensor:
        """x as the flow gives it (made once)."""
        if "x" not in self._made:
            self._made["x"] = self.flow_point()
        return self._made["x"]

    def log_det(self) -> Tensor:
        """log|det ∂x/∂z| = −log det ∇²G(x), (B,) (made once)."""
        if "log_det" not in self._made:
            self._made["log_det"] = self.flow_log_det(self.point())
        return self._made["log_det"]

    def __iter__(self) -> Iterator[Tensor]:
        yield self.point()
        yield self.log_det()

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> Tensor:
        return (self.point, self.log_det)[index]()


class CPFlow(FlowModule, PotentialMirror):
    """The Convex Potential Flow z = ∇G(x) of a strongly convex potential (vectors).

    G(x) = softplus(w₁)·I_ψ(x) + (softplus(w₀) + α)/2·‖x‖², with I_ψ the `ICNN`, w₀ starting
    at log(e − 1) (softplus 1) and w₁ at 0; ∇²G ⪰ αI, so ∇G is a bijection, and (Brenier)
    the optimal-transport map to the base N(0, I) is of this form.

    - `forward(x)` = (∇G(x), log det ∇²G(x)) by autograd (data → base, the graph kept when
      grad is enabled), so log q(x) = log N(∇G(x); 0, I) + log det ∇²G(x).
    - `inverse(z)` = ∇G*(z) = argmin_x G(x) − ⟨x, z⟩, solved per chain (`solve_inverse`:
      L-BFGS with each chain's own history, line search and stopping rule ‖∇G(x) − z‖ ≤
      `tolerance`), started at z (or `start`); it unpacks as (x, −log det ∇²G(x)) with x
      differentiable by implicit differentiation (∂x/∂z = H⁻¹), and reads as a
      `SolveResult` for mirror Langevin (see `CPFlowInverse`). An unconverged chain is
      reported with its residual (a warning, or an error with ``on_unconverged="raise"``).
    - log-det, `logdet="exact"`: d Hessian-vector products and slogdet (small d). With
      ``"stochastic"``: `log_prob` is stochastic Lanczos quadrature (`lanczos_steps` = m₁,
      `n_probes` Rademacher probes; no gradient), `exact_log_prob` is
      False (a kernel needing exact densities refuses the flow; its probes come from a
      generator seeded by `probe_seed` at each call), and `loss` uses CP-Flow's surrogate
      (probes from the global RNG, which checkpoints save): v Rademacher, z = stopgrad
      CG(H, v) (`cg_atol`, `cg_rtol`, at most `cg_max_iterations` = d), loss =
      −mean[log N(∇G(x)) + (Hz)ᵀv]. **Its value is not the NLL**; its gradient is an
      unbiased estimate of the NLL's (with an exact solve).
    - One flow, one potential: it is also a `PotentialMirror` (`grad`, `hvp`, `hessian`,
      `sqrt_hessian_times`, `hessian_diagonal`, `log_det_hessian`; `single_block` True), so
      ``samplers.MirrorLangevin.mirror = @flows.CPFlow()`` uses the same object.
    - ActNorm's data-dependent init runs in `loss` on the first data batch (or through
      `initialize(x)`), never on a solver's iterate; the ICNN's buffer `initialized` records
      it, so a resumed run does not initialise again.

    Warning:
        Vectors only (event shape (dim,)); the multi-scale image CP-Flow (blocks and
        invertible downsampling) is not built. The stochastic log-det is biased per probe
        when ∇²G has eigenvalues near α (Lanczos with m₁ = 10 on a spectrum down to 1e-4).

    References:
        Huang, Chen, Tsirigotis & Courville, "Convex Potential Flows: Universal Probability
        Distributions with Optimal Transport and Convex Optimization" (ICLR 2021),
        arXiv:2012.05942. Yang et al., "Convex Potential Mirror Langevin Algorithm for
        Efficient Sampling of Energy-Based Models" (NeurIPS 2025): the floor α.

    Arguments:
        dim: d, the number of coordinates.
        hidden, depth, symm_act_first: the ICNN's width, hidden layers and first activation.
        alpha: α ≥ 0, the floor on ∇²G (CPMLA: 1e-4).
        logdet: "exact" or "stochastic".
        n_probes: Rademacher probes per point (stochastic mode; the reference uses 1).
        lanczos_steps: m₁ of the evaluation's Lanczos quadrature.
        probe_seed: seeds the evaluation's probes afresh at every call, so the stochastic
            `log_prob` is a deterministic function of x (two evaluations agree, a reloaded
            flow gives the same value) and evaluating never draws from the training RNG.
        cg_atol, cg_rtol, cg_max_iterations: the training surrogate's CG (1e-3, 0, d).
        tolerance, max_iterations, history, solver: the inverse solve (residual tolerance,
            iterations and L-BFGS pairs per chain; "lbfgs" or "newton").
        precondition: start each chain's L-BFGS from H(start)⁻¹ (its first step Newton's;
            d ≤ 64), the `PotentialMirror` option.
        on_unconverged: "warn" or "raise" when an inverse leaves chains above `tolerance`.
        **settings: `FlowModule`'s (fit_on, learning_rate, weight_decay, scheduler, ...).

    Example:
        >>> flow = CPFlow(dim=2, hidden=8, depth=2).double()
        >>> x = torch.randn(4, 2, dtype=torch.float64)
        >>> z, log_det = flow(x)
        >>> x_back, inverse_log_det = flow.inverse(z)
        >>> bool(torch.allclose(x_back, x, atol=1e-5))
        True
        >>> bool(torch.allclose(log_det, -inverse_log_det))
        True
    """

    def __init__(
        self,
        *,
        dim: int,
        hidden: int = 32,
        depth: int = 3,
        symm_act_first: bool = False,
        alpha: float = 1e-4,
        logdet: str = "exact",
        n_probes: int = 1,
        lanczos_steps: int = 10,
        probe_seed: int = 0,
        cg_atol: float = 1e-3,
        cg_rtol: float = 0.0,
        cg_max_iterations: int | None = None,
        tolerance: float = 1e-6,
        max_iterations: int = 50,
        history: int = 10,
        solver: str = "lbfgs",
        precondition: bool = False,
        on_unconverged: str = "warn",
        **settings: Any,
    ) -> None:
        if int(dim) < 1:
            raise ValueError(f"{COMPONENT}.dim must be >= 1, got {dim}")
        settings.setdefault("event_shape", (int(dim),))
        super().__init__(**settings)
        if self.event_shape != (int(dim),):
            raise ValueError(
                f"{COMPONENT}: event_shape {self.event_shape} does not match dim = {dim}; "
                f"the flow is for vectors: set {COMPONENT}.dim only"
            )
        if not (math.isfinite(alpha) and alpha >= 0):
            raise ValueError(
                f"{COMPONENT}.alpha is the floor on ∇²G and must be >= 0, got {alpha}; set "
                f"{COMPONENT}.alpha = 1e-4 (CPMLA's) or 0 (softplus(w0) > 0 keeps G strictly "
                f"convex)"
            )
        for name, value, choices in (
            ("logdet", logdet, LOGDET_MODES),
            ("solver", solver, METHODS),
            ("on_unconverged", on_unconverged, ON_UNCONVERGED),
        ):
            if value not in choices:
                raise ValueError(f"{COMPONENT}.{name} must be one of {choices}, got {value!r}")
        if int(n_probes) < 1 or int(lanczos_steps) < 1:
            raise ValueError(
                f"{COMPONENT}: n_probes and lanczos_steps must be >= 1, got {n_probes}, "
                f"{lanczos_steps}"
            )
        if cg_atol < 0 or cg_rtol < 0 or not tolerance > 0:
            raise ValueError(
                f"{COMPONENT}: cg_atol, cg_rtol must be >= 0 and tolerance > 0, got {cg_atol}, "
                f"{cg_rtol}, {tolerance}"
            )
        if logdet == "stochastic" and self.reverse_kl_weight > 0:
            raise ValueError(
                f"{COMPONENT}: reverse_kl_weight > 0 needs the inverse's exact log-det; set "
                f"{COMPONENT}.logdet = 'exact' or reverse_kl_weight = 0"
            )
        self.dim = int(dim)
        self.alpha = float(alpha)
        self.logdet = logdet
        self.exact_log_prob = logdet == "exact"
        self.n_probes = int(n_probes)
        self.lanczos_steps = int(lanczos_steps)
        self.probe_seed = int(probe_seed)
        self.cg_atol, self.cg_rtol = float(cg_atol), float(cg_rtol)
        self.cg_max_iterations = None if cg_max_iterations is None else int(cg_max_iterations)
        self.tolerance = float(tolerance)
        self.max_iterations = int(max_iterations)
        self.history = int(history)
        self.solver = solver
        self.precondition = bool(precondition)
        self.on_unconverged = on_unconverged
        self.diagonal_floor = self.alpha
        self.icnn = ICNN(dim=self.dim, hidden=hidden, depth=depth, symm_act_first=symm_act_first)
        self.w0 = nn.Parameter(torch.tensor(math.log(math.e - 1.0)))
        self.w1 = nn.Parameter(torch.tensor(0.0))

    @classmethod
    def testing_cases(cls, shape: Sequence[int] | None = None) -> list[FlowModule]:
        """A 3-D CP-Flow in float64 with the exact log-det, actnorm-initialised on skewed data,
        every parameter moved and the ICNN's weight raised (Hessian eigenvalues well away
        from 1), solved to 1e-10 (seeded; the global RNG is untouched).

        With `shape` = (dim,): a small float32 CP-Flow of that dimension (exact log-det,
        solved to 1e-4, moved off the identity) for the composability matrix. Vectors only:
        another shape raises IncompatibleError."""
        if shape is not None:
            dim = require_vector_shape(COMPONENT, shape, "flows.CPFlowImage for images")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                flow = cls(dim=dim, hidden=8, depth=2, tolerance=1e-4, max_iterations=100)
                with torch.no_grad():
                    for parameter in flow.icnn.parameters():
                        parameter.add_(0.1 * torch.randn_like(parameter))
            return [flow]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            flow = cls(dim=3, hidden=8, depth=3, tolerance=1e-10, learning_rate=1e-2)
            flow.double()
            data = torch.randn(64, 3, dtype=torch.float64) @ torch.tensor(
                [[1.0, 0.5, 0.0], [0.0, 1.5, 0.3], [0.0, 0.0, 0.5]], dtype=torch.float64
            )
            flow.initialize(data + 0.5)
            with torch.no_grad():
                for parameter in flow.icnn.parameters():
                    parameter.add_(0.2 * torch.randn_like(parameter))
                flow.w1.fill_(1.5)
                flow.w0.fill_(-0.5)
        return [flow]

    # The potential ------------------------------------------------------------------------

    @property
    def component_name(self) -> str:
        """``flows.CPFlow``."""
        return COMPONENT

    @property
    def initialized(self) -> bool:
        """Whether ActNorm's data-dependent init has run (saved in the state dict)."""
        return bool(self.icnn.initialized)

    def quadratic_weight(self) -> Tensor:
        """softplus(w₀) + α, the weight of ‖x‖²/2 (the floor of ∇²G's eigenvalues)."""
        return F.softplus(self.w0) + self.alpha

    def check_input(self, x: Tensor, what: str = "data") -> None:
        """ValueError unless `x` is (B, dim), naming the fix."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(
                f"{COMPONENT} is built for vectors of dim = {self.dim} but got {what} of shape "
                f"{tuple(x.shape)}; set {COMPONENT}.dim = "
                f"{x.shape[1] if x.dim() == 2 else 'the number of coordinates'} (a batch "
                f"(B, d) of vectors; images are not supported by this flow)"
            )

    def potential(self, x: Tensor) -> Tensor:
        """G(x) = softplus(w₁)·I_ψ(x) + (softplus(w₀) + α)/2·‖x‖², shape (B,)."""
        self.check_input(x, "points")
        point = x.to(self.w0.dtype)
        quadratic = 0.5 * self.quadratic_weight() * point.square().sum(1)
        return F.softplus(self.w1) * self.icnn(point) + quadratic

    def _check_curvature(self) -> None:
        weight = float(self.quadratic_weight().detach())
        if weight < SMALL_CURVATURE:
            warnings.warn(
                f"{COMPONENT}: softplus(w0) + alpha = {weight:.3g} < {SMALL_CURVATURE:g}, so "
                f"∇²G's floor is almost 0 and the inverse ∇G* is ill-conditioned; raise "
                f"{COMPONENT}.alpha (CPMLA: 1e-4) or lower the learning rate",
                RuntimeWarning,
                stacklevel=3,
            )

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """ActNorm's data-dependent init on the data batch `x` (`loss` calls it on its first
        batch); sets the saved flag."""
        self.check_input(x, "data")
        self.icnn.initialize(x)

    # Gradients, Hessians, log-dets --------------------------------------------------------

    def _gradient(self, point: Tensor) -> Tensor:
        """∇G(point) with its graph (point requires grad; called under enable_grad)."""
        (gradient,) = torch.autograd.grad(self.potential(point).sum(), point, create_graph=True)
        return gradient

    def _point_and_gradient(self, x: Tensor, keep: bool) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            point = x if keep and x.requires_grad else x.detach().requires_grad_(True)
            return point, self._gradient(point)

    def _hessian(self, point: Tensor, gradient: Tensor, keep: bool) -> Tensor:
        """∇²G (B, d, d) from d Hessian-vector products (on the graph when `keep`)."""
        columns = []
        with torch.enable_grad():
            for i in range(self.dim):
                unit = torch.zeros_like(gradient)
                unit[:, i] = 1.0
                (column,) = torch.autograd.grad(
                    gradient, point, unit, retain_graph=True, create_graph=keep
                )
                columns.append(column)
        return torch.stack(columns, 2)

    def _hvp(self, point: Tensor, gradient: Tensor) -> Callable[[Tensor], Tensor]:
        def product(v: Tensor) -> Tensor:
            with torch.enable_grad():
                (value,) = torch.autograd.grad(gradient, point, v, retain_graph=True)
            return value

        return product

    def _log_det(self, point: Tensor, gradient: Tensor, keep: bool) -> Tensor:
        """log det ∇²G: slogdet (exact; on the graph when `keep`) or Lanczos (stochastic,
        detached)."""
        if self.logdet == "exact":
            return torch.linalg.slogdet(self._hessian(point, gradient, keep)).logabsdet
        generator = torch.Generator(device=gradient.device).manual_seed(self.probe_seed)
        probes = rademacher_probes(gradient, self.n_probes, generator)
        hvp = self._hvp(point, gradient)
        return lanczos_logdet(hvp, probes, self.lanczos_steps).detach()

    def _solve_hessian(self, point: Tensor, gradient: Tensor, b: Tensor) -> Tensor:
        """H⁻¹b per chain: dense up to `IMPLICIT_EXACT_LIMIT` coordinates, else CG (d
        iterations, tolerance 1e-10·max‖b‖)."""
        if self.dim <= IMPLICIT_EXACT_LIMIT:
            hessian = self._hessian(point, gradient, keep=False)
            return torch.linalg.solve(hessian, b.unsqueeze(-1)).squeeze(-1)
        scale = float(b.norm(dim=1).max())
        return conjugate_gradient(
            self._hvp(point, gradient), b, max_iterations=self.dim, atol=1e-10 * scale
        ).solution

    # The flow -----------------------------------------------------------------------------

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        """(∇G(x), log det ∇²G(x)), on the graph when grad is enabled (the log-det of the
        stochastic mode never is)."""
        self.check_input(x)
        self._check_curvature()
        keep = torch.is_grad_enabled()
        point, gradient = self._point_and_gradient(x, keep)
        log_det = self._log_det(point, gradient, keep)
        if not keep:
            return gradient.detach(), log_det.detach()
        return gradient, log_det

    def inverse(  # type: ignore[override]
        self,
        z: Tensor,
        start: Tensor | None = None,
        *,
        tolerance: float | None = None,
        max_iterations: int | None = None,
    ) -> CPFlowInverse:
        """∇G*(z) per chain, warm-started at `start` (default z): a `CPFlowInverse`, which
        unpacks as (x, log|det ∂x/∂z|) and reads as a `SolveResult`.

        Arguments:
            z: base points (B, dim).
            start: the warm start (B, dim).
            tolerance, max_iterations: override the flow's solve settings for this call.
        """
        self.check_input(z, "base points")
        self._check_curvature()
        tolerance = self.tolerance if tolerance is None else float(tolerance)
        result = PotentialMirror.inverse(
            self, z, start, tolerance=tolerance, max_iterations=max_iterations
        )
        keep = torch.is_grad_enabled()

        def flow_point() -> Tensor:
            self._report(result, tolerance)
            x = result.x.to(z.dtype)
            parameters = [p for p in self.parameters() if p.requires_grad]
            if keep and (z.requires_grad or parameters):
                x = _ImplicitInverse.apply(z, x, self, *parameters)
            return x

        def flow_log_det(x: Tensor) -> Tensor:
            with torch.set_grad_enabled(keep):
                point, gradient = self._point_and_gradient(x, keep)
                log_det = -self._log_det(point, gradient, keep)
            return log_det if keep else log_det.detach()

        return CPFlowInverse(
            x=result.x,
            residual=result.residual,
            iterations=result.iterations,
            converged=result.converged,
            flow_point=flow_point,
            flow_log_det=flow_log_det,
        )

    def _report(self, result: SolveResult, tolerance: float) -> None:
        if bool(result.converged.all()):
            return
        failed = int((~result.converged).sum())
        message = (
            f"{COMPONENT}.inverse: ∇G*(z) left {failed} of {result.converged.numel()} chains "
            f"unconverged: residual ‖∇G(x) − z‖ up to {float(result.residual.max()):.3g} > "
            f"tolerance {tolerance:g} after {int(result.iterations.max())} iterations; raise "
            f"{COMPONENT}.max_iterations (now {self.max_iterations}) or loosen "
            f"{COMPONENT}.tolerance (float32 cannot reach much below 1e-6)"
        )
        if self.on_unconverged == "raise":
            raise InverseSolveError(message)
        warnings.warn(message, InverseSolveWarning, stacklevel=4)

    def sample_with_latents(
        self, n: int, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """(x, z): `n` samples ∇G*(z), z ~ N(0, I) from `generator` (no log-det computed)."""
        z = self.base_noise(n, generator=generator)
        return self.inverse(z).point(), z

    # Learning -----------------------------------------------------------------------------

    def loss(self, round: Round) -> dict[str, Tensor]:
        """Maximum likelihood on `fit_on`'s points, after ActNorm's init on the first data
        batch: FlowModule's forward KL (exact log-det), or the surrogate (stochastic)."""
        if not self.initialized:
            first = round.x_data if round.x_data.numel() else round.result.x.detach()
            self.initialize(first.to(self.w0.dtype))
        self._check_curvature()
        if self.logdet == "exact":
            return super().loss(round)
        points = self.training_points(round)
        self.check_input(points, f"{self.fit_on} points")
        point, gradient = self._point_and_gradient(points.to(self.w0.dtype), keep=False)
        probes = rademacher_probes(gradient, self.n_probes)
        surrogate, solve = logdet_surrogate(
            gradient,
            point,
            probes,
            max_iterations=self.cg_max_iterations,
            atol=self.cg_atol,
            rtol=self.cg_rtol,
        )
        base = standard_normal_log_prob(gradient)
        return {
            "loss": -(base + surrogate).mean(),
            "base_nll": -base.mean(),
            "cg_iterations": solve.iterations.to(base.dtype).mean(),
            "cg_residual": solve.residual_norm.max(),
        }


def register_flows(registry: Registry) -> None:
    """Register `CPFlow` (gin ``flows.CPFlow``)."""
    registry.add("flow", "CPFlow", CPFlow)
