r"""The model's density: one hook through which metrics and pictures read what a run learned.

A run trains an energy E, but the density it stands for is not always exp(−E): a tilted EBM
(flow-MCMC with ``tilt=True``) is p ∝ λ(x)·exp(−E(x)), so its energy is E − log λ; a flow-only
baseline is the flow's density q, energy −log q; a model sampled at temperature T is exp(−E/T).
Every place that scores the model (toy metrics, the density picture, the final summary) reads
the *model energy* through `resolve_model_energy` (a trainer's ``model_energy()``), never the
trained energy directly.

Precedence, first match wins:

1. the trainer's ``model_density``: a callable energy → energy (``Contrastive(model_density=
   Tempered(temperature=T))``, or in gin any configurable returning one, e.g.
   ``trainers.Contrastive.model_density = @my_density()``), which overrides everything;
2. the sampler's ``model_energy(energy)``: the density the chains target;
3. the initializer's ``model_energy(energy)``;
4. the trained energy itself (the default: metrics exactly as without the hook).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import attrs
from torch import Tensor, nn

__all__ = [
    "DeclaresModelEnergy",
    "FlowDensity",
    "ModelEnergy",
    "Tempered",
    "model_energy_of",
    "resolve_model_energy",
]

EnergyFunction = Callable[[Tensor], Tensor]
"""Anything mapping a batch (B, ...) to energies (B,): a plain callable or an nn.Module."""


@runtime_checkable
class DeclaresModelEnergy(Protocol):
    """A component (sampler or initializer) that says which density the run's model is.

    ``model_energy(energy)`` returns the energy of the model density given the trained energy,
    e.g. ``lambda x: energy(x) - flow.log_prob(x)`` for a tilted EBM. It is called when the
    metrics or pictures are made (not every step) and evaluated under ``torch.no_grad``.
    """

    def model_energy(self, energy: nn.Module) -> EnergyFunction:
        """The energy of the model density, given the trained `energy`."""
        ...


class ModelEnergy(nn.Module):
    """An energy computed from the trained one: ``forward(x) = function(x)``.

    Wrapping keeps the trained energy as a child module, so metrics find the device and dtype
    of its parameters (and ``.eval()`` reaches it) even when `function` is a plain closure.
    Made on demand by `resolve_model_energy`, never stored in a trainer or a Learnable.

    Arguments:
        function: maps (B, ...) to energies (B,).
        energy: the trained energy `function` is derived from.

    Example:
        >>> import torch
        >>> base = nn.Linear(2, 1)
        >>> doubled = ModelEnergy(lambda x: 2 * base(x).squeeze(-1), base)
        >>> doubled(torch.zeros(3, 2)).shape
        torch.Size([3])
    """

    def __init__(self, function: EnergyFunction, energy: nn.Module) -> None:
        super().__init__()
        self.function = function
        self.energy = energy

    def forward(self, x: Tensor) -> Tensor:
        """Energies (B,) of the model density at x."""
        return self.function(x)


def _validate_temperature(_instance: Any, attribute: attrs.Attribute, value: float) -> None:
    if isinstance(value, bool) or not (
        isinstance(value, int | float) and math.isfinite(value) and value > 0
    ):
        raise ValueError(f"{attribute.name} must be a finite number > 0, got {value!r}")


@attrs.frozen(kw_only=True)
class Tempered:
    """Model density exp(−E/T): the energy divided by a temperature.

    A Langevin chain x − h∇E + σξ samples exp(−E/T) with T = σ²/(2h); an energy trained with
    such chains is scored at that T by binding this as the trainer's ``model_density``.

    Arguments:
        temperature: T > 0.

    Example:
        >>> import torch
        >>> energy = nn.Linear(2, 1)
        >>> cold = Tempered(temperature=0.5)(energy)
        >>> x = torch.ones(4, 2)
        >>> torch.allclose(cold(x), 2 * energy(x).squeeze(-1))
        True
    """

    temperature: float = attrs.field(validator=_validate_temperature)

    def __call__(self, energy: nn.Module) -> ModelEnergy:
        """The energy x ↦ E(x)/T (an (B, 1) output is flattened to (B,))."""
        temperature = float(self.temperature)
        return ModelEnergy(lambda x: energy(x).reshape(x.shape[0]) / temperature, energy)


@attrs.frozen(kw_only=True, eq=False)
class FlowDensity:
    """Model density q of a flow, energy −log q(x): a flow-only baseline (the EBM ignored).

    Arguments:
        flow: anything with ``log_prob(x) -> (B,)`` (an `ebmkit.flows` flow).

    Example:
        >>> import torch
        >>> class Normal(nn.Module):
        ...     def log_prob(self, x):
        ...         return -0.5 * (x * x).sum(-1)
        >>> FlowDensity(flow=Normal())(nn.Linear(2, 1))(torch.zeros(2, 2))
        tensor([0., 0.])
    """

    flow: Any

    def __attrs_post_init__(self) -> None:
        if not callable(getattr(self.flow, "log_prob", None)):
            raise TypeError(
                f"FlowDensity.flow must have log_prob(x), got a {type(self.flow).__name__}; "
                f"bind a flow, e.g. FlowDensity.flow = @flows.Affine()"
            )

    def __call__(self, energy: nn.Module) -> EnergyFunction:
        """The energy x ↦ −log q(x); the flow's own parameters give the device."""
        flow = self.flow
        if isinstance(flow, nn.Module):
            return ModelEnergy(lambda x: -flow.log_prob(x), flow)
        return ModelEnergy(lambda x: -flow.log_prob(x), energy)


