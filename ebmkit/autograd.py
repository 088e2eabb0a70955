r"""Energy gradients with respect to the chains' positions, without touching parameter grads."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
from torch import Tensor

from ebmkit.protocols import Energy

__all__ = ["differentiable_chains", "energy_and_grad", "is_differentiable"]

_DIFFERENTIABLE = contextvars.ContextVar("ebmkit_differentiable_chains", default=False)


@contextlib.contextmanager
def differentiable_chains(enabled: bool = True) -> Iterator[None]:
    """Inside this block `energy_and_grad` keeps the autograd graph (``create_graph=True``).

    Kernels are written once, with plain tensor arithmetic; under this switch the chain's
    every step stays on the graph, so a loss on the final state reaches the start and the
    energy's parameters (`Sampler.sample(..., differentiable=True)` turns it on).
    """
    token = _DIFFERENTIABLE.set(enabled)
    try:
        yield
    finally:
        _DIFFERENTIABLE.reset(token)


def is_differentiable() -> bool:
    """Whether the chains being run keep their graph (see `differentiable_chains`)."""
    return _DIFFERENTIABLE.get()


def energy_and_grad(energy: Energy, x: Tensor) -> tuple[Tensor, Tensor]:
    """E(x) and ∇ₓE(x) from one forward and one backward pass.

    Only the input's gradient is computed (`torch.autograd.grad` with `inputs=x`), so the
    parameters' `.grad` stay untouched and no graph outlives the call; works under `no_grad`.
    Inside `differentiable_chains()` both results stay on the graph instead (E(x) is not
    detached and ∇ₓE is built with ``create_graph=True``).

    Arguments:
        energy: maps (B, ...) to (B,).
        x: positions (B, ...).

    Returns:
        (E(x) detached, shape (B,); ∇ₓE(x), shape of `x`).

    Example:
        >>> e, g = energy_and_grad(lambda x: 0.5 * (x**2).sum(1), torch.ones(3, 2))
        >>> torch.equal(g, torch.ones(3, 2))
        True
    """
    if not torch.is_grad_enabled():  # e.g. called under no_grad: switch it on for this call
        with torch.enable_grad():
            return energy_and_grad(energy, x)
    if _DIFFERENTIABLE.get():
        return _energy_and_grad_on_graph(energy, x)
    x = x.detach().requires_grad_(True)
    value = energy(x)
    _check_shape(value, x)
    (grad,) = torch.autograd.grad(value.sum(), x)
    return value.detach(), grad


def _energy_and_grad_on_graph(energy: Energy, x: Tensor) -> tuple[Tensor, Tensor]:
    """E(x) and ∇ₓE(x) as differentiable functions of `x` and of the energy's parameters."""
    if not x.requires_grad:
        x = x.detach().requires_grad_(True)
    value = energy(x)
    _check_shape(value, x)
    (grad,) = torch.autograd.grad(value.sum(), x, create_graph=True)
    return value, grad


def _check_shape(value: Tensor, x: Tensor) -> None:
    if value.shape != x.shape[:1]:
        raise ValueError(
            f"an energy must map a batch (B, ...) to shape (B,), got {tuple(value.shape)} "
            f"for input {tuple(x.shape)}; reduce the last layer to one number per sample"
        )
