r"""Draw samples from a trained run: rebuild its parts from the checkpoint's operative config."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from torch import Tensor

import gin
from ebmkit.checkpoint.files import latest_checkpoint, load_checkpoint
from ebmkit.checkpoint.rng import seed_everything
from ebmkit.errors import CheckpointError, ConfigError, EbmkitError, OutputPathError
from ebmkit.learnables import component_roots, find_learnables
from ebmkit.protocols import Stateful
from ebmkit.registry import get_registry
from ebmkit.runs.folders import explain_os_error, prepare_output_folder

__all__ = [
    "SamplingParts",
    "build_parts",
    "draw_samples",
    "find_checkpoint",
    "parse_config_string",
    "prepare_sample_folder",
    "sample_run",
    "write_samples",
]


def find_checkpoint(path: str | os.PathLike[str]) -> Path:
    """A checkpoint file: `path` itself, or the newest in `path/checkpoints/` or `path/`."""
    path = Path(path)
    if path.is_file():
        return path
    for folder in (path / "checkpoints", path):
        if (found := latest_checkpoint(folder)) is not None:
            return found
    raise CheckpointError(
        f"no checkpoint at {path}: give a run directory (with checkpoints/round-N.pt inside) "
        f"or a checkpoint file"
    )


def parse_config_string(text: str, origin: str = "the operative config") -> None:
    """Clear gin and parse a config given as text (skip_unknown=False).

    Raises ConfigError naming `origin`, e.g. when the config uses a plugin not installed.
    """
    import ebmkit.runs.experiment  # noqa: F401 - registers `experiment`, which the text binds

    registry = get_registry()
    gin.clear_config()
    logging.disable(logging.ERROR)
    try:
        gin.parse_config(text, skip_unknown=False)
    except (ValueError, SyntaxError, KeyError, TypeError) as error:
        gin.clear_config()
        broken = "".join(
            f"\nplugin {plugin.name!r} failed to import: {plugin.error}"
            for plugin in registry.broken_plugins()
        )
        raise ConfigError(
            f"cannot rebuild the run from {origin}: {error}{broken}\n(is the plugin that "
            f"registered this component installed? `ebmkit plugins` lists what is)"
        ) from error
    finally:
        logging.disable(logging.NOTSET)


def _evaluate(value: Any) -> Any:
    """A gin reference's object (`@x()` is called, `@x` stays the callable); other values."""
    if isinstance(value, gin.config.ConfigurableReference):
        function = value.scoped_configurable_fn
        return function() if value.evaluate else function
    return value


def _query(selector: str, name: str, default: Any) -> Any:
    try:
        return _evaluate(gin.query_parameter(f"{selector}.{name}"))
    except ValueError:
        return default


@attrs.define(kw_only=True, eq=False)
class SamplingParts:
    """What drawing samples needs from a run: energy, initializer, sampler and settings."""

    energy: torch.nn.Module
    initializer: Any
    sampler: Any
    n_steps: int | None
    batch_size: int
    device: str
    round_index: int


def _load_parts(state: dict[str, Any], parts: SamplingParts, learnables: dict[str, Any]) -> None:
    """Load the energy, the stateful sampler/initializer and the Learnables (by path)."""
    parts.energy.load_state_dict(state["energy"])
    saved = state.get("components", {})
    for name, part in {"sampler": parts.sampler, "initializer": parts.initializer}.items():
        if name in saved and isinstance(part, Stateful):
            part.load_state_dict(saved[name])
    saved_learnables = state.get("learnables", {})
    for path, learnable in learnables.items():
        if path not in saved_learnables:
            raise KeyError(
                f"the Learnable at {path} is not in the checkpoint (it holds "
                f"{sorted(saved_learnables) or 'none'})"
            )
        learnable.load_state_dict(saved_learnables[path])


def build_parts(state: dict[str, Any], origin: str, device: str | None = None) -> SamplingParts:
    """Rebuild energy, initializer and sampler from the checkpoint's operative config.

    Only these parts are built (not the dataset, which may be absent where samples are
    drawn). A trainer that does not bind them is built whole instead.
    """
    text = state.get("operative_config")
    if not isinstance(text, str) or not text.strip():
        raise CheckpointError(f"{origin} holds no operative_config; it cannot be rebuilt")
    parse_config_string(text, f"the operative config stored in {origin}")
    try:
        trainer_reference = gin.query_parameter("experiment.trainer")
    except ValueError as error:
        raise ConfigError(
            f"the operative config in {origin} binds no experiment.trainer"
        ) from error
    selector = trainer_reference.scoped_selector
    try:
        references = [gin.query_parameter(f"{selector}.{name}") for name in _COMPONENTS]
    except ValueError:  # not bound on the trainer: build the trainer itself
        references = []
    if references:
        energy, sampler, initializer = (_evaluate(reference) for reference in references)
        # The trainer's own roots, less its explicit `learnables` (not needed to draw).
        learnables = find_learnables(component_roots(initializer, sampler), skip=[energy])
    else:
        trainer = _evaluate(trainer_reference)
        energy, sampler, initializer = (getattr(trainer, n) for n in _COMPONENTS)
        learnables = dict(getattr(trainer, "all_learnables", {}))
    result = SamplingParts(
        energy=energy,
        initializer=initializer,
        sampler=sampler,
        n_steps=_query(selector, "n_steps", None),
        batch_size=_query(selector, "batch_size", 64),
        device=device or _query(selector, "device", "cpu"),
        round_index=int(state.get("round", 0)),
    )
    try:
        _load_parts(state, result, learnables)
    except (RuntimeError, KeyError, ValueError) as error:
        raise CheckpointError(
            f"{origin} does not match the components its operative config builds: {error}"
        ) from error
    result.energy.to(result.device).eval()
    return result


