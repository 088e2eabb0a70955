r"""FlowModule: the base of every registered flow (density direction, trained as a Learnable)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ebmkit.errors import DivergenceError
from ebmkit.learnables.module import LearnableModule, SchedulerFactory
from ebmkit.records import Round

__all__ = ["FIT_ON", "FlowModule", "check_finite", "standard_normal_log_prob"]

FIT_ON = ("data", "samples", "both")
"""What a flow's forward-KL loss fits: the data batch, the chains' final states, or both."""

_LOG_2PI = math.log(2 * math.pi)


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed over every axis but the batch: shape (B,)."""
    flat = z.flatten(1)
    return -0.5 * (flat.square().sum(1) + flat.shape[1] * _LOG_2PI)


def check_finite(value: Tensor, what: str, component: str, fix: str) -> Tensor:
    """`value` itself, or DivergenceError naming `component` and what was not finite.

    Flows check their outputs with this: a non-finite sample or density would otherwise
    reach the chains and the energy's loss and surface rounds later as a NaN elsewhere.
    """
    if not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).flatten(1).any(1).sum()) if value.dim() else 1
        raise DivergenceError(
            f"{component} gave a non-finite {what} ({bad} of "
            f"{value.shape[0] if value.dim() else 1} rows)",
            -1,
            fix,
        )
    return value


