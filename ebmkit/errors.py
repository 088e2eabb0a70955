r"""ebmkit's exceptions: each names what was wrong, the value seen and what would fix it."""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DatasetNotFoundError",
    "DivergenceError",
    "EbmkitError",
    "IncompatibleError",
    "OutputPathError",
    "PluginLoadError",
    "RunInterrupted",
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


class IncompatibleError(ConfigError):
    """Components that cannot run together (or a shape a component cannot serve): why, and
    what would fit. A `ConfigError`, so the CLI prints it as one ``ebmkit: error:`` line."""


class CheckpointError(EbmkitError):
    """A checkpoint that is missing, unreadable or does not match the run."""


class RunInterrupted(EbmkitError):
    """A run stopped on SIGINT / SIGTERM after saving its round; `exit_status` is 130 / 143."""

    def __init__(self, message: str, exit_status: int) -> None:
        super().__init__(message)
        self.exit_status = exit_status


class DivergenceError(EbmkitError):
    """Non-finite energies, gradients or losses, or a blow-up, in a round of training.

    The message reads "<cause>; training stopped<checkpoint note>. <advice>": the guard
    knows the cause and the advice, the run adds what it knows about checkpoints.

    Arguments:
        cause: what went wrong, naming the round, the quantity and the component.
        round_index: the round it appeared in.
        advice: what would fix it.
    """

    def __init__(self, cause: str, round_index: int, advice: str = "") -> None:
        self.cause, self.round_index, self.advice = cause, round_index, advice
        self.checkpoint_note = ""
        super().__init__(cause)

    def __str__(self) -> str:
        message = f"{self.cause}; training stopped{self.checkpoint_note}"
        return f"{message}. {self.advice}" if self.advice else message


class OutputPathError(EbmkitError):
    """A run, sample or statistics path that cannot be created or written: a file where the
    folder should be, no permission, a read-only filesystem, a full disk (path, cause, fix)."""


class DatasetNotFoundError(EbmkitError, FileNotFoundError):
    """A dataset folder that is missing or incomplete; says which files to put where."""
