r"""The plugin API: every hook a plugin may implement, documented like an API."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from ebmkit.registry import Registry

__all__ = ["PROJECT_NAME", "hookimpl", "hookspec"]

PROJECT_NAME = "ebmkit"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def ebmkit_register(registry: Registry) -> None:
    """Register this plugin's components.

    When: once per plugin, when the registry is built (first use, or `reset_registry`); the
    registry calls each plugin's implementation on its own so it knows which plugin added what.

    Arguments:
        registry: call ``registry.add(kind, name, factory)`` for each component; ``kind`` is
            one of energy, sampler, initializer, trainer, dataset, metric. Each factory also
            becomes the gin configurable ``<kind>s.<name>``.

    Returns: nothing.

    Example:
        >>> from ebmkit import hookimpl
        >>> @hookimpl
        ... def ebmkit_register(registry):
        ...     registry.add("sampler", "MyLangevin", MyLangevin)  # doctest: +SKIP
    """
