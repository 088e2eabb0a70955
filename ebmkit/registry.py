r"""The component registry: pluggy finds plugins; each adds kinds, components and commands."""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import os
import re
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import pluggy

import gin
from ebmkit import hookspecs
from ebmkit.commands import BUILTIN_COMMANDS, CommandTable
from ebmkit.errors import UnknownComponentError

__all__ = [
    "Component",
    "Kind",
    "PluginInfo",
    "Registry",
    "build_registry",
    "components",
    "create",
    "get_registry",
    "reset_registry",
]

ENTRY_POINT_GROUP = "ebmkit"
AUTOLOAD_ENV = "EBMKIT_DISABLE_PLUGIN_AUTOLOAD"
BUILTIN_PLUGIN = "ebmkit"
# The hooks the registry calls, in this order, each for every plugin before the next: every
# kind exists before any component is added, whatever the order the plugins load in.
COLLECT_HOOKS = (
    "ebmkit_add_kinds",
    "ebmkit_register",
    "ebmkit_add_commands",
    "ebmkit_add_eval_tasks",
)
_KIND_NAME = re.compile(r"[a-z][a-z0-9_]*")
# Headings of `ebmkit plugins` that are not kinds' plurals; a kind may not take them.
_LISTING_HEADINGS = ("plugins", "kinds", "commands")

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
class Kind:
    """A component kind: its name, its gin plural, a one-line doc and the plugin that added it."""

    name: str
    plural: str
    doc: str
    plugin: str


