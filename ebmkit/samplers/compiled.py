r"""E and ∇E at the chains through `torch.compile`: what a sampler's `compile=True` runs.

The gradient is taken with `torch.func.grad_and_value` of the summed energy (∂ΣE/∂x = ∇E per
chain, chains being independent) and the whole forward + backward is compiled as one graph,
so the elementwise work of both passes fuses. Random draws stay outside, in eager code: a
compiled sampler uses the same random numbers as an eager one.
"""

from __future__ import annotations

import types
import warnings
from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch
from torch import Tensor

from ebmkit.autograd import _check_shape, energy_and_grad, is_differentiable
from ebmkit.protocols import Energy

__all__ = ["COMPILABLE_DEVICES", "CompiledGradient"]

COMPILABLE_DEVICES = frozenset({"cpu", "cuda", "xpu"})
"""Device types torch.compile's default backend (inductor) generates code for."""

_EAGER = object()
"""Cache entry of a key whose compilation failed: that key runs eagerly from then on."""

Evaluator = Callable[[Tensor], tuple[Tensor, Tensor]]


class CompiledGradient:
    """`energy_and_grad` compiled once per (energy, chain shape, dtype, device) and reused.

    Where compiling cannot work (an energy torch.compile cannot trace as one graph, no C++
    compiler, a device inductor does not support, `differentiable=True` sampling that needs
    the graph through the chain) the eager `energy_and_grad` runs instead, after one
    `UserWarning` naming the owner and the reason; the owner gets no further warning. An
    energy that fails in eager code too raises its own error, not a warning.

    Arguments:
        owner: the sampler's name as the warning shows it, e.g. "samplers.Langevin".
        max_entries: compiled functions kept (least recently used dropped first).

    Example:
        >>> gradient = CompiledGradient("samplers.Langevin")
        >>> gradient.warned  # nothing fell back yet; `gradient(energy, x)` compiles on first use
        False
    """

    def __init__(self, owner: str, max_entries: int = 8) -> None:
        self.owner = owner
        self.max_entries = max_entries
        self.warned = False
        self._entries: OrderedDict[Hashable, tuple[Energy, Evaluator | object]] = OrderedDict()

    def __call__(self, energy: Energy, x: Tensor) -> tuple[Tensor, Tensor]:
        """(E(x) detached, ∇ₓE(x)), as `ebmkit.autograd.energy_and_grad` returns them."""
        if is_differentiable():
            self._warn(
                "differentiable=True sampling keeps the autograd graph through every step, "
                "which the compiled gradient does not build"
            )
            return energy_and_grad(energy, x)
        if x.device.type not in COMPILABLE_DEVICES:
            self._warn(
                f"torch.compile's inductor backend does not generate code for device "
                f"{x.device.type!r} (it does for {', '.join(sorted(COMPILABLE_DEVICES))})"
            )
            return energy_and_grad(energy, x)
        key = (_identity(energy), tuple(x.shape), x.dtype, x.device)
        evaluate = self._entry(key, energy)
        if evaluate is _EAGER:
            return energy_and_grad(energy, x)
        try:
            with torch.no_grad():  # outputs off the graph; torch.func.grad ignores this switch
                value, grad = evaluate(x)
        except Exception as error:  # noqa: BLE001 - any compile failure falls back to eager
            result = energy_and_grad(energy, x)  # an energy broken in eager code raises here
            self._entries[key] = (energy, _EAGER)
            self._warn(
                f"torch.compile could not compile the energy as one graph (a Python branch "
                f"on a tensor's value, .item(), or an operation it cannot trace): "
                f"{_first_line(error)}"
            )
            return result
        _check_shape(value, x)
        return value, grad

    def _entry(self, key: Hashable, energy: Energy) -> Evaluator | object:
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
            return found[1]
        try:
            evaluate: Evaluator | object = torch.compile(
                _fresh(_value_and_grad(energy)), fullgraph=True, dynamic=False
            )
        except Exception as error:  # noqa: BLE001 - e.g. no backend on this platform
            self._warn(f"torch.compile is not available: {_first_line(error)}")
            evaluate = _EAGER
        self._entries[key] = (energy, evaluate)  # the energy kept: its id stays unique
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return evaluate

    def _warn(self, reason: str) -> None:
        if self.warned:
            return
        self.warned = True
        warnings.warn(
            f"{self.owner}(compile=True) runs its gradients eagerly: {reason}. The samples "
            f"are the eager ones; this sampler will not warn again (compile=False runs "
            f"eagerly without a warning)",
            UserWarning,
            stacklevel=4,
        )


def _value_and_grad(energy: Energy) -> Evaluator:
    """x ↦ (E(x), ∇ₓE(x)) as one function of x that torch.compile traces whole."""

    def summed(x: Tensor) -> tuple[Tensor, Tensor]:
        value = energy(x)
        return value.sum(), value

    grad_and_value = torch.func.grad_and_value(summed, has_aux=True)

    def evaluate(x: Tensor) -> tuple[Tensor, Tensor]:
        grad, (_, value) = grad_and_value(x)
        return value, grad

    return evaluate


def _fresh(function: types.FunctionType) -> types.FunctionType:
    """`function` with its own code object: torch.compile keeps its compiled graphs (and
    counts its recompile limit) per code object, so each key gets a cache of its own."""
    return types.FunctionType(
        function.__code__.replace(),
        function.__globals__,
        function.__name__,
        function.__defaults__,
        function.__closure__,
    )


def _identity(energy: Energy) -> Hashable:
    """What makes two energies the same: the object, or for a bound method (a new object at
    each attribute access) its instance and function."""
    if isinstance(energy, types.MethodType):
        return (id(energy.__self__), id(energy.__func__))
    return id(energy)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
