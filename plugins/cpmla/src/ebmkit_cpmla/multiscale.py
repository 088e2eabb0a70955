r"""`flows.CPFlowImage`: the multi-scale Convex Potential Flow for images (CPMLA App. I).

Layout (Table 5, "2 CP-Flow blocks → invertible downsampling → 2 blocks", 4 blocks as the
method reference resolves it): per scale, `blocks_per_scale` stages of ActNorm (Glow's, with a
log-det) → ∇G_k, each G_k its own strongly convex potential with a convolutional ICNN; a
squeeze (2×2 patches to channels, volume-preserving) between the scales, and the result put
back to the image's layout, so z has x's shape and the base is N(0, I) of it.

As a mirror map it is a composite (``single_block = False``): not the gradient of one convex
function. `samplers.MirrorLangevin` refuses the exact/Lanczos noise and Metropolis for it;
the diagonal noise uses the Jacobian-diagonal heuristic v ⊙ (Jv), clamped ≥ α (reference §6).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebmkit import Registry
from ebmkit.compatibility import require_image_shape
from ebmkit.flows import FlowModule, standard_normal_log_prob
from ebmkit.flows.glow import ActNorm, squeeze, unsqueeze
from ebmkit.records import Round
from ebmkit_cpmla.cg import conjugate_gradient, logdet_surrogate
from ebmkit_cpmla.cpflow import CPFlowInverse
from ebmkit_cpmla.icnn import gaussian_softplus
from ebmkit_cpmla.lanczos import lanczos_logdet, rademacher_probes
from ebmkit_cpmla.mirror import PotentialMirror
from ebmkit_cpmla.solve import SolveResult, potential_gradient, potential_hessian

__all__ = [
    "CPFlowImage",
    "ConvCPBlock",
    "ConvICNN",
    "ConvexChannelNorm",
    "PositiveConv2d",
    "register_image_flows",
]

COMPONENT = "flows.CPFlowImage"
DENSE_LIMIT = 64
"""Up to this many coordinates per block the implicit gradient solves H densely, else CG."""
_STD_FLOOR = 1e-6


class PositiveConv2d(nn.Module):
    """h ↦ W⁺ ⋆ h, W⁺ = softplus(W_raw)/fan_in > 0 (fan_in = C_in·k²), no bias: a positive
    combination of convex maps is convex (CP-Flow's `PosConv2d`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.raw_weight = nn.Parameter(
            torch.empty(out_channels, in_channels, kernel_size, kernel_size)
        )
        bound = 1.0 / math.sqrt(in_channels * kernel_size**2)
        nn.init.uniform_(self.raw_weight, -bound, bound)
        self.padding = kernel_size // 2

    def positive_weight(self) -> Tensor:
        """W⁺, every entry > 0."""
        fan_in = self.raw_weight[0].numel()
        return F.softplus(self.raw_weight) / fan_in

    def forward(self, h: Tensor) -> Tensor:  # type: ignore[override]
        return F.conv2d(h, self.positive_weight(), padding=self.padding)


class ConvexChannelNorm(nn.Module):
    """Per-channel h ↦ (h + b)·(exp(log s) + min_scale), increasing (keeps convexity); data-
    initialised by `initialize_from` to zero mean, unit variance per channel."""

    def __init__(self, channels: int, min_scale: float = 1e-4) -> None:
        super().__init__()
        self.min_scale = float(min_scale)
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.full((1, channels, 1, 1), math.log1p(-min_scale)))

    def scale(self) -> Tensor:
        return self.log_scale.exp() + self.min_scale

    @torch.no_grad()
    def initialize_from(self, h: Tensor) -> None:
        dims = (0, 2, 3) if h.dim() == 4 else (0,)
        mean = h.mean(dims, keepdim=True).reshape(self.bias.shape)
        std = h.std(dims, keepdim=True, unbiased=False).clamp_min(_STD_FLOOR)
        self.bias.copy_(-mean)
        target = (1.0 / std.reshape(self.bias.shape) - self.min_scale).clamp_min(_STD_FLOOR)
        self.log_scale.copy_(target.log())

    def forward(self, h: Tensor) -> Tensor:  # type: ignore[override]
        if h.dim() == 2:
            return (h + self.bias.flatten()) * self.scale().flatten()
        return (h + self.bias) * self.scale()


