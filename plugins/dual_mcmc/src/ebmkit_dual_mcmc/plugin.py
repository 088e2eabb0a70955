r"""The Dual-MCMC plugin's hooks: the kinds `generator` and `inference_model`, their nets,
`initializers.Generator` and `trainers.DualMCMC`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import ebmkit
from ebmkit import Registry

if TYPE_CHECKING:
    from ebmkit.commands import CommandTable


@ebmkit.hookimpl
def ebmkit_add_kinds(registry: Registry) -> None:
    """Two kinds: generators g(z) (gin ``generators``) and inference models q(z|x)
    (gin ``inference_models``)."""
    registry.add_kind(
        "generator", plural="generators", doc="generators x = g(z), z ~ N(0, I) (Dual-MCMC)"
    )
    registry.add_kind(
        "inference_model",
        plural="inference_models",
        doc="inference models q(z|x) = N(μ(x), diag exp ℓ(x)) (Dual-MCMC)",
    )


@ebmkit.hookimpl
def ebmkit_register(registry: Registry) -> None:
    """`initializers.Generator`, `trainers.DualMCMC`, the networks (see
    `ebmkit_dual_mcmc.networks`) and the paper's energy `energies.DualResNet`."""
    from ebmkit_dual_mcmc.energy import register_energies
    from ebmkit_dual_mcmc.initializer import Generator
    from ebmkit_dual_mcmc.networks import register_networks
    from ebmkit_dual_mcmc.trainer import DualMCMC

    registry.add("initializer", "Generator", Generator)
    registry.add("trainer", "DualMCMC", DualMCMC)
    register_networks(registry)
    register_energies(registry)


@ebmkit.hookimpl
def ebmkit_add_eval_tasks(tasks: CommandTable) -> None:
    """`ebmkit eval reconstruct` (see `ebmkit_dual_mcmc.reconstruct`)."""
    from ebmkit_dual_mcmc import reconstruct

    tasks.add(
        "reconstruct",
        help="reconstruction MSE of a Dual-MCMC run: inference, inference + L posterior "
        "steps, noise + L steps",
        configure_parser=reconstruct.configure_parser,
        run=reconstruct.run,
    )
