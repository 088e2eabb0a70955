r"""The `ebmkit` command: run | sample | eval | plugins | config."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import gin
from ebmkit.config import parse_config
from ebmkit.errors import EbmkitError
from ebmkit.registry import KINDS, PLURALS, Registry, reset_registry

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

    _add_sample_parser(commands)
    _add_eval_parser(commands)

    commands.add_parser("plugins", help="list plugins and the components each registers")

    config = commands.add_parser("config", help="print the resolved config, or its error")
    config.add_argument("config", type=Path)
    config.add_argument("--bind", action="append", default=[], metavar="'a.b = v'")
    return parser


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


def _add_eval_parser(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser("eval", help="evaluate samples (FID)")
    metrics = evaluate.add_subparsers(dest="metric", required=True)
    fid = metrics.add_parser("fid", help="Fréchet Inception Distance between two image sets")
    fid.add_argument(
        "--samples", required=True, help="a folder of images or an .npz of (mu, sigma)"
    )
    fid.add_argument(
        "--reference", required=True, help="a folder of images or an .npz of (mu, sigma)"
    )
    fid.add_argument("--dims", type=int, default=2048, help="64 | 192 | 768 | 2048 (default)")
    fid.add_argument(
        "--fid-weights",
        help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth (default: "
        "$EBMKIT_FID_WEIGHTS, else torch's hub cache)",
    )
    fid.add_argument(
        "--random-weights", action="store_true", help="untrained network (tests only)"
    )
    fid.add_argument("--batch-size", type=int, default=50)
    fid.add_argument("--device", default="cpu")
    fid.add_argument("--save-stats", type=Path, help="also write the samples' (mu, sigma) .npz")


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


def _eval_fid(args: argparse.Namespace) -> None:
    from ebmkit.metrics.fid import fid_between_paths

    summary = fid_between_paths(
        args.samples,
        args.reference,
        dims=args.dims,
        weights=args.fid_weights,
        random_weights=args.random_weights,
        batch_size=args.batch_size,
        device=args.device,
        save_samples_stats=args.save_stats,
    )
    print(json.dumps(summary, indent=2))


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
        print(f"{PLURALS[kind]}:")
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
            from ebmkit.runs.train import run_experiment

            summary = run_experiment(
                args.config, args.out, args.rounds, args.bind, resume=args.resume
            )
            print(json.dumps(summary, indent=2))
        elif args.command == "sample":
            _sample(args)
        elif args.command == "eval" and args.metric == "fid":
            _eval_fid(args)
    except EbmkitError as error:
        print(f"ebmkit: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