class ConvICNN(nn.Module):
    """A convolutional input-convex network I: (C, H, W) → R (CP-Flow's `ICNN3` with convs).

    z₁ = s(A₀⋆x + b₀) (width `hidden`); per further layer u = s(norm(W⁺⋆z + A⋆x + b)),
    z = concat(u, s(B⋆x + c)) (halves of width hidden/2); I(x) = norm(Σ_pixels W_L⁺⋆z +
    Σ_pixels a⋆x), the last norm's bias frozen. s = Gaussian softplus; W⁺ `PositiveConv2d`.
    3×3 convolutions, padding 1."""

    def __init__(self, channels: int, hidden: int = 32, depth: int = 2) -> None:
        super().__init__()
        if int(hidden) < 2 or int(hidden) % 2 or int(depth) < 1:
            raise ValueError(
                f"ConvICNN: hidden must be even >= 2, depth >= 1; got {hidden}, {depth}"
            )
        half = hidden // 2
        self.first = nn.Conv2d(channels, hidden, 3, padding=1)
        self.hidden_weights = nn.ModuleList(
            [PositiveConv2d(hidden, half) for _ in range(depth - 1)]
        )
        self.skips = nn.ModuleList(
            [nn.Conv2d(channels, half, 3, padding=1) for _ in range(depth - 1)]
        )
        self.augments = nn.ModuleList(
            [nn.Conv2d(channels, half, 3, padding=1) for _ in range(depth - 1)]
        )
        self.norms = nn.ModuleList([ConvexChannelNorm(half) for _ in range(depth - 1)])
        self.output_weight = PositiveConv2d(hidden, 1)
        self.output_skip = nn.Conv2d(channels, 1, 3, padding=1, bias=False)
        self.output_norm = ConvexChannelNorm(1)
        self.output_norm.bias.requires_grad_(False)

    def evaluate(self, x: Tensor, initialize: bool = False) -> Tensor:
        z = gaussian_softplus(self.first(x))
        for weight, skip, augment, norm in zip(
            self.hidden_weights, self.skips, self.augments, self.norms, strict=True
        ):
            pre = weight(z) + skip(x)
            if initialize:
                norm.initialize_from(pre)
            z = torch.cat([gaussian_softplus(norm(pre)), gaussian_softplus(augment(x))], 1)
        out = (self.output_weight(z) + self.output_skip(x)).flatten(1).sum(1, keepdim=True)
        if initialize:
            self.output_norm.initialize_from(out)
        return self.output_norm(out).squeeze(1)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        return self.evaluate(x)


class ConvCPBlock(PotentialMirror):
    """One block ∇G_k: G(h) = softplus(w₁)·I(h) + (softplus(w₀) + α)/2·‖h‖² on (C, H, W)."""

    def __init__(
        self, shape: Sequence[int], *, hidden: int, depth: int, alpha: float, **solve: Any
    ) -> None:
        super().__init__()
        self.event_shape = tuple(int(size) for size in shape)
        self.alpha = float(alpha)
        self.diagonal_floor = self.alpha
        for name, value in solve.items():
            setattr(self, name, value)
        self.icnn = ConvICNN(self.event_shape[0], hidden, depth)
        self.w0 = nn.Parameter(torch.tensor(math.log(math.e - 1.0)))
        self.w1 = nn.Parameter(torch.tensor(0.0))

    def potential(self, x: Tensor) -> Tensor:
        x = x.to(self.w0.dtype)
        quadratic = 0.5 * (F.softplus(self.w0) + self.alpha) * x.flatten(1).square().sum(1)
        return F.softplus(self.w1) * self.icnn(x) + quadratic


