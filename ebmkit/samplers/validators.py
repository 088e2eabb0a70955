r"""attrs validators shared by the samplers' settings (one definition, one message)."""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["check_clamp"]


def check_clamp(
    instance: Any, attribute: attrs.Attribute, value: tuple[float, float] | None
) -> None:
    """A `clamp` box is None or (low, high) with low < high; the error names the setting."""
    if value is not None and not (len(value) == 2 and value[0] < value[1]):
        raise ValueError(
            f"samplers.{type(instance).__name__}.{attribute.name} must be (low, high) with "
            f"low < high, got {value}"
        )
