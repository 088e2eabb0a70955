r"""A run: build the experiment from gin, train with logging, pictures and exact checkpoints."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor
from tqdm import tqdm

import gin
from ebmkit.checkpoint.files import latest_checkpoint, load_checkpoint, save_checkpoint
from ebmkit.checkpoint.rng import get_rng_state, seed_everything, set_rng_state
from ebmkit.config import parse_config, set_rounds
from ebmkit.errors import CheckpointError, ConfigError, DivergenceError
from ebmkit.logging.images import log_data_grid, log_energy_histograms
from ebmkit.logging.run_logger import RunLogger
from ebmkit.protocols import StepScalable
from ebmkit.records import Round

__all__ = ["Experiment", "RunObserver", "run_experiment"]


@gin.configurable("experiment")
@attrs.define(kw_only=True)
class Experiment:
    """The top of a gin config: which trainer, the seed, and how often to log and save.

    Arguments:
        trainer: the trainer, e.g. `@trainers.Contrastive()`.
        seed: seeds python, numpy and torch before anything is built.
        log_every: rounds between scalar logs (and progress-bar updates).
        eval_every: rounds between toy metrics (KL on a grid, MMD, ...) on 2-D sets.
        sample_every: rounds between sample pictures.
        checkpoint_every: rounds between checkpoints (one is always written at the end).
        keep_checkpoints: how many of the newest checkpoints to keep.
        on_divergence: "stop" (the run ends with the guard's message) or "rollback" (reload
            the newest checkpoint, shrink the sampler's step by `rollback_factor`, go on).
        rollback_factor: the step-size factor of each rollback, in (0, 1); the noise shrinks
            by its square root, so the chains' temperature stays as configured.
        max_rollbacks: rollbacks allowed in a run; one more divergence then stops it.
    """

    trainer: Any = gin.REQUIRED
    seed: int = 0
    log_every: int = attrs.field(default=10, validator=attrs.validators.ge(1))
    eval_every: int = attrs.field(default=100, validator=attrs.validators.ge(1))
    sample_every: int = attrs.field(default=100, validator=attrs.validators.ge(1))
    checkpoint_every: int = attrs.field(default=100, validator=attrs.validators.ge(1))
    keep_checkpoints: int = attrs.field(default=3, validator=attrs.validators.ge(1))
    on_divergence: str = attrs.field(
        default="stop", validator=attrs.validators.in_(("stop", "rollback"))
    )
    rollback_factor: float = attrs.field(
        default=0.5,
        converter=float,
        validator=[attrs.validators.gt(0.0), attrs.validators.lt(1.0)],
    )
    max_rollbacks: int = attrs.field(default=3, validator=attrs.validators.ge(1))


def _is_toy(dataset: Any) -> bool:
    return callable(getattr(dataset, "log_density", None)) and hasattr(dataset, "bounds")


class RunObserver:
    """Logs each round, draws samples, evaluates toy metrics and writes checkpoints."""

    def __init__(self, experiment: Experiment, run_dir: Path, operative_config: str) -> None:
        self.experiment = experiment
        self.run_dir = run_dir
        self.operative_config = operative_config
        self.logger = RunLogger(run_dir)
        self.final_metrics: dict[str, float] = {}
        self._clock = time.perf_counter()
        self._rounds_since_log = 0
        self._progress: tqdm | None = None
        self._introduced = False
        # Rollbacks so far and their step factor: checkpointed, so a resumed run re-applies
        # the same multiplications to its freshly built sampler.
        self.rollbacks = 0
        self.rollback_factor = experiment.rollback_factor

    def before_fit(self, trainer: Any) -> None:
        if not self._introduced:  # fit runs again after a rollback: log these once
            self.logger.text("operative_config", "```\n" + self.operative_config + "\n```")
            if trainer.round_index == 0:
                log_data_grid(self.logger, trainer.dataset, self.run_dir / "samples")
            self._introduced = True
        if self._progress is not None:
            self._progress.close()
        self._progress = tqdm(
            total=trainer.n_rounds, initial=trainer.round_index, desc="rounds", mininterval=1
        )
        self._clock = time.perf_counter()

    def after_round(self, trainer: Any, round: Round) -> None:
        experiment, index = self.experiment, round.index
        self._rounds_since_log += 1
        if index % experiment.log_every == 0 or index == trainer.n_rounds:
            self._log_scalars(trainer, round)
        if _is_toy(trainer.dataset) and (
            index % experiment.eval_every == 0 or index == trainer.n_rounds
        ):
            self.final_metrics = self._toy_metrics(trainer, round)
            self.logger.scalars(index, {f"metrics/{k}": v for k, v in self.final_metrics.items()})
        if index % experiment.sample_every == 0 or index == trainer.n_rounds:
            self._pictures(trainer, round)
        if index % experiment.checkpoint_every == 0 or index == trainer.n_rounds:
            self.checkpoint(trainer)
        if self._progress is not None:
            self._progress.update(1)

    def after_fit(self, trainer: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the progress bar and flush the logs (safe to call twice, e.g. after an error)."""
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self.logger.close()

    def checkpoint(self, trainer: Any) -> Path:
        state = trainer.state_dict()
        state["rng"] = get_rng_state()
        state["operative_config"] = self.operative_config
        state["divergence"] = {"rollbacks": self.rollbacks, "factor": self.rollback_factor}
        return save_checkpoint(
            state,
            self.run_dir / "checkpoints",
            trainer.round_index,
            self.experiment.keep_checkpoints,
        )

    def rolled_back(self, trainer: Any, error: DivergenceError, checkpoint: Path) -> str:
        """Count a rollback and say what happened (stderr and tensorboard); the message."""
        self.rollbacks += 1
        cause = str(error).split(";")[0]  # "round N: non-finite …" without "training stopped"
        message = (
            f"ebmkit: {cause}: rolled back to round {trainer.round_index} "
            f"({checkpoint.name}); sampler step size ×{self.rollback_factor:g} → "
            f"{trainer.sampler.step_size:.4g} (rollback {self.rollbacks} of "
            f"{self.experiment.max_rollbacks})"
        )
        tqdm.write(message, file=sys.stderr)
        self.logger.text("divergence", message, step=error.round_index)
        return message

    def _log_scalars(self, trainer: Any, round: Round) -> None:
        elapsed = time.perf_counter() - self._clock
        result = round.result
        values: dict[str, Tensor | float] = {
            "energy/data": round.energy_data.mean(),
            "energy/samples": round.energy_model.mean(),
            "energy/gap": round.energy_gap,
            **round.losses,
            "sampler/step_size": result.step_size.float().mean(),
            "perf/samples_per_s": self._rounds_since_log * trainer.batch_size / max(elapsed, 1e-9),
        }
        if result.acceptance_rate is not None:
            values["sampler/acceptance_rate"] = result.acceptance_rate.mean()
        scalars = {k: float(v) for k, v in values.items()}
        self.logger.scalars(round.index, scalars)
        log_energy_histograms(self.logger, round)
        if self._progress is not None:
            self._progress.set_postfix(
                gap=f"{scalars['energy/gap']:.3g}", loss=f"{scalars['loss/total']:.3g}"
            )
        self._clock, self._rounds_since_log = time.perf_counter(), 0

    def _toy_metrics(self, trainer: Any, round: Round) -> dict[str, float]:
        from ebmkit.metrics.toy import toy_metrics

        generator = torch.Generator().manual_seed(round.index)
        return toy_metrics(trainer.energy, round.result.x.cpu(), trainer.dataset, generator)

    def _pictures(self, trainer: Any, round: Round) -> None:
        samples = round.result.x.detach().cpu()
        folder = self.run_dir / "samples"
        folder.mkdir(exist_ok=True)
        if _is_toy(trainer.dataset) and samples.dim() == 2 and samples.shape[1] == 2:
            from ebmkit.logging.plots import density_figure, save_figure

            figure = density_figure(trainer.energy, samples, trainer.dataset)
            self.logger.figure("samples/density", round.index, figure)
            save_figure(figure, folder / f"round-{round.index:08d}.png")
        elif samples.dim() == 4:
            from torchvision.utils import make_grid, save_image

            grid = make_grid(
                samples[:64].clamp(-1, 1), nrow=8, normalize=True, value_range=(-1, 1)
            )
            self.logger.image("samples/grid", round.index, grid)
            save_image(grid, folder / f"round-{round.index:08d}.png")


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
    operative_config = gin.operative_config_str()
    if experiment.on_divergence == "rollback":
        _check_rollback_possible(trainer.sampler, config)
    replayed = None
    if state is not None:
        try:
            trainer.load_state_dict(state)
            set_rng_state(state["rng"])
            replayed = _replay_rollbacks(trainer, state.get("divergence"))
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
        _fit_with_rollbacks(trainer, observer, run_dir / "checkpoints")
    finally:
        observer.close()
    return {
        "run_dir": str(run_dir),
        "rounds": trainer.round_index,
        "metrics": {k: v for k, v in observer.final_metrics.items() if not math.isnan(v)},
    }


def _check_rollback_possible(sampler: Any, config: Path) -> None:
    """on_divergence = 'rollback' needs a sampler that can shrink its step: say so up front."""
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


def _replay_rollbacks(trainer: Any, record: dict[str, Any] | None) -> tuple[int, float] | None:
    """Shrink a resumed run's fresh sampler as its rollbacks did (same multiplications).

    Returns the checkpoint's (rollbacks, factor), or None when it records none.
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


def _fit_with_rollbacks(trainer: Any, observer: RunObserver, checkpoints: Path) -> None:
    """`trainer.fit`; under on_divergence = 'rollback', reload and shrink the step on a NaN."""
    experiment = observer.experiment
    while True:
        try:
            trainer.fit(observer)
            return
        except DivergenceError as error:
            if experiment.on_divergence != "rollback":
                raise
            if observer.rollbacks >= experiment.max_rollbacks:
                raise DivergenceError(
                    f"{error} [after {observer.rollbacks} rollback(s), step size "
                    f"{trainer.sampler.step_size:.4g}; raise experiment.max_rollbacks or "
                    f"lower the learning rate]",
                    error.round_index,
                ) from error
            newest = latest_checkpoint(checkpoints)
            if newest is None:  # removed by hand during the run
                raise
            state = load_checkpoint(newest)
            trainer.load_state_dict(state)
            set_rng_state(state["rng"])
            trainer.sampler.scale_step_size(observer.rollback_factor)
            observer.rolled_back(trainer, error, newest)
