r"""The plugin's one hook: registers `HMC` as sampler "HMC" (gin: ``samplers.HMC``)."""

from __future__ import annotations

import ebmkit
from ebmkit import Registry

from ebmkit_hmc.kernel import HMC


@ebmkit.hookimpl
def ebmkit_register(registry: Registry) -> None:
    """Add `HMC` to the sampler kind; `ebmkit plugins` lists it under this distribution."""
    registry.add("sampler", "HMC", HMC)
