r"""Declared incompatibilities: a component refuses, when a trainer is built, a combination
it cannot run, saying why and what would fit.

**The convention.** A sampler, an initializer or an energy may define

.. code-block:: python

    def check_compatible(
        self, *, sampler: Sampler, initializer: Initializer, energy: Energy,
        shape: tuple[int, ...] | None, batch_size: int | None = None,
    ) -> None: ...

keyword-only, all five always passed by a trainer: the run's sampler, initializer and energy
(the component itself among them), `shape`, the shape of one chain (of one data item; None
when the data does not say), and `batch_size`, the chains a round asks for (None: unknown).
A settings clash across components (a persistent bank smaller than the batch) is refused
here too, before the run folder gets any log. It returns None when the combination works and raises
`IncompatibleError` (a `ConfigError`: the CLI prints one ``ebmkit: error:`` line and exits
1) when it cannot, naming both components, the value that clashes and the binding that would
fit. `trainers.Contrastive` (and so every trainer built on it) calls `check_compatible` for
the sampler, the initializer and the energy when it is built, before any round, so a mirror
map of the wrong dimension or a generator of the wrong image size is refused before the
first round instead of failing inside it.

Declare only real incompatibilities: a refusal removes a combination from every user's reach
and from the composability matrix (docs/composability.md).

The same error says that a component's `testing_cases(shape)` cannot serve a shape (a flow
for vectors asked for images): see `ebmkit.testing.shape_cases`.

Example:
    >>> class VectorsOnly:
    ...     def check_compatible(self, *, sampler, initializer, energy, shape, batch_size=None):
    ...         if shape is not None and len(shape) != 1:
    ...             raise IncompatibleError(f"VectorsOnly needs vectors, got chains of {shape}")
    >>> check_compatible(sampler=VectorsOnly(), initializer=None, energy=None, shape=(2,))
    >>> check_compatible(sampler=VectorsOnly(), initializer=None, energy=None, shape=(1, 8, 8))
    Traceback (most recent call last):
    ...
    ebmkit.errors.IncompatibleError: VectorsOnly needs vectors, got chains of (1, 8, 8)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ebmkit.errors import IncompatibleError

__all__ = [
    "CHECK_METHOD",
    "IncompatibleError",
    "check_compatible",
    "check_event_shape",
    "component_name",
    "data_shape",
    "require_image_shape",
    "require_vector_shape",
]

CHECK_METHOD = "check_compatible"
"""The method a component defines to refuse a combination (see the module's docstring)."""


def data_shape(dataset: Any) -> tuple[int, ...] | None:
    """The shape of one item of `dataset` (its input tensor for (x, label) items): the shape
    of one chain. None when the dataset is empty or its items are not tensors."""
    try:
        if len(dataset) == 0:
            return None
        item = dataset[0]
    except (TypeError, IndexError, KeyError):
        return None
    x = item[0] if isinstance(item, tuple | list) else item
    return tuple(x.shape) if isinstance(x, torch.Tensor) else None


def check_compatible(
    *,
    sampler: Any,
    initializer: Any,
    energy: Any,
    shape: Sequence[int] | None,
    batch_size: int | None = None,
) -> None:
    """Call `check_compatible` on the sampler, the initializer and the energy (each that
    defines it), in that order; the first refusal (`IncompatibleError`) propagates."""
    shape = None if shape is None else tuple(int(size) for size in shape)
    for component in (sampler, initializer, energy):
        check = getattr(component, CHECK_METHOD, None)
        if callable(check):
            check(
                sampler=sampler,
                initializer=initializer,
                energy=energy,
                shape=shape,
                batch_size=batch_size,
            )


def component_name(component: object) -> str:
    """The gin name a component reports (``component_name``), else its class name."""
    return str(getattr(component, "component_name", type(component).__name__))


def check_event_shape(
    part: object, owner: str, role: str, shape: Sequence[int] | None, fix: str
) -> None:
    """Refuse when `part` (a flow, a mirror map) is built for one event shape and the chains
    have another; `part.event_shape` None (any shape) or an unknown `shape` passes.

    Arguments:
        part: the object with an `event_shape`.
        owner: who holds it, for the message (e.g. "samplers.FlowIMH").
        role: what it is to the owner (e.g. "proposal flow", "mirror").
        shape: the chains' shape (None: unknown, nothing to check).
        fix: what would fit, e.g. "build the flow with event_shape = (2,)".
    """
    event_shape = getattr(part, "event_shape", None)
    if event_shape is None or shape is None:
        return
    if tuple(event_shape) != tuple(shape):
        raise IncompatibleError(
            f"{owner}: its {role} {component_name(part)} has event_shape {tuple(event_shape)} "
            f"but the chains (the data) are {tuple(shape)} per sample; {fix}"
        )


def require_vector_shape(component: str, shape: Sequence[int], instead: str) -> int:
    """The dimension of `shape` when it is (dim,); else IncompatibleError saying `component`
    is for vectors and what to use `instead` (e.g. "flows.Glow for images")."""
    shape = tuple(shape)
    if len(shape) != 1:
        raise IncompatibleError(
            f"{component} is for vectors (event shape (dim,)), not chains of shape {shape}; "
            f"use {instead}"
        )
    return int(shape[0])


def require_image_shape(
    component: str, shape: Sequence[int], instead: str, divisor: int = 1
) -> tuple[int, int, int]:
    """`shape` as (C, H, W) when it is an image with H and W divisible by `divisor`; else
    IncompatibleError saying what `component` needs and what to use `instead`."""
    shape = tuple(shape)
    if len(shape) != 3 or shape[1] % divisor or shape[2] % divisor:
        sides = f" with H and W divisible by {divisor}" if divisor > 1 else ""
        raise IncompatibleError(
            f"{component} is for images (C, H, W){sides}, not chains of shape {shape}; "
            f"use {instead}"
        )
    return int(shape[0]), int(shape[1]), int(shape[2])