_COMPONENTS = ("energy", "sampler", "initializer")


def draw_samples(
    parts: SamplingParts,
    n: int,
    n_steps: int | None = None,
    batch_size: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Tensor:
    """`n` samples on the CPU: the initializer's starts run through the sampler, in batches.

    The sampler gets the whole InitBatch (on the run's device), not only its `x`: chains from
    a persistent bank continue with their state (adapted step sizes, owned tensors), a flow
    start keeps its latents, as in training. A run without a sampler (e.g. cpmla's
    `trainers.FlowOnly`, whose round samples are its flow's own) gives the initializer's draws.
    """
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    if parts.sampler is None and n_steps is not None:
        raise EbmkitError(
            f"--steps {n_steps}: this run has no sampler (its samples are its initializer's "
            f"draws); leave --steps out"
        )
    steps = n_steps if n_steps is not None else parts.n_steps
    size = batch_size or parts.batch_size
    chunks = []
    for start in range(0, n, size):
        count = min(size, n - start)
        init = parts.initializer.sample(count)
        if parts.sampler is None:
            x = init.x
        else:
            x = parts.sampler.sample(parts.energy, init.to(parts.device), steps).x
        chunks.append(x.detach().cpu())
        if progress is not None:
            progress(start + count)
    return torch.cat(chunks)


def prepare_sample_folder(out: Path) -> Path:
    """Create `out` (checked writable) for `ebmkit sample --out`; refuse one holding samples.

    Raises:
        OutputPathError: `out` cannot be created or written (a file in the way, no
            permission, a read-only filesystem, a full disk).
        EbmkitError: `out` already holds samples.
    """
    prepare_output_folder(out, "--out", "sample folder")
    earlier = sorted(out.glob("sample-*.png")) + sorted(out.glob("samples.npy"))
    if earlier:
        raise EbmkitError(f"{out} already holds samples ({earlier[0].name}); choose another --out")
    return out


def write_samples(samples: Tensor, out: Path) -> list[Path]:
    """Images (N, C, H, W) as `sample-NNNNNN.png` (from [−1, 1]); anything else as
    `samples.npy`. Refuses to overwrite earlier samples; a failed write (disk full, ...)
    raises OutputPathError saying how many files were written.
    """
    from torchvision.utils import save_image

    prepare_sample_folder(out)
    paths: list[Path] = []
    path = out / "samples.npy"
    try:
        if samples.dim() == 4 and samples.shape[1] in (1, 3):
            for index, image in enumerate(samples.clamp(-1, 1)):
                path = out / f"sample-{index:06d}.png"
                save_image(image.add(1).div(2), path)
                paths.append(path)
        else:
            np.save(path, samples.numpy())
            paths.append(path)
    except OSError as error:
        with contextlib.suppress(OSError):  # no half-written file left to pass for a sample
            path.unlink(missing_ok=True)
        message = explain_os_error(error, out, "--out", "sample folder")
        raise OutputPathError(
            f"{message} ({len(paths)} of {len(samples)} samples were written before it failed)"
        ) from error
    return paths


def sample_run(
    run: str | os.PathLike[str],
    n: int,
    out: str | os.PathLike[str],
    n_steps: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    device: str | None = None,
) -> dict[str, Any]:
    """`ebmkit sample`: rebuild the run at its newest (or the given) checkpoint, draw `n`
    samples and write them into `out`; returns a summary.
    """
    checkpoint = find_checkpoint(run)
    state = load_checkpoint(checkpoint)
    seed_everything(seed)
    parts = build_parts(state, str(checkpoint), device)
    prepare_sample_folder(Path(out))  # before drawing: a bad --out fails in a second
    samples = draw_samples(parts, n, n_steps, batch_size)
    written = write_samples(samples, Path(out))
    kind = "images" if written[0].suffix == ".png" else "points"
    return {
        "checkpoint": str(checkpoint),
        "round": parts.round_index,
        "n": n,
        "kind": kind,
        "out": str(out),
        "files": len(written),
        "shape": list(samples.shape),
    }
