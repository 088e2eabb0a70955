r"""Runs: the `experiment` config, training with an observer and rollback, drawing samples.

`experiment.py` holds the gin configurable every config binds, `observer.py` what happens after
each round (logs, pictures, toy metrics, checkpoints, a stop on a signal), `rollback.py` what a
divergence does under `experiment.on_divergence = 'rollback'`, `train.py` a whole run
(`ebmkit run`), `resume.py` the resume checks (the run's own bindings, a changed config,
logs cut back), `lock.py` one run per folder, `interrupts.py` SIGINT/SIGTERM, `folders.py`
output folders and their errors, and `draw.py` samples from a finished run (`ebmkit sample`).
"""

from ebmkit.runs.draw import (
    SamplingParts,
    build_parts,
    draw_samples,
    find_checkpoint,
    parse_config_string,
    sample_run,
    write_samples,
)
from ebmkit.runs.experiment import Experiment
from ebmkit.runs.observer import RunObserver
from ebmkit.runs.rollback import check_rollback_possible, fit_with_rollbacks, replay_rollbacks
from ebmkit.runs.train import run_experiment

__all__ = [
    "Experiment",
    "RunObserver",
    "SamplingParts",
    "build_parts",
    "check_rollback_possible",
    "draw_samples",
    "find_checkpoint",
    "fit_with_rollbacks",
    "parse_config_string",
    "replay_rollbacks",
    "run_experiment",
    "sample_run",
    "write_samples",
]
