r"""The run observer: logs each round, saves pictures, evaluates toy metrics, checkpoints."""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ebmkit.checkpoint.files import save_checkpoint
from ebmkit.checkpoint.rng import get_rng_state
from ebmkit.checkpoint.shards import rank_part, with_rank_parts
from ebmkit.density import model_energy_of
from ebmkit.errors import CheckpointError, DivergenceError
from ebmkit.protocols import StepScalable
from ebmkit.records import Round
from ebmkit.runs import distributed
from ebmkit.runs.experiment import Experiment
from ebmkit.runs.interrupts import EXIT_STATUS, InterruptRequest, RunInterrupted
from ebmkit.tracking.images import log_data_grid, log_energy_histograms
from ebmkit.tracking.run_logger import NullLogger, RunLogger

__all__ = ["RunObserver", "buffers_kept", "named_metrics", "step_size_of"]

METRIC_ARGUMENTS = ("energy", "samples", "dataset", "generator", "trainer")
"""What `experiment.metrics` callables may ask for, by parameter name."""


def named_metrics(
    metrics: Any, trainer: Any, round: Round, samples: Tensor | None = None
) -> dict[str, float]:
    """The values of `experiment.metrics` (a mapping name → callable, or registered metric
    names) at this round; each callable gets the `METRIC_ARGUMENTS` its signature names
    (``samples``: `samples` when given — every rank's, in a data-parallel run — else the
    round's).

    Runs under ``torch.no_grad`` and without changing the run's random stream (the CPU RNG,
    and CUDA's when the trainer is there, are restored; ``generator`` is seeded by the round).
    """
    import inspect

    from ebmkit.registry import get_registry

    if isinstance(metrics, str) or not isinstance(metrics, Mapping | Sequence):
        raise TypeError(
            f"experiment.metrics must be a mapping name -> metric or a list of metric names, "
            f"got {metrics!r}"
        )
    if not isinstance(metrics, Mapping):
        metrics = {name: get_registry().get("metric", name).factory for name in metrics}
    available = {
        "energy": lambda: model_energy_of(trainer),
        "samples": lambda: (round.result.x if samples is None else samples).detach().cpu(),
        "dataset": lambda: trainer.dataset,
        "generator": lambda: torch.Generator().manual_seed(round.index),
        "trainer": lambda: trainer,
    }
    device = torch.device(getattr(trainer, "device", "cpu"))
    values: dict[str, float] = {}
    for name, metric in metrics.items():
        arguments = {}
        for parameter in inspect.signature(metric).parameters.values():
            if parameter.name in available:
                arguments[parameter.name] = available[parameter.name]()
            elif parameter.default is inspect.Parameter.empty and parameter.kind not in (
                inspect.Parameter.VAR_POSITIONAL,
                inspect.Parameter.VAR_KEYWORD,
            ):
                raise TypeError(
                    f"experiment.metrics[{name!r}]: its parameter {parameter.name!r} is none of "
                    f"{METRIC_ARGUMENTS}; wrap the metric in a function of those"
                )
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            with torch.no_grad():
                values[str(name)] = float(metric(**arguments))
    return values