class _BlockInverse(torch.autograd.Function):
    """h = ∇G*(y) of one block on the graph of y and the block's parameters (implicit):
    w = H(h)⁻¹g, ∂L/∂y = w, ∂L/∂ψ = −∂ψ⟨∇G(h), w⟩."""

    @staticmethod
    def forward(ctx: Any, y: Tensor, h: Tensor, block: ConvCPBlock, *parameters: Tensor) -> Tensor:
        ctx.block = block
        ctx.save_for_backward(h, *parameters)
        return h.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_h: Tensor) -> tuple[Tensor | None, ...]:
        h, *parameters = ctx.saved_tensors
        block: ConvCPBlock = ctx.block
        with torch.enable_grad():
            point = h.detach().requires_grad_(True)
            _, gradient = potential_gradient(block.potential, point, create_graph=True)
            dim = h[0].numel()
            if dim <= DENSE_LIMIT:
                hessian = potential_hessian(block.potential, point)
                w = torch.linalg.solve(hessian, grad_h.flatten(1).unsqueeze(-1))
                w = w.reshape(grad_h.shape)
            else:

                def hvp(u: Tensor) -> Tensor:
                    (value,) = torch.autograd.grad(gradient, point, u, retain_graph=True)
                    return value

                w = conjugate_gradient(hvp, grad_h, max_iterations=dim, atol=0.0, rtol=1e-10)
                w = w.solution
            found = torch.autograd.grad(gradient, parameters, -w, allow_unused=True)
        return (w, None, None, *found)


