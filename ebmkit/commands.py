r"""Commands and eval tasks that plugins add to the `ebmkit` command line, by name."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Iterable, Iterator

import attrs

__all__ = ["BUILTIN_COMMANDS", "CLI_DESTINATIONS", "Command", "CommandTable"]

# The subcommands cli.py defines itself; a plugin command may not take their names.
BUILTIN_COMMANDS = ("run", "sample", "eval", "plugins", "config")
# Namespace attributes the CLI reads after parsing; a plugin's flags must not overwrite them.
CLI_DESTINATIONS = ("command", "task", "plugin_options")
_NAME = re.compile(r"[a-z][a-z0-9_-]*")

ConfigureParser = Callable[[argparse.ArgumentParser], None]
RunCommand = Callable[[argparse.Namespace], int | None]


@attrs.frozen
class Command:
    """A subcommand (or an `ebmkit eval` task): its flags, what it runs and who added it.

    `run` returns the exit status (None means 0); an `EbmkitError` it raises is printed as
    one `ebmkit: error:` line, like every ebmkit command's.
    """

    name: str
    help: str
    configure_parser: ConfigureParser
    run: RunCommand
    plugin: str


class CommandTable:
    """Named commands, each attributed to the plugin whose hook added it.

    Arguments:
        what: what the entries are, for messages ("command", "eval task").
        current_plugin: the plugin whose hook is running (the registry knows).
        reserved: names the CLI itself defines, refused for plugins.

    Example:
        >>> table = CommandTable("eval task", lambda: "demo")
        >>> table.add("count", help="count", configure_parser=lambda p: None, run=print)
        >>> [(task.name, task.plugin) for task in table]
        [('count', 'demo')]
    """

    def __init__(
        self, what: str, current_plugin: Callable[[], str], reserved: Iterable[str] = ()
    ) -> None:
        self.what = what
        self._current_plugin = current_plugin
        self._reserved = tuple(reserved)
        self._commands: dict[str, Command] = {}

    def add(
        self, name: str, *, help: str, configure_parser: ConfigureParser, run: RunCommand
    ) -> None:
        """Add `name`: `configure_parser(parser)` adds its flags, `run(args)` does the work.

        Raises ValueError for a malformed or taken name, a `configure_parser` that fails on a
        fresh parser, or a flag whose destination the CLI itself reads.
        """
        plugin = self._current_plugin()
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(
                f"{self.what} name {name!r} of plugin {plugin!r} is not a lower-case word "
                "(letters, digits, '-' or '_', starting with a letter); rename it"
            )
        if name in self._reserved:
            raise ValueError(
                f"{self.what} {name!r} of plugin {plugin!r} takes the name of ebmkit's own "
                f"{self.what} (ebmkit's are {', '.join(self._reserved)}); rename it"
            )
        existing = self._commands.get(name)
        if existing is not None:
            raise ValueError(
                f"{self.what} {name!r} is registered twice: by plugin {existing.plugin!r} and by "
                f"{plugin!r}; rename one, or block one with -p no:NAME"
            )
        if not callable(configure_parser) or not callable(run):
            raise ValueError(
                f"{self.what} {name!r} of plugin {plugin!r} needs callables configure_parser "
                f"and run, got {configure_parser!r} and {run!r}"
            )
        _check_parser(self.what, name, plugin, configure_parser)
        self._commands[name] = Command(name, help, configure_parser, run, plugin)

    def get(self, name: str) -> Command:
        """The entry `name`; a KeyError names the registered ones."""
        try:
            return self._commands[name]
        except KeyError:
            raise KeyError(f"unknown {self.what} {name!r}; registered: {self.names()}") from None

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._commands)

    def drop_plugin(self, plugin: str) -> None:
        """Forget every entry `plugin` added (its hook failed)."""
        for name in [n for n, c in self._commands.items() if c.plugin == plugin]:
            del self._commands[name]

    def __contains__(self, name: object) -> bool:
        return name in self._commands

    def __iter__(self) -> Iterator[Command]:
        return iter(sorted(self._commands.values(), key=lambda command: command.name))

    def __len__(self) -> int:
        return len(self._commands)


def _check_parser(what: str, name: str, plugin: str, configure_parser: ConfigureParser) -> None:
    """Run `configure_parser` on a scratch parser now, so its mistakes break only its plugin."""
    scratch = argparse.ArgumentParser(prog=f"ebmkit {name}")
    try:
        configure_parser(scratch)
    except Exception as error:  # noqa: BLE001 - re-raised with the plugin named
        raise ValueError(
            f"{what} {name!r} of plugin {plugin!r}: configure_parser failed: "
            f"{type(error).__name__}: {error}"
        ) from error
    taken = sorted({action.dest for action in scratch._actions} & set(CLI_DESTINATIONS))
    if taken:
        raise ValueError(
            f"{what} {name!r} of plugin {plugin!r} defines flags stored as {taken}, which the "
            f"ebmkit command reads itself; pass dest= another name"
        )
