r"""Energy gradients with respect to the chains' positions, without touching parameter grads."""

from __future__ import annotations

import torch
from torch import Tensor

from ebmkit.protocols import Energy

__all__ = ["energy_and_grad"]


def energy_and_grad(energy: Energy, x: Tensor) -> tuple[Tensor, Tensor]:
    """E(x) and ∇ₓE(x) from one forward and one backward pass.

    Only the input's gradient is computed (`torch.autograd.grad` with `inputs=x`), so the
    parameters' `.grad` stay untouched and no graph outlives the call; works under `no_grad`.

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
    x = x.detach().requires_grad_(True)
    value = energy(x)
    if value.shape != x.shape[:1]:
        raise ValueError(
            f"an energy must map a batch (B, ...) to shape (B,), got {tuple(value.shape)} "
            f"for input {tuple(x.shape)}; reduce the last layer to one number per sample"
        )
    (grad,) = torch.autograd.grad(value.sum(), x)
    return value.detach(), grad
