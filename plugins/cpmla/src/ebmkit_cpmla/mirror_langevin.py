r"""(being written)"""

from __future__ import annotations

from ebmkit import Registry


def register_samplers(registry: Registry) -> None:
    """Register this module's components."""
