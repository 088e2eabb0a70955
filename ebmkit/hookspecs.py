r"""The plugin API: every hook a plugin may implement, documented like an API.

The registry calls the hooks in this order, each for every plugin (the built-in one first)
before the next: `ebmkit_add_kinds`, `ebmkit_register`, `ebmkit_add_commands`,
`ebmkit_add_eval_tasks`. A plugin whose hook raises is reported broken: everything it added
is dropped and its later hooks are skipped. None is historic or firstresult: each registry
build calls every implementation itself, once, to know which plugin added what.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from ebmkit.commands import CommandTable
    from ebmkit.registry import Registry

__all__ = ["PROJECT_NAME", "hookimpl", "hookspec"]

PROJECT_NAME = "ebmkit"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def ebmkit_add_kinds(registry: Registry) -> None:
    """Add component kinds (e.g. ``flow``, ``generator``) beyond the built-in six.

    When: once per plugin when the registry is built, for every plugin before any
    `ebmkit_register`, so a kind exists before any plugin adds components of it, whatever
    the order the plugins load in. Adding a kind later raises ValueError.

    Arguments:
        registry: call ``registry.add_kind(kind, plural=..., doc=...)``: ``plural`` is the gin
            module of the kind's components (default ``kind + "s"``), ``doc`` one line for
            ``ebmkit plugins``. A kind (or plural) another plugin already added is an error
            that marks this plugin broken; a broken plugin's kinds are dropped with every
            component of them.

    Returns: nothing.

    Example:
        >>> from ebmkit import hookimpl
        >>> @hookimpl
        ... def ebmkit_add_kinds(registry):
        ...     registry.add_kind("flow", plural="flows", doc="normalizing flows")
    """


@hookspec
def ebmkit_register(registry: Registry) -> None:
    """Register this plugin's components.

    When: once per plugin, when the registry is built (first use, or `reset_registry`), after
    every plugin's `ebmkit_add_kinds`; the registry calls each plugin's implementation on its
    own so it knows which plugin added what.

    Arguments:
        registry: call ``registry.add(kind, name, factory)`` for each component; ``kind`` is
            one of energy, sampler, initializer, trainer, dataset, metric, or a kind some
            plugin added in `ebmkit_add_kinds` (``registry.kinds()`` lists them). Each factory
            also becomes the gin configurable ``<plural>.<name>`` (``samplers.MyLangevin``).

    Returns: nothing.

    Example:
        >>> from ebmkit import hookimpl
        >>> @hookimpl
        ... def ebmkit_register(registry):
        ...     registry.add("sampler", "MyLangevin", MyLangevin)  # doctest: +SKIP
    """


@hookspec
def ebmkit_add_commands(commands: CommandTable) -> None:
    """Add top-level subcommands: ``ebmkit <name> ...``.

    When: once per plugin when the registry is built, after every `ebmkit_register`; the CLI
    builds its parser from the registry, so ``ebmkit --help`` lists the added commands.

    Arguments:
        commands: call ``commands.add(name, help=..., configure_parser=..., run=...)``.
            ``configure_parser(parser)`` adds the command's flags to its
            ``argparse.ArgumentParser`` (it is also run once on a scratch parser when added,
            so a mistake in it breaks only this plugin); ``run(args)`` does the work with the
            parsed ``argparse.Namespace`` and returns the exit status (None means 0). An
            ``EbmkitError`` it raises is printed as one ``ebmkit: error:`` line (exit 1).
            A name ebmkit or another plugin already uses is an error naming both; flags must
            not be stored as ``command``, ``task`` or ``plugin_options``.

    Returns: nothing.

    Example:
        >>> from ebmkit import hookimpl
        >>> @hookimpl
        ... def ebmkit_add_commands(commands):
        ...     commands.add(
        ...         "hello",
        ...         help="greet someone",
        ...         configure_parser=lambda parser: parser.add_argument("--name"),
        ...         run=lambda args: print(f"hello {args.name}"),
        ...     )
    """


@hookspec
def ebmkit_add_eval_tasks(tasks: CommandTable) -> None:
    """Add evaluation tasks: ``ebmkit eval <name> ...`` (the built-in plugin adds ``fid``).

    When: once per plugin when the registry is built, after `ebmkit_add_commands`;
    ``ebmkit eval --help`` lists every task, ``ebmkit eval <name> --help`` its flags.

    Arguments:
        tasks: call ``tasks.add(name, help=..., configure_parser=..., run=...)``, exactly as
            ``commands.add`` in `ebmkit_add_commands`; ``run(args)`` typically prints its
            result as JSON on stdout.

    Returns: nothing.

    Example:
        >>> import json
        >>> from ebmkit import hookimpl
        >>> @hookimpl
        ... def ebmkit_add_eval_tasks(tasks):
        ...     tasks.add(
        ...         "count-files",
        ...         help="count the files in a folder",
        ...         configure_parser=lambda parser: parser.add_argument("--folder"),
        ...         run=lambda args: print(json.dumps({"folder": args.folder})),
        ...     )
    """