class CPFlowImage(FlowModule, PotentialMirror):
    """The multi-scale Convex Potential Flow for images, z = T(x) (data → base).

    T = [ActNorm → ∇G₁ → … → ActNorm → ∇G_n] at full scale, squeeze, the same with
    `blocks_per_scale` blocks per scale, then unsqueeze back to (C, H, W). Each G_k =
    softplus(w₁)·I_k(h) + (softplus(w₀) + α)/2·‖h‖² with a `ConvICNN` I_k (`depth` hidden
    layers of 3×3 convolutions, positive hidden-path weights, Gaussian softplus).

    - `forward(x)` = (T(x), Σ log-dets): ActNorm's exactly, each block's log det ∇²G_k
      exact (D HVPs + slogdet, `logdet="exact"`: tiny shapes only) or by stochastic Lanczos
      quadrature (`logdet="stochastic"`: no gradient; `exact_log_prob` False).
    - `inverse(z)`: blocks inverted in reverse order, each by the per-chain L-BFGS solve of
      `solve_inverse` (warm start: the block's input y itself), differentiable by implicit
      differentiation per block; the log-det is −forward's at the solution.
    - `loss`: exact mode FlowModule's forward KL; stochastic mode CP-Flow's Hutchinson + CG
      surrogate per block (`logdet_surrogate`; its value is not the NLL).
    - Mirror map (`single_block = False`): `grad` = T, `inverse` = T⁻¹ as a `SolveResult`
      (residual ‖T(x) − y‖, iterations summed over the blocks), `hvp` = Jv (the composite
      Jacobian, not symmetric), `hessian_diagonal` = v ⊙ (Jv) clamped ≥ α (one Rademacher v).
      `potential`, `sqrt_hessian_times` and `log_det_hessian` of one convex G do not exist
      and raise.
    - ActNorms (the flow's and the ICNNs') are initialised on the first data batch in `loss`
      (or `initialize(x)`), the buffer `initialized` saved with the state.

    Warning:
        The ICNN widths of the paper are not given; `hidden = 104` is chosen so that the
        default at (3, 32, 32) has about 0.26M parameters (the paper's count). Convolutions
        may round differently with the batch size, so unlike `flows.CPFlow` a chain's inverse
        is not guaranteed bit-identical across batch compositions.

    Arguments:
        event_shape: (C, H, W), H and W even.
        blocks_per_scale: CP-Flow blocks before and after the squeeze (2: the paper's 4).
        hidden, depth: each ConvICNN's width and hidden layers (depth 2 = the paper's).
        alpha: the floor α ≥ 0 of each ∇²G_k.
        logdet, n_probes, lanczos_steps, probe_seed, cg_atol, cg_rtol, cg_max_iterations:
            as `flows.CPFlow`.
        tolerance, max_iterations, history: each block's inverse solve.
        **settings: `FlowModule`'s.
    """

    single_block = False

    def __init__(
        self,
        *,
        event_shape: Sequence[int] = (3, 32, 32),
        blocks_per_scale: int = 2,
        hidden: int = 104,
        depth: int = 2,
        alpha: float = 1e-4,
        logdet: str = "stochastic",
        n_probes: int = 1,
        lanczos_steps: int = 10,
        probe_seed: int = 0,
        cg_atol: float = 1e-3,
        cg_rtol: float = 1e-3,
        cg_max_iterations: int | None = None,
        tolerance: float = 1e-4,
        max_iterations: int = 50,
        history: int = 10,
        **settings: Any,
    ) -> None:
        super().__init__(event_shape=event_shape, **settings)
        shape = self.event_shape
        if shape is None or len(shape) != 3 or shape[1] % 2 or shape[2] % 2:
            raise ValueError(
                f"{COMPONENT}.event_shape must be (C, H, W) with H, W even, got {event_shape!r}"
            )
        if not (math.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"{COMPONENT}.alpha must be >= 0, got {alpha}")
        if logdet not in ("exact", "stochastic"):
            raise ValueError(f"{COMPONENT}.logdet must be 'exact' or 'stochastic', got {logdet!r}")
        if int(blocks_per_scale) < 1:
            raise ValueError(f"{COMPONENT}.blocks_per_scale must be >= 1, got {blocks_per_scale}")
        self.alpha = float(alpha)
        self.diagonal_floor = self.alpha
        self.logdet = logdet
        self.exact_log_prob = logdet == "exact"
        self.n_probes, self.lanczos_steps, self.probe_seed = n_probes, lanczos_steps, probe_seed
        self.cg_atol, self.cg_rtol, self.cg_max_iterations = cg_atol, cg_rtol, cg_max_iterations
        self.tolerance, self.max_iterations, self.history = tolerance, max_iterations, history
        c, h, w = shape
        scales = [(c, h, w), (4 * c, h // 2, w // 2)]
        self.scale_of: list[int] = []
        self.actnorms = nn.ModuleList()
        self.blocks = nn.ModuleList()
        solve = {"tolerance": tolerance, "max_iterations": max_iterations, "history": history}
        for scale, block_shape in enumerate(scales):
            for _ in range(int(blocks_per_scale)):
                self.scale_of.append(scale)
                self.actnorms.append(ActNorm(block_shape[0]))
                self.blocks.append(
                    ConvCPBlock(block_shape, hidden=hidden, depth=depth, alpha=alpha, **solve)
                )
        self.register_buffer("initialized", torch.tensor(False))

    @classmethod
    def testing_cases(cls, shape: Sequence[int] | None = None) -> list[FlowModule]:
        """A (1, 4, 4) flow (one block per scale, width 8) in float64 with the exact log-det,
        initialised on skewed data and every parameter moved (seeded).

        With `shape` = (C, H, W), H and W even: a small float32 flow of that shape (one
        block per scale, width 8, the default stochastic log-det) for the composability
        matrix. Images only: another shape raises IncompatibleError."""
        if shape is not None:
            instead = "flows.CPFlow for vectors"
            image = require_image_shape(COMPONENT, shape, instead, divisor=2)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                flow = cls(event_shape=image, blocks_per_scale=1, hidden=8, max_iterations=100)
                flow.initialize(torch.rand(16, *image) * 1.6 - 0.8)
            return [flow]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            flow = cls(
                event_shape=(1, 4, 4),
                blocks_per_scale=1,
                hidden=8,
                logdet="exact",
                tolerance=1e-10,
                max_iterations=200,
                learning_rate=1e-2,
            ).double()
            flow.initialize(torch.rand(32, 1, 4, 4, dtype=torch.float64) * 1.6 - 0.5)
            with torch.no_grad():
                for parameter in flow.parameters():
                    parameter.add_(0.1 * torch.randn_like(parameter))
        return [flow]

    @property
    def component_name(self) -> str:
        return COMPONENT

    # Stages -------------------------------------------------------------------------------

    def _to_scale(self, h: Tensor, current: int, target: int) -> Tensor:
        while current < target:
            h, current = squeeze(h), current + 1
        while current > target:
            h, current = unsqueeze(h), current - 1
        return h

    def _block_forward(self, k: int, h: Tensor, keep: bool) -> tuple[Tensor, Tensor]:
        block = self.blocks[k]
        with torch.enable_grad():
            point = h if (keep and h.requires_grad) else h.detach().requires_grad_(True)
            _, gradient = potential_gradient(block.potential, point, create_graph=True)
            log_det = self._block_log_det(point, gradient, keep)
        if not keep:
            return gradient.detach(), log_det.detach()
        return gradient, log_det

    def _block_log_det(self, point: Tensor, gradient: Tensor, keep: bool) -> Tensor:
        dim = point[0].numel()
        if self.logdet == "exact":
            rows = []
            for i in range(dim):
                unit = torch.zeros_like(gradient).flatten(1)
                unit[:, i] = 1.0
                (row,) = torch.autograd.grad(
                    gradient,
                    point,
                    unit.reshape(gradient.shape),
                    retain_graph=True,
                    create_graph=keep,
                )
                rows.append(row.flatten(1))
            return torch.linalg.slogdet(torch.stack(rows, 1)).logabsdet
        generator = torch.Generator(device=gradient.device).manual_seed(self.probe_seed)
        probes = rademacher_probes(gradient, self.n_probes, generator)

        def hvp(v: Tensor) -> Tensor:
            (value,) = torch.autograd.grad(gradient, point, v, retain_graph=True)
            return value

        return lanczos_logdet(hvp, probes, self.lanczos_steps).detach()

    def _map(self, x: Tensor, keep: bool, with_log_det: bool = True) -> tuple[Tensor, Tensor]:
        h, scale = x.to(self.blocks[0].w0.dtype), 0
        total = h.new_zeros(h.shape[0])
        for k, (actnorm, block_scale) in enumerate(zip(self.actnorms, self.scale_of, strict=True)):
            h, scale = self._to_scale(h, scale, block_scale), block_scale
            h, actnorm_log_det = actnorm(h)
            if with_log_det:
                h, block_log_det = self._block_forward(k, h, keep)
                total = total + actnorm_log_det + block_log_det
            else:
                with torch.enable_grad():
                    point = h if h.requires_grad else h.detach().requires_grad_(True)
                    h = potential_gradient(self.blocks[k].potential, point, create_graph=keep)[1]
        return self._to_scale(h, scale, 0), total

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        """(T(x), log|det ∂T/∂x|), on the graph when grad is enabled (stochastic log-dets
        never are)."""
        self.check_input(x)
        keep = torch.is_grad_enabled()
        z, log_det = self._map(x, keep)
        return (z, log_det) if keep else (z.detach(), log_det.detach())

    def _block_inputs(self, x: Tensor) -> list[Tensor]:
        """Each block's input (after its ActNorm) on the way from x to T(x), detached."""
        h, scale, inputs = x.to(self.blocks[0].w0.dtype).detach(), 0, []
        for k, (actnorm, block_scale) in enumerate(zip(self.actnorms, self.scale_of, strict=True)):
            h, scale = self._to_scale(h, scale, block_scale), block_scale
            with torch.no_grad():
                h, _ = actnorm(h)
            inputs.append(h)
            h = self.blocks[k].grad(h)
        return inputs

    def _invert(
        self, z: Tensor, start: Tensor | None, tolerance: float | None, max_iterations: int | None
    ) -> tuple[list[SolveResult], Callable[[bool], Tensor]]:
        """Solve every block in reverse order (warm-started at the start's block inputs, or
        at each block's own target); returns the solves and a maker of x (graph or not)."""
        starts = None if start is None else self._block_inputs(start)
        last = self.scale_of[-1]
        h, scale = self._to_scale(z.to(self.blocks[0].w0.dtype).detach(), 0, last), last
        solves: list[SolveResult] = []
        targets: list[Tensor] = []
        for k in reversed(range(len(self.blocks))):
            h, scale = self._to_scale(h, scale, self.scale_of[k]), self.scale_of[k]
            warm = h if starts is None else starts[k]
            result = self.blocks[k].inverse(
                h, warm, tolerance=tolerance, max_iterations=max_iterations
            )
            solves.append(result)
            targets.append(h)
            with torch.no_grad():
                h, _ = self.actnorms[k].inverse(result.x.to(h.dtype))
        x_plain = self._to_scale(h, scale, 0)

        def make(keep: bool) -> Tensor:
            parameters = [p for p in self.parameters() if p.requires_grad]
            if not keep or not (z.requires_grad or parameters):
                return x_plain.to(z.dtype)
            h, scale = self._to_scale(z.to(self.blocks[0].w0.dtype), 0, last), last
            for result, k in zip(solves, reversed(range(len(self.blocks))), strict=True):
                h, scale = self._to_scale(h, scale, self.scale_of[k]), self.scale_of[k]
                block = self.blocks[k]
                own = [p for p in block.parameters() if p.requires_grad]
                solved = _BlockInverse.apply(h, result.x.to(h.dtype), block, *own)
                h, _ = self.actnorms[k].inverse(solved)
            return self._to_scale(h, scale, 0).to(z.dtype)

        return solves, make

    def inverse(  # type: ignore[override]
        self,
        z: Tensor,
        start: Tensor | None = None,
        *,
        tolerance: float | None = None,
        max_iterations: int | None = None,
    ) -> CPFlowInverse:
        """T⁻¹(z), blocks solved in reverse order (warm-started from `start`'s block inputs
        when given): a `CPFlowInverse`, unpacking as (x, −log|det ∂T/∂x| at x) and reading as
        a `SolveResult` for `samplers.MirrorLangevin`."""
        self.check_input(z, "base points")
        keep = torch.is_grad_enabled()
        solves, make = self._invert(z, start, tolerance, max_iterations)
        x_plain = make(False).detach()

        def flow_log_det(x: Tensor) -> Tensor:
            with torch.set_grad_enabled(keep):
                log_det = -self._map(x, keep)[1]
            return log_det if keep else log_det.detach()

        residual = torch.stack([s.residual.to(z.dtype) for s in solves]).amax(0)
        return CPFlowInverse(
            x=x_plain,
            residual=residual,
            iterations=torch.stack([s.iterations for s in solves]).sum(0),
            converged=torch.stack([s.converged for s in solves]).all(0),
            flow_point=lambda: make(keep),
            flow_log_det=flow_log_det,
        )

    def sample_with_latents(
        self, n: int, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """(x, z): `n` samples T⁻¹(z), z ~ N(0, I) from `generator` (no log-det computed)."""
        z = self.base_noise(n, generator=generator)
        return self.inverse(z).point(), z

    # Learning ----------------------------------------------------------------------------

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Every ActNorm (the flow's and the ICNNs') on the data batch `x`, in order."""
        self.check_input(x, "data")
        h, scale = x.to(self.blocks[0].w0.dtype), 0
        for k, (actnorm, block_scale) in enumerate(zip(self.actnorms, self.scale_of, strict=True)):
            h, scale = self._to_scale(h, scale, block_scale), block_scale
            actnorm.initializing = True
            try:
                h, _ = actnorm(h)
            finally:
                actnorm.initializing = False
            self.blocks[k].icnn.evaluate(h, initialize=True)
            h = self.blocks[k].grad(h)
        self.initialized.fill_(True)

    def loss(self, round: Round) -> dict[str, Tensor]:
        """Forward KL (exact mode) or the per-block CG surrogate (stochastic)."""
        if not bool(self.initialized):
            first = round.x_data if round.x_data.numel() else round.result.x.detach()
            self.initialize(first)
        if self.logdet == "exact":
            return super().loss(round)
        points = self.training_points(round)
        self.check_input(points, f"{self.fit_on} points")
        h, scale = points.to(self.blocks[0].w0.dtype).detach(), 0
        surrogate = h.new_zeros(h.shape[0])
        iterations = []
        for k, (actnorm, block_scale) in enumerate(zip(self.actnorms, self.scale_of, strict=True)):
            h, scale = self._to_scale(h, scale, block_scale), block_scale
            h, actnorm_log_det = actnorm(h)
            with torch.enable_grad():
                point = h if h.requires_grad else h.detach().requires_grad_(True)
                _, gradient = potential_gradient(
                    self.blocks[k].potential, point, create_graph=True
                )
                probes = rademacher_probes(gradient, self.n_probes)
                block_surrogate, solve = logdet_surrogate(
                    gradient,
                    point,
                    probes,
                    max_iterations=self.cg_max_iterations,
                    atol=self.cg_atol,
                    rtol=self.cg_rtol,
                )
            surrogate = surrogate + actnorm_log_det + block_surrogate
            iterations.append(solve.iterations.to(surrogate.dtype).mean())
            h = gradient
        z = self._to_scale(h, scale, 0)
        base = standard_normal_log_prob(z)
        return {
            "loss": -(base + surrogate).mean(),
            "base_nll": -base.mean(),
            "cg_iterations": torch.stack(iterations).mean(),
        }

    # Mirror map (a composite: single_block False) ---------------------------------------

    def potential(self, x: Tensor) -> Tensor:
        raise NotImplementedError(
            f"{COMPONENT} is a composite of several ∇G_k (with ActNorms and a squeeze): it "
            f"is not the gradient of one convex potential, so G(x) does not exist"
        )

    def grad(self, x: Tensor, create_graph: bool = False) -> Tensor:
        """T(x), the composite map (on x's graph when `create_graph`)."""
        self.check_input(x, "points")
        z, _ = self._map(x, keep=create_graph, with_log_det=False)
        return z if create_graph else z.detach()

    def jvp(self, x: Tensor, v: Tensor) -> Tensor:
        """J(x)v, the composite Jacobian times v (two reverse passes)."""
        with torch.enable_grad():
            point = x.detach().requires_grad_(True)
            z = self.grad(point, create_graph=True)
            u = torch.zeros_like(z, requires_grad=True)
            (transposed,) = torch.autograd.grad(z, point, u, create_graph=True)
            (product,) = torch.autograd.grad(transposed, u, v)
        return product.detach()

    def hvp(self, x: Tensor, v: Tensor) -> Tensor:
        """J(x)v (the composite's Jacobian: not symmetric)."""
        return self.jvp(x, v)

    def hessian(self, x: Tensor) -> Tensor:
        """The composite Jacobian J(x) (B, D, D) from D products (small D; not symmetric)."""
        dim = x[0].numel()
        columns = [
            self.jvp(
                x,
                torch.eye(dim, dtype=x.dtype, device=x.device)[i]
                .expand(x.shape[0], dim)
                .reshape(x.shape),
            ).flatten(1)
            for i in range(dim)
        ]
        return torch.stack(columns, 2)

    def hessian_diagonal(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The Jacobian-diagonal heuristic v ⊙ (Jv), v Rademacher from `generator`, ≥ α."""
        probe = rademacher_probes(x, 1, generator)[0]
        return (probe * self.jvp(x, probe)).clamp(min=self.alpha)

    def sqrt_hessian_times(
        self, x: Tensor, eps: Tensor, method: str = "exact", steps: int = 10
    ) -> Tensor:
        raise ValueError(
            f"{COMPONENT} is a composite mirror (single_block=False): no symmetric H^1/2; "
            f"use samplers.MirrorLangevin.noise = 'diagonal'"
        )

    def log_det_hessian(self, x: Tensor, **_: Any) -> Tensor:
        """log|det J(x)| (the flow's forward log-det)."""
        with torch.no_grad():
            return self.forward(x)[1]


def register_image_flows(registry: Registry) -> None:
    """Register `CPFlowImage` (gin ``flows.CPFlowImage``)."""
    registry.add("flow", "CPFlowImage", CPFlowImage)
