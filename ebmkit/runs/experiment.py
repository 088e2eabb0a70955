r"""The top of a gin config: the `experiment` configurable (trainer, seed, cadences, rollback)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

import gin
from ebmkit.validators import one_of

__all__ = ["Experiment"]


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
        metrics: more metrics to compute every `eval_every` rounds (and at the last round),
            beside the core toy metrics, on any dataset: a mapping name → callable (a gin
            reference without parentheses, ``{"kl64": @metrics.histogram_kl}``, so its own
            bindings apply) or a sequence of registered metric names (``["histogram_kl"]``,
            called with their defaults). Each is called with the arguments its signature names
            among ``energy`` (the model energy, `ebmkit.density`'s hook), ``samples`` (the
            round's samples, CPU), ``dataset``, ``generator`` (a CPU generator seeded by the
            round) and ``trainer``, and must return a number; logged as ``metrics/<name>``.
    """

    trainer: Any = gin.REQUIRED
    seed: int = 0
    log_every: int = attrs.field(default=10, validator=attrs.validators.ge(1))
    eval_every: int = attrs.field(default=100, validator=attrs.validators.ge(1))
    sample_every: int = attrs.field(default=100, validator=attrs.validators.ge(1))
    checkpoint_every: int = attrs.field(default=100, validator=attrs.validators.ge(1))
    keep_checkpoints: int = attrs.field(default=3, validator=attrs.validators.ge(1))
    on_divergence: str = attrs.field(default="stop", validator=one_of("stop", "rollback"))
    rollback_factor: float = attrs.field(
        default=0.5,
        converter=float,
        validator=[attrs.validators.gt(0.0), attrs.validators.lt(1.0)],
    )
    max_rollbacks: int = attrs.field(default=3, validator=attrs.validators.ge(1))
    metrics: Mapping[str, Callable[..., float]] | Sequence[str] = attrs.field(factory=dict)
