r"""The `ebmkit` command: run | sample | eval | plugins | config."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

import gin
from ebmkit.commands import Command
from ebmkit.config import parse_config
from ebmkit.errors import EbmkitError, RunInterrupted
from ebmkit.registry import Registry, reset_registry

__all__ = ["DEBUG_ENV", "main", "unexpected_error_line"]

DEBUG_ENV = "EBMKIT_DEBUG"
"""Set to 1 for the traceback of an unexpected error (as `ebmkit --debug ...`)."""


def unexpected_error_line(error: BaseException) -> str:
    """One line for an error no ebmkit check anticipated (a component's ValueError while a run
    is running, ...): the innermost registered component in its traceback, the error type and
    message, and how to see the traceback."""
    from ebmkit.registry import get_registry

    registry = get_registry()
    names = {
        component.factory: component.gin_name
        for kind in registry.kinds()
        for component in registry.components(kind)
    }
    where = None
    for frame, _ in reversed(list(traceback.walk_tb(error.__traceback__))):
        owner = frame.f_locals.get("self")
        if owner is not None and type(owner) in names:
            where = names[type(owner)]
            break
    message = " ".join(str(error).split()) or "(no message)"
    prefix = "" if where is None or message.startswith(where) else f"in {where}: "
    return (
        f"{prefix}{message} ({type(error).__name__}; rerun with --debug, or {DEBUG_ENV}=1, for "
        f"the traceback)"
    )


def _parser(registry: Registry) -> argparse.ArgumentParser:
    """The whole command line: ebmkit's own commands plus those and the eval tasks of plugins."""
    parser = argparse.ArgumentParser(
        prog="ebmkit", description="Train and sample energy-based models from gin configs."
    )
    parser.add_argument(
        "-p",
        dest="plugin_options",
        action="append",
        default=[],
        metavar="no:NAME",
        help="block a plugin by name (repeatable), e.g. -p no:stanley",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"show the traceback of an unexpected error (also {DEBUG_ENV}=1)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="train from a gin config")
    run.add_argument(
        "config", type=Path, help="the gin file, e.g. gin/langevin_eight_gaussians.gin"
    )
    run.add_argument("--out", type=Path, help="run directory (default runs/<config name>)")
    run.add_argument("--rounds", type=int, help="override the trainer's number of rounds")
    run.add_argument(
        "--bind", action="append", default=[], metavar="'a.b = v'", help="extra gin binding"
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest checkpoint (the run's own --bind values are re-applied)",
    )
    run.add_argument(
        "--accept-config-change",
        action="store_true",
        help="with --resume: continue although the config differs from the run's",
    )

    _add_sample_parser(commands)
    _add_eval_parser(commands, registry)

    commands.add_parser(
        "plugins", help="list plugins and the kinds, components, commands and tasks each adds"
    )

    config = commands.add_parser("config", help="print the resolved config, or its error")
    config.add_argument("config", type=Path)
    config.add_argument("--bind", action="append", default=[], metavar="'a.b = v'")
    for command in registry.commands:
        _add_plugin_parser(commands, command)
    return parser


def _add_plugin_parser(commands: argparse._SubParsersAction, command: Command) -> None:
    """A plugin's command or eval task: its help, then the flags its plugin declares."""
    by = "" if command.plugin == "ebmkit" else f" [plugin {command.plugin}]"
    parser = commands.add_parser(
        command.name, help=command.help + by, description=command.help + by
    )
    command.configure_parser(parser)


def _add_sample_parser(commands: argparse._SubParsersAction) -> None:
    sample = commands.add_parser(
        "sample", help="draw samples from a trained run (PNG files, or .npy for points)"
    )
    sample.add_argument("run", type=Path, help="a run directory or a checkpoint file")
    sample.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    sample.add_argument("--out", type=Path, required=True, help="folder to write them into")
    sample.add_argument("--steps", type=int, help="sampler steps (default: the run's)")
    sample.add_argument("--batch-size", type=int, help="chains at once (default: the run's)")
    sample.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sample.add_argument("--device", help="where to sample (default: the run's device)")


def _add_eval_parser(commands: argparse._SubParsersAction, registry: Registry) -> None:
    names = ", ".join(registry.eval_tasks.names())
    evaluate = commands.add_parser(
        "eval",
        help=f"evaluate samples ({names})",
        description="Evaluation tasks of ebmkit and its plugins (a plugin adds one through the "
        "ebmkit_add_eval_tasks hook).",
    )
    tasks = evaluate.add_subparsers(dest="task", required=True, metavar="TASK")
    for task in registry.eval_tasks:
        _add_plugin_parser(tasks, task)


def _sample(args: argparse.Namespace) -> None:
    from ebmkit.runs.draw import sample_run

    for flag, value, least in (
        ("--n", args.n, 1),
        ("--steps", args.steps, 0),
        ("--batch-size", args.batch_size, 1),
    ):
        if value is not None and value < least:
            raise EbmkitError(f"{flag} must be >= {least}, got {value}")
    summary = sample_run(
        args.run, args.n, args.out, args.steps, args.batch_size, args.seed, args.device
    )
    print(f"wrote {summary['n']} {summary['kind']} to {summary['out']}", file=sys.stderr)
    print(json.dumps(summary, indent=2))


def _plugin_options(argv: Sequence[str]) -> list[str]:
    """The `-p` values before the subcommand, read before parsing: the parser needs the
    registry (plugins add commands and eval tasks), and the registry needs the blocked names."""
    options = []
    tokens = iter(argv)
    for token in tokens:
        if token == "-p":
            value = next(tokens, None)
            if value is None:
                break  # argparse reports the missing value
            options.append(value)
        elif token.startswith("-p"):
            options.append(token[2:].removeprefix("="))
        elif not token.startswith("-"):
            break
    return options


def _blocked(options: Sequence[str]) -> list[str]:
    blocked = []
    for option in options:
        if not option.startswith("no:") or len(option) == 3:
            raise EbmkitError(f"-p takes no:NAME to block a plugin, got -p {option!r}")
        blocked.append(option[3:])
    return blocked


def _print_plugins(registry: Registry) -> None:
    print("plugins:")
    for info in registry.plugins.values():
        status = "blocked" if info.blocked else ("BROKEN: " + info.error if info.error else "ok")
        print(f"  {info.name} ({info.distribution} {info.version}): {status}")
    print("kinds:")
    for kind in map(registry.kind, registry.kinds()):
        print(f"  {kind.name:<22} [{kind.plugin}] {kind.plural}.<Name>: {kind.doc}")
    for kind in registry.kinds():
        components = registry.components(kind)
        if not components:
            continue
        print(f"{registry.plural(kind)}:")
        for component in components:
            print(f"  {component.name:<22} [{component.plugin}] {component.summary}")
    for heading, table in (("commands", registry.commands), ("eval tasks", registry.eval_tasks)):
        if len(table):
            print(f"{heading}:")
        for command in table:
            print(f"  {command.name:<22} [{command.plugin}] {command.help}")


def _print_config(config: Path, bindings: Sequence[str]) -> None:
    """The config's bindings as gin resolved them (includes and --bind applied)."""
    parse_config(config, bindings)
    print(gin.config_str())


_GIN_CALL_NOTE = "\n  In call to configurable"


def _without_gin_call_note(message: str) -> str:
    """An ebmkit error raised inside a gin configurable, without the line gin appends to it
    ("In call to configurable 'Contrastive' (...)"): the message already names the component."""
    return message.split(_GIN_CALL_NOTE, 1)[0]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `ebmkit` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        registry = reset_registry(blocked=_blocked(_plugin_options(argv)))
    except EbmkitError as error:
        print(f"ebmkit: error: {error}", file=sys.stderr)
        return 1
    args = _parser(registry).parse_args(argv)
    status = None
    try:
        if args.command == "plugins":
            _print_plugins(registry)
        elif args.command == "config":
            _print_config(args.config, args.bind)
        elif args.command == "run":
            from ebmkit.runs.train import run_experiment

            summary = run_experiment(
                args.config,
                args.out,
                args.rounds,
                args.bind,
                resume=args.resume,
                accept_config_change=args.accept_config_change,
            )
            print(json.dumps(summary, indent=2))
        elif args.command == "sample":
            _sample(args)
        elif args.command == "eval":
            status = registry.eval_tasks.get(args.task).run(args)
        elif args.command in registry.commands:
            status = registry.commands.get(args.command).run(args)
    except RunInterrupted as interrupted:
        print(f"ebmkit: {interrupted}", file=sys.stderr)
        return interrupted.exit_status
    except EbmkitError as error:
        print(f"ebmkit: error: {_without_gin_call_note(str(error))}", file=sys.stderr)
        return 1
    except Exception as error:  # a component's own check while running: one line, no trace
        if args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        print(f"ebmkit: error: {unexpected_error_line(error)}", file=sys.stderr)
        return 1
    return 0 if status is None else status


if __name__ == "__main__":
    sys.exit(main())
