r"""The STANLEY plugin's hooks: registers the sampler `samplers.Stanley`."""

from __future__ import annotations

import ebmkit
from ebmkit import Registry
from ebmkit_stanley.kernel import Stanley


@ebmkit.hookimpl
def ebmkit_register(registry: Registry) -> None:
    """Register `Stanley` as sampler "Stanley" (gin: ``samplers.Stanley``)."""
    registry.add("sampler", "Stanley", Stanley)