def _checked(result: Any, source: str) -> EnergyFunction:
    """`result` as an energy: an nn.Module as is, a callable wrapped later; else TypeError."""
    if not callable(result):
        raise TypeError(
            f"{source} returned a {type(result).__name__}, not an energy (a callable mapping "
            f"x to energies); return e.g. lambda x: energy(x) - flow.log_prob(x)"
        )
    return result


def resolve_model_energy(
    energy: nn.Module,
    *,
    model_density: Callable[[nn.Module], EnergyFunction] | None = None,
    components: Sequence[tuple[str, Any]] = (),
) -> EnergyFunction:
    """The energy of the model density, by the precedence in this module's docstring.

    Arguments:
        energy: the trained energy.
        model_density: a callable energy → energy that overrides the components (or None).
        components: (name, component) pairs in precedence order (sampler first, then the
            initializer); the first with a ``model_energy`` method decides.
    Returns:
        `energy` itself when nothing overrides it; otherwise the declared energy, an
        nn.Module (a plain callable comes back wrapped in `ModelEnergy`, so its device and
        dtype are the trained energy's).

    Example:
        >>> import torch
        >>> energy = nn.Linear(2, 1)
        >>> resolve_model_energy(energy) is energy
        True
        >>> class Tilted:
        ...     def model_energy(self, energy):
        ...         return lambda x: energy(x).squeeze(-1) - 1.0
        >>> tilted = resolve_model_energy(energy, components=[("sampler", Tilted())])
        >>> hot = resolve_model_energy(
        ...     energy, model_density=Tempered(temperature=2.0), components=[("s", Tilted())]
        ... )
        >>> x = torch.zeros(1, 2)
        >>> (tilted(x) - energy(x)).item(), (hot(x) - energy(x) / 2).item()
        (-1.0, 0.0)
    """
    declared: EnergyFunction | None = None
    if model_density is not None:
        declared = _checked(model_density(energy), "the trainer's model_density")
    else:
        for name, component in components:
            if isinstance(component, DeclaresModelEnergy):
                source = f"the {name}'s model_energy ({type(component).__name__})"
                declared = _checked(component.model_energy(energy), source)
                break
    if declared is None or declared is energy:
        return energy
    return declared if isinstance(declared, nn.Module) else ModelEnergy(declared, energy)


def model_energy_of(trainer: Any) -> EnergyFunction:
    """The energy a run scores: ``trainer.model_energy()`` when it has one, else its energy.

    A trainer outside ebmkit that only has ``energy`` is scored on it, as before the hook.
    """
    method = getattr(trainer, "model_energy", None)
    return method() if callable(method) else trainer.energy