class FlowModule(LearnableModule):
    """Base of a registered flow: writes `forward`/`inverse`, gets the density, sampling and
    a forward-KL `loss` on what `fit_on` names.

    Direction (zuko's, CP-Flow's): `forward(x) -> (z, log|det ∂z/∂x|)` maps data to the
    base N(0, I); `inverse(z) -> (x, log|det ∂x/∂z|)`. log λ(x) = log N(z) + log|det ∂z/∂x|.
    Sampling draws the base noise with ``torch.randn(..., generator=generator)`` and pushes
    it through `inverse`, so a run's seeded generator (or the checkpointed global RNG)
    decides every draw.

    Arguments:
        event_shape: the shape of one sample, e.g. (2,) or (3, 32, 32); None only for a flow
            whose parameters broadcast over any shape (`ElementwiseAffine` with scalar
            parameters): it then maps batches of any shape but cannot `sample(n)` alone.
        fit_on: "data" (maximum likelihood on the data batch, CoopFlow's pretraining and
            CPMLA), "samples" (the chains' final states: flow-MCMC's forward KL,
            CoopFlow's revised samples) or "both".
        reverse_kl_weight: r in (1 − r)·forward KL + r·reverse KL, the reverse term
            mean[E(T(z)) − log|det ∂T/∂z|] on the round's energy (flow-MCMC's mix; its code
            uses r = 0.2). 0 (default): forward KL only.
        trainable: False keeps the flow fixed (a fixed proposal): `learn` only reports
            the losses.
        learning_rate, betas, weight_decay, grad_clip, scheduler, scheduler_interval: the
            flow's optimizer and its LR schedule (see `LearnableModule`).
    """

    exact_log_prob: bool = True
    """`log_prob` is exact; a flow whose density is a stochastic estimate sets False."""

    def __init__(
        self,
        *,
        event_shape: Sequence[int] | None,
        fit_on: str = "data",
        reverse_kl_weight: float = 0.0,
        trainable: bool = True,
        learning_rate: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        grad_clip: float | None = None,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "round",
    ) -> None:
        super().__init__(
            learning_rate=learning_rate,
            betas=betas,
            weight_decay=weight_decay,
            grad_clip=grad_clip,
            scheduler=scheduler,
            scheduler_interval=scheduler_interval,
        )
        shape = None if event_shape is None else tuple(int(size) for size in event_shape)
        if shape is not None and (not shape or min(shape) < 1):
            raise ValueError(
                f"{self.component_name}: event_shape must be positive sizes, got {event_shape!r}"
            )
        if fit_on not in FIT_ON:
            raise ValueError(
                f"{self.component_name}: fit_on must be one of {FIT_ON}, got {fit_on!r}"
            )
        if not 0.0 <= reverse_kl_weight <= 1.0:
            raise ValueError(
                f"{self.component_name}: reverse_kl_weight must be in [0, 1], got "
                f"{reverse_kl_weight}"
            )
        self.event_shape: tuple[int, ...] | None = shape
        self.fit_on = fit_on
        self.trainable = bool(trainable)
        self.reverse_kl_weight = float(reverse_kl_weight)

    @property
    def component_name(self) -> str:
        """The gin name users configure, e.g. ``flows.Affine``."""
        return f"flows.{type(self).__name__}"

    @property
    def event_size(self) -> int:
        """The number of coordinates of one sample."""
        return math.prod(self._known_shape("event_size"))

    def _known_shape(self, what: str) -> tuple[int, ...]:
        if self.event_shape is None:
            raise ValueError(
                f"{self.component_name} was built for any shape (event_shape=None), so "
                f"{what} needs a shape: set {self.component_name}.event_shape"
            )
        return self.event_shape

    def check_input(self, x: Tensor, what: str = "data") -> None:
        """Raise ValueError when `x` is not a batch of this flow's event shape."""
        if self.event_shape is None:
            if x.dim() < 1:
                raise ValueError(f"{self.component_name} needs a batch (B, ...), got a scalar")
            return
        if x.dim() < 1 or tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(
                f"{self.component_name} has event_shape {self.event_shape} but got {what} of "
                f"shape {tuple(x.shape[1:]) if x.dim() else ()} per sample (batch "
                f"{tuple(x.shape)}); set {self.component_name}.event_shape = "
                f"{tuple(x.shape[1:])} to match the data"
            )

    # Subclasses write these two -----------------------------------------------------------

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        """(z, log|det ∂z/∂x|): data to base."""
        raise NotImplementedError

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(x, log|det ∂x/∂z|): base to data."""
        raise NotImplementedError

    # What every flow gets ------------------------------------------------------------------

    def log_prob(self, x: Tensor) -> Tensor:
        """log λ(x) = log N(forward(x); 0, I) + log|det ∂z/∂x|, shape (B,)."""
        z, logdet = self(x)
        return standard_normal_log_prob(z) + logdet

    def base_noise(
        self, n: int, *, generator: torch.Generator | None = None, like: Tensor | None = None
    ) -> Tensor:
        """z ~ N(0, I) of shape (n, *event_shape), from `generator` (global RNG when None),
        on the flow's device and dtype; with `like`, of `like`'s sample shape, device and
        dtype (what a kernel proposing for a batch of chains asks for)."""
        reference = like if like is not None else self._reference_tensor()
        shape = tuple(like.shape[1:]) if like is not None else self._known_shape("sample(n)")
        return torch.randn(
            (n, *shape),
            generator=generator,
            device=reference.device,
            dtype=reference.dtype,
        )

    def _reference_tensor(self) -> Tensor:
        for tensor in (*self.parameters(), *self.buffers()):
            if tensor.is_floating_point():
                return tensor
        return torch.empty(0)

    def sample_with_latents(
        self, n: int, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """(x, z): `n` samples and the base points they came from."""
        z = self.base_noise(n, generator=generator)
        x, _ = self.inverse(z)
        return x, z

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """`n` samples x = T(z), z ~ N(0, I) from `generator`."""
        return self.sample_with_latents(n, generator=generator)[0]

    def training_points(self, round: Round) -> Tensor:
        """What the forward-KL loss fits, by `fit_on`."""
        if self.fit_on == "data":
            return round.x_data
        samples = round.result.x.detach()
        if self.fit_on == "samples":
            return samples
        return torch.cat([round.x_data, samples.to(round.x_data.dtype)])

    def freeze(self) -> FlowModule:
        """Stop learning: parameters fixed, `learn` only reports the losses (e.g. a fixed
        proposal, as in flow-MCMC's exact tests). Returns self, for chaining."""
        self.trainable = False
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        return self

    def learn(self, round: Round) -> dict[str, Tensor]:
        """One optimizer step on `loss` (a frozen flow only evaluates it, for the logs)."""
        if self.trainable:
            return super().learn(round)
        with torch.no_grad():
            return {name: value.detach() for name, value in self.loss(round).items()}

    def loss(self, round: Round) -> dict[str, Tensor]:
        """Forward KL (−mean log λ on `fit_on`), mixed with reverse KL if configured."""
        points = self.training_points(round)
        self.check_input(points, f"{self.fit_on} points")
        forward_kl = -self.log_prob(points).mean()
        losses = {"forward_kl": forward_kl}
        if self.reverse_kl_weight > 0:
            if round.energy is None:
                raise ValueError(
                    f"{self.component_name}: reverse_kl_weight > 0 needs the round's energy "
                    f"(Round.energy), which this trainer does not set"
                )
            z = self.base_noise(points.shape[0], like=points)
            x, logdet = self.inverse(z)
            reverse_kl = (round.energy(x) - logdet).mean()
            losses["reverse_kl"] = reverse_kl
            weight = self.reverse_kl_weight
            losses["loss"] = (1 - weight) * forward_kl + weight * reverse_kl
        else:
            losses["loss"] = forward_kl
        return losses
