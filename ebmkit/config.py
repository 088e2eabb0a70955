r"""gin config parsing with one clear message per mistake (file, line, the valid choices)."""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import gin
from ebmkit.errors import ConfigError
from ebmkit.registry import Registry, get_registry

__all__ = ["parse_config", "set_rounds"]

_UNKNOWN_CONFIGURABLE = re.compile(r"No configurable matching (?:reference )?'@?([\w.]+)")
_UNKNOWN_PARAMETER = re.compile(r"Configurable '([\w.]+)' doesn't have a parameter named")


def parse_config(
    config: Path, bindings: Sequence[str] = (), registry: Registry | None = None
) -> None:
    """Clear gin, then parse `config` and `bindings` (skip_unknown=False) into it.

    `include` lines resolve against the config's own folder, so gin/x.gin can include
    `base/toy.gin`. Raises ConfigError naming the file, the line and what would be valid.
    """
    import ebmkit.runs.experiment  # noqa: F401 - registers `experiment`, which every config binds

    registry = registry or get_registry()
    if not config.is_file():
        shipped = sorted(str(p) for p in Path("gin").glob("*.gin")) if Path("gin").is_dir() else []
        hint = f"; configs here: {', '.join(shipped)}" if shipped else ""
        raise ConfigError(f"config file {config} does not exist{hint}")
    gin.clear_config()
    for folder in (config.parent, config.parent.parent):
        gin.add_config_file_search_path(str(folder))
    logging.disable(logging.ERROR)  # gin logs "Path not found" for every search-path miss
    try:
        gin.parse_config_files_and_bindings(
            [str(config)], list(bindings), skip_unknown=False, finalize_config=False
        )
    except (ValueError, SyntaxError, KeyError, TypeError, OSError) as error:
        gin.clear_config()
        raise ConfigError(_explain(str(error), config, registry)) from error
    finally:
        logging.disable(logging.NOTSET)


def _explain(message: str, config: Path, registry: Registry) -> str:
    """gin's message, plus the choices it did not list."""
    if match := _UNKNOWN_CONFIGURABLE.search(message):
        name = match.group(1)
        kind = registry.kind_of_plural(name.rpartition(".")[0])
        if kind is not None:
            known = ", ".join(f"{c.gin_name} ({c.plugin})" for c in registry.components(kind))
            message += f"\nregistered {kind}s: {known}"
        else:
            plurals = sorted(map(registry.plural, registry.kinds()))
            message += f"\ncomponents are named <kinds>.<Name>, kinds one of {plurals}"
        for plugin in registry.broken_plugins():
            message += f"\nplugin {plugin.name!r} failed to import: {plugin.error}"
    elif match := _UNKNOWN_PARAMETER.search(message):
        plural, _, name = match.group(1).rpartition(".")
        try:
            factory = registry.get(registry.kind_of_plural(plural) or plural, name).factory
            parameters = ", ".join(inspect.signature(factory).parameters)
            message += f"\nits parameters are: {parameters}"
        except (ValueError, KeyError):
            pass
    return f"in config {config}: {message}"


def set_rounds(rounds: int) -> None:
    """Bind the trainer's `n_rounds` (the CLI's --rounds), so the operative config shows it."""
    if rounds < 0:
        raise ConfigError(f"--rounds must be >= 0, got {rounds}")
    try:
        reference = gin.query_parameter("experiment.trainer")
    except ValueError as error:
        raise ConfigError(
            "the config binds no `experiment.trainer`; add e.g. "
            "`experiment.trainer = @trainers.Contrastive()`"
        ) from error
    gin.bind_parameter(f"{reference.selector}.n_rounds", rounds)