@contextlib.contextmanager
def buffers_kept(modules: list[nn.Module]) -> Iterator[None]:
    """Put every buffer of `modules` back as it was on exit.

    Metrics and pictures run the energy (and flows) in training mode: a spectral-norm layer
    advances its power iteration there and BatchNorm its running statistics, both saved in
    checkpoints; without this, a run stopped off the evaluation cadence and resumed would
    differ from the uninterrupted one.
    """
    saved = [
        (module, name, value.clone())
        for module in modules
        for name, value in module.named_buffers()
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for module, name, value in saved:
                module.get_buffer(name).copy_(value)


def _evaluated_modules(trainer: Any) -> list[nn.Module]:
    """The energy and every Learnable module of the trainer (what a metric may run)."""
    parts = [getattr(trainer, "energy", None), *getattr(trainer, "all_learnables", {}).values()]
    return [part for part in parts if isinstance(part, nn.Module)]


def step_size_of(sampler: Any) -> float:
    """The sampler's configured step size through `StepScalable`, NaN for other samplers."""
    return sampler.current_step_size() if isinstance(sampler, StepScalable) else float("nan")


def _is_toy(dataset: Any) -> bool:
    return callable(getattr(dataset, "log_density", None)) and hasattr(dataset, "bounds")


class RunObserver:
    """Logs each round, draws samples, evaluates toy metrics and writes checkpoints.

    In a data-parallel run every rank calls it after each round: scalars are averaged over
    ranks and metrics and pictures made from every rank's samples, but only rank 0 writes
    logs and pictures and shows the progress bar; a checkpoint gathers every rank's chains,
    data position and RNG states into rank 0's file; a signal on any rank stops all.
    """

    def __init__(
        self,
        experiment: Experiment,
        run_dir: Path,
        operative_config: str,
        *,
        run_record: dict[str, Any] | None = None,
        purge_after: int | None = None,
        interrupt: InterruptRequest | None = None,
        resume_command: str = "ebmkit run CONFIG --out RUN --resume",
    ) -> None:
        """Arguments beyond the experiment, folder and config: `run_record` (the config path
        and the --bind values, stored in checkpoints so `--resume` re-applies them),
        `purge_after` (a resumed run's checkpoint round: tensorboard drops later steps),
        `interrupt` (checked after each round) and the command that continues the run."""
        self.experiment = experiment
        self.run_dir = run_dir
        self.operative_config = operative_config
        self.run_record = run_record or {}
        self.interrupt = interrupt
        self.resume_command = resume_command
        self.last_checkpoint_round: int | None = None
        self.main = distributed.is_main()
        self.logger: RunLogger | NullLogger = (
            RunLogger(run_dir, purge_step=None if purge_after is None else purge_after + 1)
            if self.main
            else NullLogger()
        )
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
            if trainer.round_index == 0 and self.main:
                log_data_grid(self.logger, trainer.dataset, self.run_dir / "samples")
            self._introduced = True
        if self._progress is not None:
            self._progress.close()
        if self.main:
            self._progress = tqdm(
                total=trainer.n_rounds, initial=trainer.round_index, desc="rounds", mininterval=1
            )
        self._clock = time.perf_counter()

    def after_round(self, trainer: Any, round: Round) -> None:
        experiment, index = self.experiment, round.index
        self._rounds_since_log += 1
        if index % experiment.log_every == 0 or index == trainer.n_rounds:
            self._log_scalars(trainer, round)
        evaluating = index % experiment.eval_every == 0 or index == trainer.n_rounds
        picturing = index % experiment.sample_every == 0 or index == trainer.n_rounds
        toy = _is_toy(trainer.dataset) and evaluating
        samples = round.result.x.detach()
        if distributed.is_distributed() and (
            toy or picturing or (experiment.metrics and evaluating)
        ):
            samples = distributed.gather_tensors(samples)  # every rank's chains, rank order
        if self.main:
            with buffers_kept(_evaluated_modules(trainer)):  # evaluation leaves no trace
                if toy:
                    self.final_metrics = self._toy_metrics(trainer, round, samples)
                    metrics = {f"metrics/{k}": v for k, v in self.final_metrics.items()}
                    self.logger.scalars(index, metrics)
                if experiment.metrics and evaluating:
                    named = named_metrics(experiment.metrics, trainer, round, samples)
                    self.final_metrics = {**self.final_metrics, **named}
                    self.logger.scalars(index, {f"metrics/{k}": v for k, v in named.items()})
                if picturing:
                    self._pictures(trainer, round, samples)
        if index % experiment.checkpoint_every == 0 or index == trainer.n_rounds:
            self.checkpoint(trainer)
        if self._progress is not None:
            self._progress.update(1)
        if self.interrupt is not None and self._agreed_signal():
            self._stop_on_signal(trainer)

    def _agreed_signal(self) -> bool:
        """Whether a SIGINT / SIGTERM asked the run to stop, on any rank (then every rank's
        request holds the same signal, so all stop after this round)."""
        signum = self.interrupt.signum
        if not distributed.is_distributed():
            return signum is not None
        agreed = distributed.max_over_ranks(0 if signum is None else int(signum))
        if agreed and signum is None:
            self.interrupt.signum = agreed
        return agreed != 0

    def _stop_on_signal(self, trainer: Any) -> None:
        """Save the finished round (unless just saved) and stop with 130 / 143."""
        if self.last_checkpoint_round != trainer.round_index:
            self.checkpoint(trainer)
        signum = self.interrupt.signum
        raise RunInterrupted(
            f"interrupted by {signal.Signals(signum).name} at round {trainer.round_index} "
            f"(checkpoint round-{trainer.round_index:08d}.pt written); continue with: "
            f"{self.resume_command}",
            EXIT_STATUS[signum],
        )

    def after_fit(self, trainer: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the progress bar and flush the logs (safe to call twice, e.g. after an error)."""
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self.logger.close()

    def checkpoint(self, trainer: Any) -> Path:
        """Save the trainer's state; the logs up to this round are flushed to disk first, so
        a kill later loses no round the checkpoint covers (a resume logs the rest again)."""
        self.logger.flush()
        state = trainer.state_dict()
        state["rng"] = get_rng_state()
        state["operative_config"] = self.operative_config
        state["divergence"] = {"rollbacks": self.rollbacks, "factor": self.rollback_factor}
        state["run"] = self.run_record
        directory = self.run_dir / "checkpoints"
        path = directory / f"round-{trainer.round_index:08d}.pt"
        if distributed.is_distributed():
            parts = distributed.gather_objects(rank_part(state))  # every rank's chains, RNGs
            failure = None
            if self.main:
                try:
                    save_checkpoint(
                        with_rank_parts(state, parts),
                        directory,
                        trainer.round_index,
                        self.experiment.keep_checkpoints,
                    )
                except CheckpointError as error:
                    failure = str(error)
            failure = distributed.broadcast_object(failure)  # a failed write stops every rank
            if failure is not None:
                raise CheckpointError(failure)
        else:
            path = save_checkpoint(
                state, directory, trainer.round_index, self.experiment.keep_checkpoints
            )
        self.last_checkpoint_round = trainer.round_index
        return path

    def rolled_back(self, trainer: Any, error: DivergenceError, checkpoint: Path) -> str:
        """Count a rollback and say what happened (stderr and tensorboard); the message."""
        self.rollbacks += 1
        cause = error.cause  # "round N: non-finite …" without "training stopped"
        message = (
            f"ebmkit: {cause}: rolled back to round {trainer.round_index} "
            f"({checkpoint.name}); sampler step size ×{self.rollback_factor:g} → "
            f"{step_size_of(trainer.sampler):.4g} (rollback {self.rollbacks} of "
            f"{self.experiment.max_rollbacks})"
        )
        tqdm.write(message, file=sys.stderr)
        self.logger.text("divergence", message, step=error.round_index)
        return message

    def _log_scalars(self, trainer: Any, round: Round) -> None:
        """The round's scalars (averaged over ranks in a data-parallel run), logged by rank 0."""
        elapsed = time.perf_counter() - self._clock
        result = round.result
        values: dict[str, Tensor | float] = {
            "energy/data": round.energy_data.mean(),
            "energy/samples": round.energy_model.mean(),
            "energy/gap": round.energy_gap,
            **round.losses,
            "sampler/step_size": result.step_size.float().mean(),
            # The round's budget per chain batch: gradients, energy-only evaluations and flow
            # passes counted apart, so methods compare at equal cost.
            "sampler/grad_evals": float(result.n_grad_evals),
            "sampler/energy_evals": float(result.n_energy_evals),
            "sampler/flow_evals": float(result.n_flow_evals),
            "perf/samples_per_s": self._rounds_since_log
            * trainer.batch_size
            * distributed.world_size()  # the mean over ranks times their number: the run's
            / max(elapsed, 1e-9),
        }
        if result.acceptance_rate is not None:
            values["sampler/acceptance_rate"] = result.acceptance_rate.mean()
        sampler_name = type(trainer.sampler).__name__
        for name, value in result.stats.items():
            values[f"{sampler_name}/{name}"] = value.float().mean()
        if distributed.is_distributed():
            names = sorted(values)  # the same names on every rank: one all-reduce for all
            stacked = torch.stack([torch.as_tensor(values[n]).double().cpu() for n in names])
            values = dict(zip(names, distributed.all_reduce_mean(stacked).unbind(), strict=True))
        scalars = {k: float(v) for k, v in values.items()}
        if not self.main:
            self._clock, self._rounds_since_log = time.perf_counter(), 0
            return
        self.logger.scalars(round.index, scalars)
        log_energy_histograms(self.logger, round)
        if self._progress is not None:
            self._progress.set_postfix(
                gap=f"{scalars['energy/gap']:.3g}", loss=f"{scalars['loss/total']:.3g}"
            )
        self._clock, self._rounds_since_log = time.perf_counter(), 0

    def _toy_metrics(self, trainer: Any, round: Round, samples: Tensor) -> dict[str, float]:
        """The toy metrics of the model density (`ebmkit.density`'s hook) and the samples."""
        from ebmkit.metrics.toy import toy_metrics

        generator = torch.Generator().manual_seed(round.index)
        energy = model_energy_of(trainer)
        return toy_metrics(energy, samples.cpu(), trainer.dataset, generator)

    def _pictures(self, trainer: Any, round: Round, samples: Tensor) -> None:
        """The samples' picture (a density plot on 2-D toys, a grid of images)."""
        samples = samples.detach().cpu()
        folder = self.run_dir / "samples"
        folder.mkdir(exist_ok=True)
        if _is_toy(trainer.dataset) and samples.dim() == 2 and samples.shape[1] == 2:
            from ebmkit.tracking.plots import density_figure, save_figure

            figure = density_figure(model_energy_of(trainer), samples, trainer.dataset)
            self.logger.figure("samples/density", round.index, figure)
            save_figure(figure, folder / f"round-{round.index:08d}.png")
        elif samples.dim() == 4:
            from torchvision.utils import make_grid, save_image

            grid = make_grid(
                samples[:64].clamp(-1, 1), nrow=8, normalize=True, value_range=(-1, 1)
            )
            self.logger.image("samples/grid", round.index, grid)
            save_image(grid, folder / f"round-{round.index:08d}.png")