@attrs.frozen
class Component:
    """A registered factory: its kind, name, the plugin that registered it and its one-line doc."""

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str
    plural: str  # the kind's plural: the gin module of the factory

    @property
    def gin_name(self) -> str:
        return f"{self.plural}.{self.name}"

    @property
    def summary(self) -> str:
        doc = (self.factory.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


class Registry:
    """Kinds, components by kind and name, commands and eval tasks, filled by the plugins' hooks.

    The hooks run in the order of `COLLECT_HOOKS` (see hookspecs.py); ``commands`` and
    ``eval_tasks`` are the tables `ebmkit_add_commands` and `ebmkit_add_eval_tasks` fill.
    """

    def __init__(self) -> None:
        self._kinds: dict[str, Kind] = {}
        self._kinds_open = True  # closed once every plugin's ebmkit_add_kinds has run
        self._components: dict[str, dict[str, Component]] = {}
        self.plugins: dict[str, PluginInfo] = {}
        self._current_plugin = BUILTIN_PLUGIN
        self.commands = CommandTable("command", lambda: self._current_plugin, BUILTIN_COMMANDS)
        self.eval_tasks = CommandTable("eval task", lambda: self._current_plugin)

    def add_kind(self, kind: str, *, plural: str | None = None, doc: str = "") -> None:
        """Add a component kind; its components become the gin configurables `<plural>.<Name>`.

        Call it from the `ebmkit_add_kinds` hook, which runs for every plugin before any
        `ebmkit_register`; later it raises ValueError, as does a name or plural already taken.

        Arguments:
            kind: a lower-case identifier, e.g. "flow".
            plural: the gin module of the kind's components; default `kind` + "s".
            doc: one line for `ebmkit plugins`.

        Example:
            >>> registry = Registry()
            >>> registry.add_kind("flow", plural="flows", doc="normalizing flows")
            >>> registry.kinds(), registry.plural("flow"), registry.kind_of_plural("flows")
            (('flow',), 'flows', 'flow')
        """
        plural = f"{kind}s" if plural is None else plural
        new = Kind(kind, plural, doc, self._current_plugin)
        if self._kinds.get(kind) == new:
            return
        if not self._kinds_open:
            raise ValueError(
                f"kind {kind!r} of plugin {new.plugin!r} is added too late: add kinds in the "
                "ebmkit_add_kinds hook, which runs for every plugin before any ebmkit_register"
            )
        for word, what in ((kind, "kind"), (plural, "plural")):
            if not isinstance(word, str) or not _KIND_NAME.fullmatch(word):
                raise ValueError(
                    f"{what} {word!r} of plugin {new.plugin!r} is not a lower-case identifier "
                    "(letters, digits and '_', starting with a letter); rename it"
                )
        if plural in _LISTING_HEADINGS:
            raise ValueError(
                f"plural {plural!r} of kind {kind!r} (plugin {new.plugin!r}) is a heading of "
                f"`ebmkit plugins` ({', '.join(_LISTING_HEADINGS)}); pass another plural="
            )
        if kind in self._kinds:
            raise ValueError(
                f"kind {kind!r} is registered twice: by plugin {self._kinds[kind].plugin!r} and "
                f"by {new.plugin!r}; rename one, or block one with -p no:NAME"
            )
        for other in self._kinds.values():
            if {kind, plural} & {other.name, other.plural}:
                raise ValueError(
                    f"kind {kind!r} (plural {plural!r}) of plugin {new.plugin!r} clashes with "
                    f"kind {other.name!r} (plural {other.plural!r}) of plugin {other.plugin!r}; "
                    "choose another name or plural="
                )
        self._kinds[kind] = new
        self._components[kind] = {}

    def kinds(self) -> tuple[str, ...]:
        """Every kind, in the order the plugins added them (the built-in six first)."""
        return tuple(self._kinds)

    def kind(self, kind: str) -> Kind:
        """The record of `kind`; an unknown kind raises ValueError naming the kinds."""
        self._check_kind(kind)
        return self._kinds[kind]

    def plural(self, kind: str) -> str:
        """The gin plural of `kind`: ``registry.plural("energy") == "energies"``."""
        return self.kind(kind).plural

    def kind_of_plural(self, plural: str) -> str | None:
        """The kind whose gin plural is `plural`, or None."""
        return next((k.name for k in self._kinds.values() if k.plural == plural), None)

    def add(self, kind: str, name: str, factory: Callable[..., Any]) -> None:
        """Register `factory` as component `name` of `kind`, and as gin configurable."""
        self._check_kind(kind)
        existing = self._components[kind].get(name)
        if existing is not None and existing.factory is not factory:
            raise ValueError(
                f"{kind} {name!r} is registered twice: by plugin {existing.plugin!r} and by "
                f"{self._current_plugin!r}; rename one, or block one with -p no:NAME"
            )
        plural = self._kinds[kind].plural
        component = Component(kind, name, factory, self._current_plugin, plural)
        _register_with_gin(component)
        self._components[kind][name] = component

    def get(self, kind: str, name: str) -> Component:
        """The component `name` of `kind`; unknown names list what is registered."""
        self._check_kind(kind)
        try:
            return self._components[kind][name]
        except KeyError:
            raise UnknownComponentError(self._unknown_message(kind, name)) from None

    def create(self, kind: str, name: str, **kwargs: Any) -> Any:
        """Build component `name` of `kind` with `kwargs`."""
        return self.get(kind, name).factory(**kwargs)

    def components(self, kind: str | None = None) -> list[Component]:
        """Registered components, of one kind or all, sorted by kind then name."""
        if kind is not None:
            self._check_kind(kind)
        kinds = self.kinds() if kind is None else (kind,)
        return [c for k in kinds for _, c in sorted(self._components[k].items())]

    def broken_plugins(self) -> list[PluginInfo]:
        return [p for p in self.plugins.values() if p.error is not None]

    def _check_kind(self, kind: str) -> None:
        if kind not in self._kinds:
            raise ValueError(self._unknown_kind_message(kind))

    def _unknown_kind_message(self, kind: str) -> str:
        message = f"unknown component kind {kind!r}; the kinds are {', '.join(self._kinds)}"
        for plugin in self.broken_plugins():
            message += f"\nplugin {plugin.name!r} is broken and its kinds skipped: {plugin.error}"
        return message

    def _unknown_message(self, kind: str, name: str) -> str:
        if kind not in self._kinds:
            return self._unknown_kind_message(kind)
        registered = ", ".join(f"{c.name} ({c.plugin})" for c in self.components(kind)) or "none"
        message = f"unknown {kind} {name!r}; registered {kind}s: {registered}"
        for plugin in self.broken_plugins():
            message += f"\nplugin {plugin.name!r} failed to import and is skipped: {plugin.error}"
        return message

    def _collect(self, manager: pluggy.PluginManager) -> None:
        """Call each hook of COLLECT_HOOKS for every plugin, attributing what each adds.

        Within a hook the built-in plugin comes first, so a plugin reusing a built-in name is
        the one reported broken. A plugin whose hook raises loses everything it added and is
        skipped by the later hooks.
        """
        arguments = {"registry": self, "commands": self.commands, "tasks": self.eval_tasks}
        for hook in COLLECT_HOOKS:
            for impl in getattr(manager.hook, hook).get_hookimpls():
                info = self.plugins.get(impl.plugin_name)
                if info is not None and info.error is not None:
                    continue
                self._current_plugin = impl.plugin_name
                try:
                    impl.function(**{arg: arguments[arg] for arg in impl.argnames})
                except Exception as error:  # noqa: BLE001 - a broken plugin is reported
                    if impl.plugin_name == BUILTIN_PLUGIN:
                        raise
                    cause = f"{hook} failed: {type(error).__name__}: {error}"
                    self._drop_plugin(impl.plugin_name, cause)
                finally:
                    self._current_plugin = BUILTIN_PLUGIN
            if hook == "ebmkit_add_kinds":
                self._kinds_open = False

    def _drop_plugin(self, plugin: str, error: str) -> None:
        """Forget the kinds (with every component of them), components, commands and eval
        tasks a plugin added before its hook failed, and mark it broken with `error`."""
        for kind in [k for k, record in self._kinds.items() if record.plugin == plugin]:
            del self._kinds[kind], self._components[kind]
        for by_name in self._components.values():
            for name in [n for n, c in by_name.items() if c.plugin == plugin]:
                del by_name[name]
        self.commands.drop_plugin(plugin)
        self.eval_tasks.drop_plugin(plugin)
        info = self.plugins.get(plugin, PluginInfo(plugin, "?", "?"))
        self.plugins[plugin] = attrs.evolve(info, error=error)

    def owns(self, component: Component) -> bool:
        """Whether `component` (same kind, name and factory) is registered here."""
        known = self._components.get(component.kind, {}).get(component.name)
        return known is not None and known.factory is component.factory


def _register_with_gin(component: Component) -> None:
    """Make the factory the gin configurable `<plural>.<Name>` (once per process)."""
    known = _gin_registered.get(component.gin_name)
    if known is component.factory:
        return
    if known is not None:
        raise ValueError(
            f"gin configurable {component.gin_name!r} already names another factory "
            f"({known.__module__}.{known.__qualname__})"
        )
    gin.external_configurable(_guarded(component), name=component.name, module=component.plural)
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
