"""Shared helpers of the ICNN, CG and CP-Flow tests: batched Hessians, the chord check, an
ICNN with a wrong (negative) hidden weight."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ebmkit_cpmla.icnn import ICNN, PositiveLinear

F64 = torch.float64
ALPHA = 1e-4


def batched_hessian(potential: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """∇²potential at each row of x, (B, d, d), by d autograd Hessian-vector products."""
    x = x.detach().requires_grad_(True)
    gradient = torch.autograd.grad(potential(x).sum(), x, create_graph=True)[0]
    columns = []
    for i in range(x.shape[1]):
        unit = torch.zeros_like(x)
        unit[:, i] = 1.0
        columns.append(torch.autograd.grad(gradient, x, unit, retain_graph=True)[0])
    return torch.stack(columns, 2).detach()


def smallest_hessian_eigenvalue(potential: Callable[[Tensor], Tensor], x: Tensor) -> float:
    """min over the rows of x of the smallest eigenvalue of ∇²potential."""
    hessian = batched_hessian(potential, x)
    return float(torch.linalg.eigvalsh(0.5 * (hessian + hessian.mT)).min())


def worst_chord_gap(
    potential: Callable[[Tensor], Tensor], a: Tensor, b: Tensor, strong: float, n_t: int = 21
) -> float:
    """max over lines a→b and t of G(ta + (1−t)b) − [tG(a) + (1−t)G(b) − strong/2·t(1−t)‖a−b‖²].

    ≤ 0 (up to rounding) for a `strong`-strongly convex G.
    """
    with torch.no_grad():
        ga, gb = potential(a), potential(b)
        gap = torch.full((a.shape[0],), -torch.inf, dtype=a.dtype)
        squared = (a - b).square().sum(1)
        for t in torch.linspace(0.0, 1.0, n_t, dtype=a.dtype)[1:-1]:
            middle = potential(t * a + (1 - t) * b)
            chord = t * ga + (1 - t) * gb - 0.5 * strong * t * (1 - t) * squared
            gap = torch.maximum(gap, middle - chord)
    return float(gap.max())


def scrambled_icnn(dim: int, *, seed: int, hidden: int = 16, depth: int = 3) -> ICNN:
    """A float64 ICNN, actnorm-initialised on a skewed data batch, every parameter moved."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ICNN(dim=dim, hidden=hidden, depth=depth).to(F64)
        data = torch.randn(256, dim, dtype=F64) * torch.linspace(0.5, 2.0, dim, dtype=F64)
        net.initialize(data + 1.0)
        with torch.no_grad():
            for parameter in net.parameters():
                parameter.add_(0.3 * torch.randn_like(parameter))
    return net


def make_one_weight_negative(net: ICNN, layer: int = 0) -> None:
    """The wrong variant: hidden-path layer `layer` uses −W⁺ (all its weights negative)."""
    target = (*net.hidden_weights, net.output_weight)[layer]
    assert isinstance(target, PositiveLinear)

    def negative(self: PositiveLinear = target) -> Tensor:
        return -PositiveLinear.positive_weight(self)

    target.positive_weight = negative  # type: ignore[method-assign]


def scrambled_cpflow(
    dim: int,
    *,
    seed: int,
    hidden: int = 16,
    depth: int = 3,
    icnn_weight: float = 1.5,
    quadratic: float = -1.0,
    noise: float = 0.3,
    **settings: object,
):  # noqa: ANN201
    """A float64 CPFlow, actnorm-initialised on skewed data, its ICNN's parameters moved by
    `noise`, w₁ = `icnn_weight` and w₀ = `quadratic` (softplus 1.70 and 0.31 by default:
    Hessian eigenvalues well away from 1)."""
    from ebmkit_cpmla.cpflow import CPFlow

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        flow = CPFlow(dim=dim, hidden=hidden, depth=depth, **settings).to(F64)
        data = torch.randn(256, dim, dtype=F64) * torch.linspace(0.5, 2.0, dim, dtype=F64)
        flow.initialize(data + 1.0)
        with torch.no_grad():
            for parameter in flow.icnn.parameters():
                parameter.add_(noise * torch.randn_like(parameter))
            flow.w1.fill_(icnn_weight)
            flow.w0.fill_(quadratic)
    return flow
