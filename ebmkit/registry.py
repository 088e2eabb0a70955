r"""The component registry: pluggy finds plugins; each registers components by kind and name."""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import os
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import pluggy

import gin
from ebmkit import hookspecs
from ebmkit.errors import UnknownComponentError

__all__ = [
    "KIND_OF_PLURAL",
    "KINDS",
    "PLURALS",
    "Component",
    "PluginInfo",
    "Registry",
    "build_registry",
    "components",
    "create",
    "get_registry",
    "reset_registry",
]

KINDS = ("energy", "sampler", "initializer", "trainer", "dataset", "metric")
PLURALS = {kind: "energies" if kind == "energy" else f"{kind}s" for kind in KINDS}
KIND_OF_PLURAL = {plural: kind for kind, plural in PLURALS.items()}
ENTRY_POINT_GROUP = "ebmkit"
AUTOLOAD_ENV = "EBMKIT_DISABLE_PLUGIN_AUTOLOAD"
BUILTIN_PLUGIN = "ebmkit"

# gin's registry is process-global: remember what we put there so rebuilding the registry
# (tests, `-p no:NAME`) does not try to register a name twice.
_gin_registered: dict[str, Callable[..., Any]] = {}


@attrs.frozen
class PluginInfo:
    """A discovered plugin: where it came from and, if it failed to import, why."""

    name: str
    distribution: str
    version: str
    error: str | None = None
    blocked: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and not self.blocked


@attrs.frozen
class Component:
    """A registered factory: its kind, name, the plugin that registered it and its one-line doc."""

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str

    @property
    def gin_name(self) -> str:
        return f"{PLURALS[self.kind]}.{self.name}"

    @property
    def summary(self) -> str:
        doc = (self.factory.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


class Registry:
    """Components by kind and name, filled by every plugin's `ebmkit_register` hook."""

    def __init__(self) -> None:
        self._components: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}
        self.plugins: dict[str, PluginInfo] = {}
        self._current_plugin = BUILTIN_PLUGIN

    def add(self, kind: str, name: str, factory: Callable[..., Any]) -> None:
        """Register `factory` as component `name` of `kind`, and as gin configurable."""
        if kind not in KINDS:
            raise ValueError(f"unknown component kind {kind!r}; the kinds are {', '.join(KINDS)}")
        existing = self._components[kind].get(name)
        if existing is not None and existing.factory is not factory:
            raise ValueError(
                f"{kind} {name!r} is registered twice: by plugin {existing.plugin!r} and by "
                f"{self._current_plugin!r}; rename one, or block one with -p no:NAME"
            )
        component = Component(kind, name, factory, self._current_plugin)
        _register_with_gin(component)
        self._components[kind][name] = component

    def get(self, kind: str, name: str) -> Component:
        """The component `name` of `kind`; unknown names list what is registered."""
        if kind not in KINDS:
            raise ValueError(f"unknown component kind {kind!r}; the kinds are {', '.join(KINDS)}")
        try:
            return self._components[kind][name]
        except KeyError:
            raise UnknownComponentError(self._unknown_message(kind, name)) from None

    def create(self, kind: str, name: str, **kwargs: Any) -> Any:
        """Build component `name` of `kind` with `kwargs`."""
        return self.get(kind, name).factory(**kwargs)

    def components(self, kind: str | None = None) -> list[Component]:
        """Registered components, of one kind or all, sorted by kind then name."""
        kinds = KINDS if kind is None else (kind,)
        return [c for k in kinds for _, c in sorted(self._components[k].items())]

    def broken_plugins(self) -> list[PluginInfo]:
        return [p for p in self.plugins.values() if p.error is not None]

    def _unknown_message(self, kind: str, name: str) -> str:
        registered = ", ".join(f"{c.name} ({c.plugin})" for c in self.components(kind)) or "none"
        message = f"unknown {kind} {name!r}; registered {kind}s: {registered}"
        for plugin in self.broken_plugins():
            message += f"\nplugin {plugin.name!r} failed to import and is skipped: {plugin.error}"
        return message

    def _collect(self, manager: pluggy.PluginManager) -> None:
        """Call each plugin's `ebmkit_register` with the registry, attributing what it adds."""
        # Registration order: the built-in plugin first, so a plugin reusing a built-in name
        # is the one reported broken.
        for impl in manager.hook.ebmkit_register.get_hookimpls():
            self._current_plugin = impl.plugin_name
            try:
                impl.function(**{arg: self for arg in impl.argnames})
            except Exception as error:  # noqa: BLE001 - a broken plugin is reported, not fatal
                if impl.plugin_name == BUILTIN_PLUGIN:
                    raise
                self._drop_plugin(impl.plugin_name, f"{type(error).__name__}: {error}")
            finally:
                self._current_plugin = BUILTIN_PLUGIN

    def _drop_plugin(self, plugin: str, error: str) -> None:
        """Forget what a plugin registered before its hook failed, and mark it broken."""
        for by_name in self._components.values():
            for name in [n for n, c in by_name.items() if c.plugin == plugin]:
                del by_name[name]
        info = self.plugins.get(plugin, PluginInfo(plugin, "?", "?"))
        self.plugins[plugin] = attrs.evolve(info, error=f"ebmkit_register failed: {error}")

    def owns(self, component: Component) -> bool:
        """Whether `component` (same kind, name and factory) is registered here."""
        known = self._components[component.kind].get(component.name)
        return known is not None and known.factory is component.factory


