r"""Find every Learnable among a trainer's components, by path, each object once."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import attrs
from torch import Tensor, nn

from ebmkit.errors import ConfigError
from ebmkit.protocols import Learnable

__all__ = ["component_roots", "find_learnables", "is_learnable_candidate"]

_LEAVES = (Tensor, str, bytes, int, float, complex, bool, type(None), type)


def is_learnable_candidate(value: Any) -> bool:
    """Anything with a `learn` method counts as a Learnable (and must then be saveable)."""
    return not isinstance(value, type) and callable(getattr(value, "learn", None))


def _children(value: Any) -> Iterator[tuple[str, Any]]:
    """The named parts discovery looks into: attrs fields, module children, container items."""
    if attrs.has(type(value)):
        for field in attrs.fields(type(value)):
            yield field.name, getattr(value, field.name, None)
    if isinstance(value, nn.Module):
        yield from value.named_children()
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield str(key), item
    elif isinstance(value, list | tuple):
        for number, item in enumerate(value):
            yield str(number), item


def component_roots(
    initializer: Any, sampler: Any, learnables: Sequence[Any] = ()
) -> dict[str, Any]:
    """A trainer's roots for `find_learnables`, in path order (a shared one's first path wins).

    The contrastive trainer and `ebmkit sample` both use it, so a Learnable has the same
    checkpoint path in both.
    """
    return {"initializer": initializer, "sampler": sampler, "learnables": list(learnables)}


def find_learnables(roots: Mapping[str, Any], skip: Iterable[Any] = ()) -> dict[str, Learnable]:
    """Every Learnable reachable from `roots`, keyed by its first path, each object once.

    Discovery recurses through attrs fields, `nn.Module` children, lists, tuples and dicts,
    depth first in the roots' order; an object met again (one flow serving as initializer
    and as a sampler's mirror map) keeps its first path and learns once. Objects in `skip`
    (the energy, trained by the trainer itself) are not entered.

    Arguments:
        roots: name → component, e.g. ``{"initializer": ..., "sampler": ...}``.
        skip: objects not to enter.

    Returns:
        path → Learnable, e.g. ``{"initializer.flow": flow, "sampler.local.mirror": icnn}``.

    Raises:
        ConfigError: a component with `learn` but no `state_dict`/`load_state_dict`: it
            could not be checkpointed, so a resumed run would silently restart it.

    Example:
        >>> import torch
        >>> from ebmkit.learnables import LearnableModule
        >>> class Scale(LearnableModule):
        ...     def __init__(self):
        ...         super().__init__(learning_rate=0.1)
        ...         self.log_scale = torch.nn.Parameter(torch.zeros(()))
        >>> scale = Scale()
        >>> sorted(find_learnables({"initializer": {"flow": scale}, "sampler": [scale]}))
        ['initializer.flow']
    """
    seen = {id(value) for value in skip}
    found: dict[str, Learnable] = {}

    def visit(value: Any, path: str) -> None:
        if isinstance(value, _LEAVES) or id(value) in seen:
            return
        seen.add(id(value))
        if is_learnable_candidate(value):
            if not isinstance(value, Learnable):
                raise ConfigError(
                    f"{path} ({type(value).__name__}) has learn() but no state_dict() / "
                    f"load_state_dict(), so checkpoints could not save it and a resumed run "
                    f"would restart it from scratch; give it both (or derive it from "
                    f"ebmkit.LearnableModule)"
                )
            found[path] = value
        for name, child in _children(value):
            visit(child, f"{path}.{name}")

    for name, root in roots.items():
        visit(root, name)
    return found
