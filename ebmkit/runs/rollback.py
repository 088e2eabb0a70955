r"""Divergence rollback: reload the newest checkpoint and shrink the sampler's step, then go on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ebmkit.checkpoint.files import checkpoint_round, latest_checkpoint, load_checkpoint
from ebmkit.checkpoint.rng import set_rng_state
from ebmkit.errors import ConfigError, DivergenceError
from ebmkit.protocols import StepScalable
from ebmkit.runs.observer import RunObserver, step_size_of

__all__ = [
    "check_rollback_possible",
    "checkpoint_note",
    "fit_with_rollbacks",
    "replay_rollbacks",
]


def check_rollback_possible(sampler: Any, config: Path) -> None:
    """on_divergence = 'rollback' needs a sampler that can shrink its step: say so up front.

    Arguments:
        sampler: the experiment's sampler.
        config: the config file, named in the error.

    Raises:
        ConfigError: the sampler is not `StepScalable`, or refuses to scale its step.
    """
    problem = None
    if not isinstance(sampler, StepScalable):
        problem = f"{type(sampler).__name__} has no scale_step_size"
    else:
        try:
            sampler.scale_step_size(1.0)  # changes nothing; raises where scaling is impossible
        except ValueError as error:
            problem = str(error)
    if problem is not None:
        raise ConfigError(
            f"in config {config}: experiment.on_divergence = 'rollback' shrinks the sampler's "
            f"step, but {problem}; use a Langevin-type sampler or on_divergence = 'stop'"
        )


def replay_rollbacks(trainer: Any, record: dict[str, Any] | None) -> tuple[int, float] | None:
    """Shrink a resumed run's fresh sampler as its rollbacks did (same multiplications).

    Arguments:
        trainer: the freshly built trainer, its state already loaded.
        record: the checkpoint's `divergence` entry ({"rollbacks": n, "factor": f}), if any.

    Returns:
        The checkpoint's (rollbacks, factor), or None when it records none.
    """
    if not record or not record["rollbacks"]:
        return None
    if not isinstance(trainer.sampler, StepScalable):
        raise ValueError(
            f"the run rolled back {record['rollbacks']} time(s) and shrank its sampler's step, "
            f"but {type(trainer.sampler).__name__} cannot scale its step"
        )
    for _ in range(record["rollbacks"]):
        trainer.sampler.scale_step_size(record["factor"])
    return record["rollbacks"], record["factor"]


def fit_with_rollbacks(trainer: Any, observer: RunObserver, checkpoints: Path) -> None:
    """`trainer.fit`; under on_divergence = 'rollback', reload and shrink the step on a NaN.

    Arguments:
        trainer: the trainer to fit.
        observer: the run's observer; it holds the experiment and counts the rollbacks.
        checkpoints: the folder the newest checkpoint is reloaded from.

    Raises:
        DivergenceError: under on_divergence = 'stop', or once `experiment.max_rollbacks`
            rollbacks are spent, or when no checkpoint is left to reload.
    """
    experiment = observer.experiment
    while True:
        try:
            trainer.fit(observer)
            return
        except DivergenceError as error:
            newest = latest_checkpoint(checkpoints)
            error.checkpoint_note = checkpoint_note(newest)
            if experiment.on_divergence != "rollback" or newest is None:
                raise
            if observer.rollbacks >= experiment.max_rollbacks:
                spent = DivergenceError(
                    f"{error.cause} [after {observer.rollbacks} rollback(s), step size "
                    f"{step_size_of(trainer.sampler):.4g}]",
                    error.round_index,
                    "Raise experiment.max_rollbacks or lower the learning rate",
                )
                spent.checkpoint_note = error.checkpoint_note
                raise spent from error
            state = load_checkpoint(newest)
            trainer.load_state_dict(state)
            set_rng_state(state["rng"])
            trainer.sampler.scale_step_size(observer.rollback_factor)
            observer.rolled_back(trainer, error, newest)


def checkpoint_note(newest: Path | None) -> str:
    """What a stopped run keeps, truthfully: the newest checkpoint's round, or none."""
    if newest is None:
        return " (no checkpoint was written before this round)"
    round_index = checkpoint_round(newest)
    return (
        f" (the checkpoint of round {round_index} is kept, {newest.name}; --resume continues "
        f"from it)"
    )
