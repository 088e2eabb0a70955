r"""attrs validators shared by every component's settings, with messages a user can act on."""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["one_of"]


@attrs.frozen(repr=False)
class _OneOf:
    choices: tuple[Any, ...]

    def __call__(self, instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value not in self.choices:
            raise ValueError(f"{attribute.name} must be one of {self.choices!r}, got {value!r}")

    def __repr__(self) -> str:
        return f"<one_of validator with choices {self.choices!r}>"


def one_of(*choices: Any) -> _OneOf:
    """An attrs validator: the value is one of `choices` (attrs' `in_`, with a plain message).

    attrs' own `in_` raises a ValueError whose str() is a tuple holding the whole `Attribute`;
    this one says "<setting> must be one of (...), got <value>" and nothing else. Through a
    gin config the CLI prefixes the configurable, e.g. `experiment.on_divergence`.

    Example:
        >>> @attrs.define
        ... class Run:
        ...     on_divergence: str = attrs.field(validator=one_of("stop", "rollback"))
        >>> Run(on_divergence="rollbak")
        Traceback (most recent call last):
        ...
        ValueError: on_divergence must be one of ('stop', 'rollback'), got 'rollbak'
    """
    if not choices:
        raise ValueError("one_of needs at least one choice")
    return _OneOf(tuple(choices))
