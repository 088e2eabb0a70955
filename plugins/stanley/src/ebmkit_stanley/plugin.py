r"""The STANLEY plugin's hooks: registers the sampler `samplers.Stanley` and the energy
`energies.ToyNet` (the authors' toy network)."""

from __future__ import annotations

import ebmkit
from ebmkit import Registry
from ebmkit_stanley.kernel import Stanley
from ebmkit_stanley.toynet import ToyNet


@ebmkit.hookimpl
def ebmkit_register(registry: Registry) -> None:
    """Register `Stanley` as sampler "Stanley" (gin: ``samplers.Stanley``) and `ToyNet` as
    energy "ToyNet" (gin: ``energies.ToyNet``)."""
    registry.add("sampler", "Stanley", Stanley)
    registry.add("energy", "ToyNet", ToyNet)
