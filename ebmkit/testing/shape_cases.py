r"""Shape-aware test cases of initializers and flows: `ShapeCase`, and the registry-wide
collections the composability matrix reads.

**The convention.** An initializer, a flow or a mirror is bound to one event shape (a noise
box, a generator's output, a flow's parameters), so its cases are made for a shape:

- a registered **initializer** offers a classmethod ``testing_cases(shape) ->
  list[ShapeCase]``: configured instances for chains of `shape` (e.g. (2,) or (3, 8, 8)),
  each named; a variant that cannot serve the shape is a `ShapeCase` with `refused` set to
  the reason (what would fit), never left out. An initializer that needs something more
  (data, a flow, networks) builds a small one itself: `Data` its own tiny seeded dataset,
  `Flow` one case per registered flow. The composability matrix crosses every case with
  every sampler: offer one case per variant worth crossing (usually one).
- a registered **flow** offers ``testing_cases(shape=None) -> list[Flow]``: with no shape,
  its own small cases for `ebmkit.testing.flows`' checks (unchanged); with a shape, small
  float32 instances of that event shape (seeded, the global RNG untouched), or it raises
  `ebmkit.compatibility.IncompatibleError` saying why it cannot serve the shape (a flow for
  vectors asked for an image) and which flow would.

`registered_initializer_cases` and `registered_flow_shape_cases` read the registry; a
component without the method, or whose method fails, or returns nothing without a reason, is
an entry with a `problem` that a parametrised test fails on, naming the component.

Example:
    >>> from ebmkit.initializers.noise import Noise
    >>> cases = Noise.testing_cases((2,))
    >>> cases[0].name, cases[0].component.sample(3).x.shape
    ('uniform', torch.Size([3, 2]))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from ebmkit.compatibility import IncompatibleError
from ebmkit.protocols import Flow, Initializer
from ebmkit.registry import Registry, get_registry

__all__ = [
    "SHAPE_CASES_METHOD",
    "RegisteredShapeCase",
    "ShapeCase",
    "registered_flow_shape_cases",
    "registered_initializer_cases",
]

SHAPE_CASES_METHOD = "testing_cases"
"""The classmethod: ``testing_cases(shape)`` (initializers), ``testing_cases(shape=None)``
(flows)."""


@attrs.frozen(kw_only=True)
class ShapeCase:
    """One configured component for an event shape, or why that variant cannot serve it.

    Arguments:
        name: a short name for the case (test ids, the matrix table), e.g. "uniform".
        component: the configured instance (None when refused).
        refused: why the component cannot serve the shape, and what would (None when built).
    """

    name: str = attrs.field(validator=attrs.validators.min_len(1))
    component: Any = None
    refused: str | None = None

    def __attrs_post_init__(self) -> None:
        if (self.component is None) == (self.refused is None):
            raise ValueError(
                f"ShapeCase {self.name!r}: give exactly one of component (the configured "
                f"instance) and refused (why it cannot serve the shape)"
            )


@attrs.frozen(kw_only=True)
class RegisteredShapeCase:
    """A registered component's case for one shape: built, refused (with the reason), or a
    problem (the component's `testing_cases` is missing or broken: a failing entry).

    Arguments:
        kind: "initializer" or "flow".
        component: the registered name, e.g. "Noise".
        plugin: the plugin that registered it.
        shape: the event shape asked for.
        name: the case's name.
        case: the configured instance (None when refused or a problem).
        refused: why the component cannot serve `shape`.
        problem: what is wrong with the component's `testing_cases`.
    """

    kind: str
    component: str
    plugin: str
    shape: tuple[int, ...]
    name: str
    case: Any = None
    refused: str | None = None
    problem: str | None = None

    @property
    def id(self) -> str:
        """``<registered name>-<case name>``, e.g. ``Flow-CPFlow``, or the registered name
        alone when the case is named after it (a flow's entry)."""
        if self.name == self.component:
            return self.component
        return f"{self.component}-{self.name}"

    def get(self) -> Any:
        """The instance; AssertionError with the problem when the component offers none."""
        if self.problem is not None:
            raise AssertionError(self.problem)
        if self.case is None:
            raise AssertionError(f"{self.kind} {self.component!r} refused: {self.refused}")
        return self.case


def _problem(kind: str, name: str, plugin: str, shape: tuple[int, ...], what: str) -> str:
    signature = "testing_cases(shape)" if kind == "initializer" else "testing_cases(shape=None)"
    returns = (
        "a list of ebmkit.testing.ShapeCase (an instance, or refused='why')"
        if kind == "initializer"
        else "small instances of that event shape, or raising "
        "ebmkit.compatibility.IncompatibleError('why')"
    )
    return (
        f"registered {kind} {name!r} (plugin {plugin!r}) {what} for shape {shape}; every "
        f"registered {kind} offers a classmethod `{signature}` returning {returns}, so the "
        f"composability matrix covers it (docs/plugins.md, 'Shape-aware test cases')"
    )


def _initializer_cases(
    name: str, plugin: str, factory: object, shape: tuple[int, ...]
) -> list[RegisteredShapeCase]:
    def entry(**fields: Any) -> RegisteredShapeCase:
        return RegisteredShapeCase(
            kind="initializer", component=name, plugin=plugin, shape=shape, **fields
        )

    def missing(what: str) -> list[RegisteredShapeCase]:
        return [entry(name="no-cases", problem=_problem("initializer", name, plugin, shape, what))]

    offer = getattr(factory, SHAPE_CASES_METHOD, None)
    if offer is None:
        return missing("offers no testing cases")
    try:
        cases = list(offer(shape))
    except Exception as error:  # reported in the test that reads the entry, not at collection
        return missing(f"raised {error!r} from {SHAPE_CASES_METHOD}({shape})")
    if not cases:
        return missing(f"returned no cases (and no refused reason) from {SHAPE_CASES_METHOD}")
    found = []
    for case in cases:
        if not isinstance(case, ShapeCase):
            return missing(f"returned a {type(case).__name__}, not a ShapeCase")
        if case.refused is not None:
            found.append(entry(name=case.name, refused=case.refused))
            continue
        instance = case.component
        if not isinstance(instance, Initializer) or isinstance(instance, type):
            return missing(f"returned a case {case.name!r} that is not an initializer instance")
        if isinstance(factory, type) and not isinstance(instance, factory):
            return missing(
                f"returned a case {case.name!r} holding a {type(instance).__name__}, not a "
                f"{factory.__name__} (an inherited {SHAPE_CASES_METHOD}? define it on "
                f"{factory.__name__})"
            )
        found.append(entry(name=case.name, case=instance))
    return found


def registered_initializer_cases(
    shape: Sequence[int], registry: Registry | None = None
) -> list[RegisteredShapeCase]:
    """Every registered initializer's cases for `shape`, in registry order.

    Arguments:
        shape: the chains' event shape, e.g. (2,) or (3, 8, 8).
        registry: the registry to read (default: the process-wide one, plugins loaded).
    """
    registry = get_registry() if registry is None else registry
    shape = tuple(int(size) for size in shape)
    found: list[RegisteredShapeCase] = []
    for component in registry.components("initializer"):
        found.extend(
            _initializer_cases(component.name, component.plugin, component.factory, shape)
        )
    return found


def _flow_entry(
    name: str, plugin: str, factory: object, shape: tuple[int, ...]
) -> RegisteredShapeCase:
    def entry(**fields: Any) -> RegisteredShapeCase:
        return RegisteredShapeCase(
            kind="flow", component=name, plugin=plugin, shape=shape, **fields
        )

    def missing(what: str) -> RegisteredShapeCase:
        return entry(name="no-cases", problem=_problem("flow", name, plugin, shape, what))

    offer = getattr(factory, SHAPE_CASES_METHOD, None)
    if offer is None:
        return missing("offers no testing cases")
    try:
        cases = list(offer(shape))
    except IncompatibleError as refusal:
        return entry(name=name, refused=str(refusal))
    except Exception as error:  # reported in the test that reads the entry, not at collection
        return missing(f"raised {error!r} from {SHAPE_CASES_METHOD}({shape})")
    if not cases:
        return missing("returned no cases (and raised no IncompatibleError saying why)")
    flow = cases[0]
    if isinstance(flow, type) or not isinstance(flow, Flow):
        return missing(f"returned {flow!r}, not a flow instance")
    if isinstance(factory, type) and not isinstance(flow, factory):
        return missing(f"returned a {type(flow).__name__}, not a {factory.__name__}")
    if flow.event_shape is not None and tuple(flow.event_shape) != shape:
        return missing(f"returned a flow of event_shape {tuple(flow.event_shape)}")
    return entry(name=name, case=flow)


def registered_flow_shape_cases(
    shape: Sequence[int], registry: Registry | None = None
) -> list[RegisteredShapeCase]:
    """Every registered flow's first case for `shape` (one entry per flow, named after it),
    or its refusal, or its problem; in registry order.

    Arguments:
        shape: the event shape, e.g. (2,) or (3, 8, 8).
        registry: the registry to read (default: the process-wide one, plugins loaded).
    """
    registry = get_registry() if registry is None else registry
    shape = tuple(int(size) for size in shape)
    return [
        _flow_entry(component.name, component.plugin, component.factory, shape)
        for component in registry.components("flow")
    ]
