r"""One run: parse the config, build the experiment, resume if asked, fit with the observer."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gin
from ebmkit.checkpoint.files import latest_checkpoint, load_checkpoint
from ebmkit.checkpoint.rng import seed_everything, set_rng_state
from ebmkit.config import parse_config, set_rounds
from ebmkit.errors import CheckpointError, ConfigError
from ebmkit.protocols import Trainer
from ebmkit.runs.experiment import Experiment
from ebmkit.runs.observer import RunObserver
from ebmkit.runs.rollback import check_rollback_possible, fit_with_rollbacks, replay_rollbacks

__all__ = ["run_experiment"]


def run_experiment(
    config: Path,
    out: Path | None = None,
    rounds: int | None = None,
    bindings: Sequence[str] = (),
    resume: bool = False,
) -> dict[str, Any]:
    """Parse `config`, build the experiment, train (resuming if asked); return a summary.

    Nothing in an existing run directory is overwritten unless `resume` continues it.
    """
    parse_config(config, bindings)
    if rounds is not None:
        set_rounds(rounds)
    run_dir = out if out is not None else Path("runs") / config.stem
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    if resume and checkpoint is None:
        raise CheckpointError(
            f"--resume: no checkpoint in {run_dir / 'checkpoints'}; start the run without "
            f"--resume, or point --out at the run to continue"
        )
    if not resume and checkpoint is not None:
        raise CheckpointError(
            f"{run_dir} already holds checkpoints ({checkpoint.name}); pass --resume to "
            f"continue that run, or choose another --out"
        )
    state = load_checkpoint(checkpoint) if resume else None
    try:
        seed = gin.query_parameter("experiment.seed")
    except ValueError:
        seed = 0
    seed_everything(seed)
    try:
        experiment = Experiment()
    except (TypeError, ValueError) as error:
        raise ConfigError(f"in config {config}: {error}") from error
    trainer = experiment.trainer
    _check_trainer(trainer, config)
    operative_config = gin.operative_config_str()
    if experiment.on_divergence == "rollback":
        check_rollback_possible(trainer.sampler, config)
    replayed = None
    if state is not None:
        try:
            trainer.load_state_dict(state)
            set_rng_state(state["rng"])
            replayed = replay_rollbacks(trainer, state.get("divergence"))
        except (ValueError, RuntimeError, KeyError) as error:
            raise CheckpointError(
                f"checkpoint {checkpoint} does not fit this config ({type(error).__name__}: "
                f"{error}); resume with the config and bindings the run was started with"
            ) from error
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "operative_config.gin").write_text(operative_config)
    observer = RunObserver(experiment, run_dir, operative_config)
    if replayed is not None:  # a resumed run that had rolled back: count on from there
        observer.rollbacks, observer.rollback_factor = replayed
    try:
        if experiment.on_divergence == "rollback" and state is None:
            observer.checkpoint(trainer)  # round 0: a divergence in the first rounds has a target
        fit_with_rollbacks(trainer, observer, run_dir / "checkpoints")
    finally:
        observer.close()
    return {
        "run_dir": str(run_dir),
        "rounds": trainer.round_index,
        "metrics": {k: v for k, v in observer.final_metrics.items() if not math.isnan(v)},
    }


_TRAINER_MEMBERS = (
    "energy",
    "sampler",
    "dataset",
    "batch_size",
    "n_rounds",
    "round_index",
    "fit",
    "state_dict",
    "load_state_dict",
)


def _check_trainer(trainer: Any, config: Path) -> None:
    """The run reads a trainer through the `Trainer` protocol only: say what one lacks."""
    if isinstance(trainer, Trainer):
        return
    missing = [name for name in _TRAINER_MEMBERS if not hasattr(trainer, name)]
    raise ConfigError(
        f"in config {config}: experiment.trainer is a {type(trainer).__name__}, which lacks "
        f"{', '.join(missing)} of the Trainer protocol (ebmkit.Trainer) a run reads; bind a "
        f"trainer, e.g. experiment.trainer = @trainers.Contrastive()"
    )
