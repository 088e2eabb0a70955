r"""ebmkit's exceptions: each names what was wrong, the value seen and what would fix it."""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DatasetNotFoundError",
    "DivergenceError",
    "EbmkitError",
    "OutputPathError",
    "PluginLoadError",
    "UnknownComponentError",
]


class EbmkitError(Exception):
    """Base of every error ebmkit raises on purpose; the CLI prints its message and exits 1."""


class UnknownComponentError(EbmkitError, KeyError):
    """A component name that no plugin registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class PluginLoadError(EbmkitError, ImportError):
    """A plugin whose import failed; names the plugin, its distribution and the cause."""


class ConfigError(EbmkitError):
    """A gin config that cannot be parsed or bound (file, line and valid choices named)."""


class CheckpointError(EbmkitError):
    """A checkpoint that is missing, unreadable or does not match the run."""


class DivergenceError(EbmkitError):
    """Non-finite energies, gradients or losses (or an energy gap beyond its bound)."""

    def __init__(self, message: str, round_index: int) -> None:
        super().__init__(message)
        self.round_index = round_index


class OutputPathError(EbmkitError):
    """A run, sample or statistics path that cannot be created or written: a file where the
    folder should be, no permission, a read-only filesystem, a full disk (path, cause, fix)."""


class DatasetNotFoundError(EbmkitError, FileNotFoundError):
    """A dataset folder that is missing or incomplete; says which files to put where."""