def _register_with_gin(component: Component) -> None:
    """Make the factory the gin configurable `<kind>s.<Name>` (once per process)."""
    known = _gin_registered.get(component.gin_name)
    if known is component.factory:
        return
    if known is not None:
        raise ValueError(
            f"gin configurable {component.gin_name!r} already names another factory "
            f"({known.__module__}.{known.__qualname__})"
        )
    gin.external_configurable(
        _guarded(component), name=component.name, module=PLURALS[component.kind]
    )
    _gin_registered[component.gin_name] = component.factory


def _guarded(component: Component) -> Callable[..., Any]:
    """The factory as gin calls it: refuses when the current registry lacks the component.

    gin's configurables are process-global and cannot be removed, so a plugin blocked by
    a later `reset_registry(blocked=...)` would otherwise stay usable from configs.
    """
    factory = component.factory

    @functools.wraps(factory)
    def build(*args: Any, **kwargs: Any) -> Any:
        registry = get_registry()
        if not registry.owns(component):
            message = registry._unknown_message(component.kind, component.name)
            info = registry.plugins.get(component.plugin)
            if info is not None and info.blocked:
                message += f"\nplugin {component.plugin!r} is blocked (-p no:{component.plugin})"
            raise UnknownComponentError(message)
        return factory(*args, **kwargs)

    build.__signature__ = inspect.signature(factory)  # gin reads defaults from it
    return build


def _ebmkit_version() -> str:
    try:
        return importlib.metadata.version("ebmkit")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _load_entry_points(manager: pluggy.PluginManager, blocked: set[str]) -> list[PluginInfo]:
    """Import each `ebmkit` entry point on its own so one broken plugin cannot stop the rest."""
    infos = []
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = entry_point.dist
        info = dict(
            name=entry_point.name,
            distribution=dist.name if dist else "?",
            version=dist.version if dist else "?",
        )
        if entry_point.name in blocked or manager.has_plugin(entry_point.name):
            infos.append(PluginInfo(**info, blocked=entry_point.name in blocked))
            continue
        try:
            module = entry_point.load()
            manager.register(module, name=entry_point.name)
        except Exception as error:  # noqa: BLE001 - reported, never hidden
            cause = f"{type(error).__name__}: {error}"
            infos.append(PluginInfo(**info, error=cause))
            continue
        infos.append(PluginInfo(**info))
    return infos


def build_registry(blocked: Iterable[str] = (), autoload: bool | None = None) -> Registry:
    """A fresh registry: the built-in plugin plus every entry point not `blocked`.

    Arguments:
        blocked: plugin names to skip (the CLI's ``-p no:NAME``).
        autoload: load entry points; default: unless $EBMKIT_DISABLE_PLUGIN_AUTOLOAD is set.
    """
    from ebmkit import builtin

    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    manager.register(builtin, name=BUILTIN_PLUGIN)
    registry = Registry()
    registry.plugins[BUILTIN_PLUGIN] = PluginInfo(BUILTIN_PLUGIN, "ebmkit", _ebmkit_version())
    if autoload is None:
        autoload = not os.environ.get(AUTOLOAD_ENV)
    if autoload:
        for info in _load_entry_points(manager, set(blocked)):
            registry.plugins[info.name] = info
    manager.check_pending()
    registry._collect(manager)
    return registry


_registry: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _registry
    if _registry is None:
        _registry = build_registry()
    return _registry


def reset_registry(blocked: Iterable[str] = (), autoload: bool | None = None) -> Registry:
    """Rebuild the process-wide registry (after installing a plugin, or to block some)."""
    global _registry
    _registry = build_registry(blocked, autoload)
    return _registry


def create(kind: str, name: str, **kwargs: Any) -> Any:
    """Build a registered component: ``ebmkit.create("sampler", "Langevin", step_size=0.01)``."""
    return get_registry().create(kind, name, **kwargs)


def components(kind: str | None = None) -> list[Component]:
    """Registered components of `kind` (or all kinds)."""
    return get_registry().components(kind)
