r"""(being written)"""

from __future__ import annotations

from ebmkit import Registry


def register_flows(registry: Registry) -> None:
    """Register this module's components."""
