r"""The `ebmkit` command: run | plugins | config."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import gin
from ebmkit.config import parse_config
from ebmkit.errors import EbmkitError
from ebmkit.registry import KINDS, Registry, reset_registry

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
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
    run.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")

    commands.add_parser("plugins", help="list plugins and the components each registers")

    config = commands.add_parser("config", help="print the resolved config, or its error")
    config.add_argument("config", type=Path)
    config.add_argument("--bind", action="append", default=[], metavar="'a.b = v'")
    return parser


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
    for kind in KINDS:
        components = registry.components(kind)
        if not components:
            continue
        print(f"{kind}s:")
        for component in components:
            print(f"  {component.name:<22} [{component.plugin}] {component.summary}")


def _print_config(config: Path, bindings: Sequence[str]) -> None:
    """The config's bindings as gin resolved them (includes and --bind applied)."""
    parse_config(config, bindings)
    print(gin.config_str())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `ebmkit` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        registry = reset_registry(blocked=_blocked(args.plugin_options))
        if args.command == "plugins":
            _print_plugins(registry)
        elif args.command == "config":
            _print_config(args.config, args.bind)
        elif args.command == "run":
            from ebmkit.run import run_experiment

            summary = run_experiment(
                args.config, args.out, args.rounds, args.bind, resume=args.resume
            )
            print(json.dumps(summary, indent=2))
    except EbmkitError as error:
        print(f"ebmkit: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
