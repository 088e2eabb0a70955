r"""One run: parse the config, build the experiment, resume if asked, fit with the observer."""

from __future__ import annotations

import math
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from typing_extensions import get_protocol_members

import gin
from ebmkit.checkpoint.files import (
    latest_checkpoint,
    load_checkpoint,
    remove_orphaned_temporaries,
)
from ebmkit.checkpoint.optimizer_settings import (
    apply_configured,
    configured_settings,
    optimizer_slots,
)
from ebmkit.checkpoint.rng import seed_everything, set_rng_state
from ebmkit.checkpoint.shards import for_rank
from ebmkit.config import explain_build_error, parse_config, set_rounds, unused_bindings
from ebmkit.errors import (
    CheckpointError,
    ConfigError,
    DivergenceError,
    EbmkitError,
    RunInterrupted,
)
from ebmkit.protocols import Trainer
from ebmkit.runs import distributed
from ebmkit.runs.experiment import Experiment
from ebmkit.runs.folders import prepare_run_dir
from ebmkit.runs.interrupts import InterruptRequest
from ebmkit.runs.lock import RunLock
from ebmkit.runs.observer import RunObserver
from ebmkit.runs.resume import config_changes, cut_metrics_back, refuse_changes
from ebmkit.runs.rollback import check_rollback_possible, fit_with_rollbacks, replay_rollbacks

__all__ = ["run_experiment"]


def run_experiment(
    config: Path,
    out: Path | None = None,
    rounds: int | None = None,
    bindings: Sequence[str] = (),
    resume: bool = False,
    accept_config_change: bool = False,
) -> dict[str, Any]:
    """Parse `config`, build the experiment, train (resuming if asked); return a summary.

    Nothing in an existing run directory is overwritten unless `resume` continues it. One
    run holds a folder at a time (a lock file). A resumed run re-applies the `--bind`
    values stored in its checkpoint before `bindings`, and is refused when the config then
    differs from the run's beyond rounds, cadence and device (unless
    `accept_config_change`); its logs are cut back to the checkpoint's round. SIGINT /
    SIGTERM finish the round, save it and raise RunInterrupted (exit 130 / 143).

    Launched by torchrun (RANK / WORLD_SIZE set), it is one rank of a data-parallel run (see
    `ebmkit.runs.distributed`): rank 0 alone holds the folder, decides how the run starts
    and hands that to the others.
    """
    run_dir = out if out is not None else Path("runs") / config.stem
    started = distributed.init_from_environment()
    try:
        if distributed.is_distributed():
            return _run_rank(config, run_dir, rounds, list(bindings), resume, accept_config_change)
        created = not run_dir.exists()
        prepare_run_dir(run_dir)
        try:
            with RunLock(run_dir):
                resume, checkpoint, state = _starting_point(config, run_dir, resume)
                return _train(
                    config,
                    run_dir,
                    rounds,
                    list(bindings),
                    checkpoint,
                    state,
                    accept_config_change,
                )
        except BaseException:
            _remove_if_empty(run_dir, created)
            raise
    finally:
        if started:
            distributed.shutdown()


def _remove_if_empty(run_dir: Path, created: bool) -> None:
    """A run refused before writing anything leaves no empty folder."""
    if created and run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()


def _run_rank(
    config: Path,
    run_dir: Path,
    rounds: int | None,
    bindings: list[str],
    resume: bool,
    accept_config_change: bool,
) -> dict[str, Any]:
    """One rank of a data-parallel run: rank 0 holds the folder and reads the checkpoint,
    every rank gets how the run starts (or rank 0's refusal, raised on every rank)."""
    lock, created, refusal, start = None, False, None, None
    if distributed.is_main():
        created = not run_dir.exists()
        try:
            prepare_run_dir(run_dir)
            lock = RunLock(run_dir)
            lock.acquire()
            start = _starting_point(config, run_dir, resume)
        except Exception as error:  # noqa: BLE001 - every rank raises it, none waits
            refusal = error
    shared = distributed.broadcast_object(
        (None, start) if refusal is None else (type(refusal), str(refusal))
    )
    try:
        if refusal is not None:
            raise refusal
        if shared[0] is not None:
            raise _rebuilt(*shared)
        _, checkpoint, state = shared[1]
        try:
            summary = _train(
                config, run_dir, rounds, bindings, checkpoint, state, accept_config_change
            )
        except (RunInterrupted, DivergenceError):
            distributed.barrier()  # every rank stopped in the same round: none is cut short
            raise
        distributed.barrier()  # rank 0 has closed its logs before any rank's process ends
        return summary
    except BaseException:
        if distributed.is_main():
            _remove_if_empty(run_dir, created)
        raise
    finally:
        if lock is not None:
            lock.release()


def _rebuilt(kind: type[Exception], message: str) -> Exception:
    """Rank 0's refusal as the other ranks raise it: the same class and message."""
    try:
        return kind(message)
    except Exception:  # noqa: BLE001 - a class with another signature
        return EbmkitError(message)


