r"""The flow-MCMC plugin's hooks: registers the samplers `samplers.FlowIMH`, `samplers.ISIR`,
`samplers.FlowMCMC` and `samplers.NeutraMCMC`."""

from __future__ import annotations

import ebmkit
from ebmkit import Registry
from ebmkit_flow_mcmc.flow_mcmc import FlowMCMC
from ebmkit_flow_mcmc.imh import FlowIMH
from ebmkit_flow_mcmc.isir import ISIR
from ebmkit_flow_mcmc.neutra import NeutraMCMC


@ebmkit.hookimpl
def ebmkit_register(registry: Registry) -> None:
    """Register the four samplers (gin: ``samplers.FlowIMH``, ``samplers.ISIR``,
    ``samplers.FlowMCMC``, ``samplers.NeutraMCMC``)."""
    registry.add("sampler", "FlowIMH", FlowIMH)
    registry.add("sampler", "ISIR", ISIR)
    registry.add("sampler", "FlowMCMC", FlowMCMC)
    registry.add("sampler", "NeutraMCMC", NeutraMCMC)
