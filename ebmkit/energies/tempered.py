r"""A tempered energy E′(x) = E(x)/T around any energy network."""

from __future__ import annotations

import math

from torch import Tensor, nn

__all__ = ["TemperedEnergy"]


class TemperedEnergy(nn.Module):
    """E′(x) = E(x)/T: the density exp(−E/T), as an energy any sampler and trainer use as is.

    The network's parameters are E′'s (a checkpoint holds ``network.*``; T is a setting, not
    a parameter or buffer). Every sampler steps, and every MH kernel accepts, on E′, never on
    E; the contrastive loss mean E′(x_data) − mean E′(x_model) is the loss on E divided by T;
    and the density a run is scored on (`Contrastive.model_energy()`, by default the
    trainer's energy) is exp(−E′) = exp(−E/T), with no `model_density` binding.

    **The (δ, η) Langevin form is standard Langevin on E′.** Research code (Dual-MCMC's
    reference among it) writes y ← y − (δ²/2)∇E(y) + η·ε with η ≪ δ. Its stationary law is
    exp(−E/T) with T = (η/δ)², and it divides the EBM loss by T. That is exactly standard
    Langevin on E′ = E/T with step s = η²/2 and noise sqrt(2s) = η:
    y − (η²/2)·∇E/T + η·ε = y − (δ²/2)∇E + η·ε. So ``Tempered(network=E,
    temperature=(η/δ)**2)`` with ``samplers.Langevin(step_size=η**2/2)`` is that form, and
    with MALA, STANLEY or a mirror Langevin it is the same temperature, MH-corrected or
    preconditioned on E′.

    Arguments:
        network: the energy E, an nn.Module mapping (B, ...) to energies (B,).
        temperature: T > 0, finite.

    References:
        Cui & Han (2023), Learning Energy-based Model via Dual-MCMC Teaching (the tempered
        (δ, η) Langevin of its reference code).

    Example:
        >>> import torch
        >>> from ebmkit.energies.mlp import MLPEnergy
        >>> network = MLPEnergy(in_features=2, hidden=(8,))
        >>> cold = TemperedEnergy(network=network, temperature=0.25)
        >>> x = torch.randn(3, 2)
        >>> torch.allclose(cold(x), network(x) / 0.25)
        True
        >>> sorted(cold.state_dict()) == sorted(f"network.{k}" for k in network.state_dict())
        True
    """

    def __init__(self, *, network: nn.Module, temperature: float) -> None:
        super().__init__()
        if not isinstance(network, nn.Module):
            raise TypeError(
                f"energies.Tempered.network must be an energy network (an nn.Module), got a "
                f"{type(network).__name__}; bind e.g. energies.Tempered.network = "
                f"@energies.MLP()"
            )
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, int | float)
            or not math.isfinite(temperature)
            or not temperature > 0
        ):
            raise ValueError(
                f"energies.Tempered.temperature must be a finite number > 0, got "
                f"{temperature!r}; for the (δ, η) Langevin form bind T = (η/δ)**2"
            )
        self.network = network
        self.temperature = float(temperature)

    def forward(self, x: Tensor) -> Tensor:
        """E(x)/T, shape (B,)."""
        return self.network(x) / self.temperature

    def extra_repr(self) -> str:
        return f"temperature={self.temperature:g}"