def _starting_point(
    config: Path, run_dir: Path, resume: bool
) -> tuple[bool, Path | None, dict[str, Any] | None]:
    """Whether the run resumes, from which checkpoint, and its state (read here); a fresh
    run refuses a folder holding another run's checkpoints or logs."""
    checkpoints = run_dir / "checkpoints"
    for orphan in remove_orphaned_temporaries(checkpoints):
        print(
            f"ebmkit: note: removed {orphan}, left by a run killed while saving", file=sys.stderr
        )
    checkpoint = latest_checkpoint(checkpoints)
    if resume and checkpoint is None:
        if not _leftover_logs(run_dir):
            raise CheckpointError(
                f"--resume: no checkpoint in {checkpoints}; start the run without --resume, "
                f"or point --out at the run to continue"
            )
        resume = False  # killed before its first checkpoint: start afresh, keep its logs
        kept = set_aside_earlier_logs(run_dir)
        print(
            f"ebmkit: note: {run_dir} has no checkpoint (the earlier run stopped before its "
            f"first one), so the run starts afresh; the earlier logs are kept in {kept}",
            file=sys.stderr,
        )
    if not resume and checkpoint is not None:
        raise CheckpointError(
            f"{run_dir} already holds checkpoints ({checkpoint.name}); pass --resume to "
            f"continue that run, or choose another --out"
        )
    if not resume:
        _refuse_leftover_logs(run_dir, config)
    return resume, checkpoint if resume else None, load_checkpoint(checkpoint) if resume else None


def _train(
    config: Path,
    run_dir: Path,
    rounds: int | None,
    bindings: list[str],
    checkpoint: Path | None,
    state: dict[str, Any] | None,
    accept_config_change: bool,
) -> dict[str, Any]:
    """Build the experiment from `config`, restore `state` (a resume) and fit."""
    main = distributed.is_main()
    checkpoints = run_dir / "checkpoints"
    if state is not None:  # this rank's chains; refused if written by another world size
        state = for_rank(state, distributed.rank(), distributed.world_size(), checkpoint)
    stored = (state or {}).get("run") or {}
    all_bindings = [*stored.get("bindings", []), *bindings]
    parse_config(config, all_bindings)
    if rounds is not None:
        set_rounds(rounds)
    try:
        seed = gin.query_parameter("experiment.seed")
    except ValueError:
        seed = 0
    seed_everything(seed)
    try:
        experiment = Experiment()
    except (TypeError, ValueError) as error:
        raise explain_build_error(error, config, all_bindings) from error
    trainer = experiment.trainer
    _check_trainer(trainer, config)
    if distributed.is_distributed():
        _start_ranks(trainer, experiment, config, seed)
    for binding in unused_bindings(bindings) if main else ():
        print(
            f"ebmkit: note: --bind {binding!r} has no effect: this run never builds that "
            f"component (its operative_config.gin lists the ones it builds)",
            file=sys.stderr,
        )
    operative_config = gin.operative_config_str()
    if state is not None:
        _check_resume(state, operative_config, checkpoint, trainer, accept_config_change)
    if experiment.on_divergence == "rollback":
        check_rollback_possible(trainer.sampler, config)
    replayed = None
    if state is not None:
        slots = optimizer_slots(trainer) if accept_config_change else []
        wanted = [configured_settings(slot.optimizer) for slot in slots]  # before the load
        try:
            trainer.load_state_dict(state)
            set_rng_state(state["rng"])
            replayed = replay_rollbacks(trainer, state.get("divergence"))
        except (ValueError, RuntimeError, KeyError) as error:
            raise CheckpointError(
                f"checkpoint {checkpoint} does not fit this config ({type(error).__name__}: "
                f"{error}); resume with the config and bindings the run was started with"
            ) from error
        # An accepted change: the config's optimizer settings, not the checkpoint's.
        applied = [
            line for s, w in zip(slots, wanted, strict=True) for line in apply_configured(s, w)
        ]
        if applied and main:
            print(
                f"ebmkit: note: the config's optimizer settings replace the checkpoint's "
                f"({'; '.join(applied)})",
                file=sys.stderr,
            )
        dropped = cut_metrics_back(run_dir / "metrics.jsonl", state["round"]) if main else 0
        if dropped:
            print(
                f"ebmkit: note: {dropped} metrics.jsonl row(s) after round {state['round']} "
                f"(logged after its checkpoint) are dropped; those rounds run again",
                file=sys.stderr,
            )
    if main:
        (run_dir / "operative_config.gin").write_text(operative_config)
    interrupt = InterruptRequest()
    observer = RunObserver(
        experiment,
        run_dir,
        operative_config,
        run_record={"config": str(config), "bindings": all_bindings},
        purge_after=None if state is None else int(state["round"]),
        interrupt=interrupt,
        resume_command=f"{_launcher()} run {shlex.quote(str(config))} --out "
        f"{shlex.quote(str(run_dir))} --resume",
    )
    if replayed is not None:  # a resumed run that had rolled back: count on from there
        observer.rollbacks, observer.rollback_factor = replayed
    try:
        with interrupt:
            if experiment.on_divergence == "rollback" and state is None:
                observer.checkpoint(trainer)  # round 0: early divergences have a target
            fit_with_rollbacks(trainer, observer, checkpoints)
    finally:
        observer.close()
    return {
        "run_dir": str(run_dir),
        "rounds": trainer.round_index,
        "metrics": {k: v for k, v in observer.final_metrics.items() if not math.isnan(v)},
    }


def _launcher() -> str:
    """How this run was started: `ebmkit`, or torchrun with the world size for `-m ebmkit`."""
    if not distributed.is_distributed():
        return "ebmkit"
    return f"torchrun --nproc_per_node={distributed.world_size()} -m ebmkit"


def _start_ranks(trainer: Any, experiment: Experiment, config: Path, seed: int) -> None:
    """The ranks of a data-parallel run start from rank 0's networks; then rank r's random
    stream (its chains) is seeded `seed + r`, so the ranks' chains differ."""
    if experiment.on_divergence == "rollback":
        raise ConfigError(
            f"in config {config}: experiment.on_divergence = 'rollback' is not supported in a "
            f"data-parallel (torchrun) run yet; use on_divergence = 'stop' (resume from the "
            f"newest checkpoint with a smaller step), or run in one process"
        )
    for module in [trainer.energy, *trainer.all_learnables.values()]:
        if isinstance(module, torch.nn.Module):
            distributed.broadcast_module(module)
    seed_everything(seed + distributed.rank())


_LOGS = ("metrics.jsonl", "tb", "operative_config.gin", "samples")


def _leftover_logs(run_dir: Path) -> list[str]:
    """The logs of an earlier run found in `run_dir` (names from `_LOGS`)."""
    return [name for name in _LOGS if (run_dir / name).exists()]


def set_aside_earlier_logs(run_dir: Path) -> Path:
    """Move the logs of a run that stopped before its first checkpoint into a dated subfolder
    `earlier-YYYYmmdd-HHMMSS[-k]` of `run_dir` (nothing deleted); return that folder."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for suffix in ["", *(f"-{k}" for k in range(1, 1000))]:
        kept = run_dir / f"earlier-{stamp}{suffix}"
        try:
            kept.mkdir()
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - a thousand set-asides in one second
        raise CheckpointError(f"{run_dir}: could not make a folder for the earlier logs")
    for name in _leftover_logs(run_dir):
        os.replace(run_dir / name, kept / name)
    return kept


def _refuse_leftover_logs(run_dir: Path, config: Path) -> None:
    """A fresh run never appends to another run's logs (one killed before its first save)."""
    leftovers = _leftover_logs(run_dir)
    if leftovers:
        command = f"ebmkit run {shlex.quote(str(config))} --out {shlex.quote(str(run_dir))}"
        raise CheckpointError(
            f"{run_dir} holds {', '.join(leftovers)} of an earlier run but no checkpoint (it "
            f"stopped before its first one); `{command} --resume` starts it afresh there, "
            f"keeping those logs in a dated subfolder, or choose another --out"
        )


def _check_resume(
    state: dict[str, Any],
    operative_config: str,
    checkpoint: Path,
    trainer: Any,
    accept_config_change: bool,
) -> None:
    """Refuse a resume whose config changed (unless accepted) or that has no round to run."""
    changes = config_changes(state.get("operative_config", ""), operative_config)
    if changes and not accept_config_change:
        refuse_changes(changes, checkpoint)
    if changes:
        listed = "; ".join(str(change) for change in changes)
        print(f"ebmkit: note: continuing with a changed config ({listed})", file=sys.stderr)
    if trainer.n_rounds <= state["round"]:
        raise CheckpointError(
            f"--resume: the run is already at round {state['round']} ({checkpoint.name}) and "
            f"the config ends at round {trainer.n_rounds}, so there is nothing to run; pass "
            f"--rounds N with N > {state['round']} to train further"
        )


def _protocol_members(protocol: type) -> list[str]:
    """A protocol's members in declaration order, its own before those of its bases."""
    members = get_protocol_members(protocol)
    declared = [
        name
        for cls in protocol.__mro__
        for name in [*vars(cls).get("__annotations__", {}), *vars(cls)]
    ]
    return [name for name in dict.fromkeys(declared) if name in members]


def _check_trainer(trainer: Any, config: Path) -> None:
    """The run reads a trainer through the `Trainer` protocol only: say what one lacks."""
    if isinstance(trainer, Trainer):
        return
    missing = [name for name in _protocol_members(Trainer) if not hasattr(trainer, name)]
    raise ConfigError(
        f"in config {config}: experiment.trainer is a {type(trainer).__name__}, which lacks "
        f"{', '.join(missing)} of the Trainer protocol (ebmkit.Trainer) a run reads; bind a "
        f"trainer, e.g. experiment.trainer = @trainers.Contrastive()"
    )
