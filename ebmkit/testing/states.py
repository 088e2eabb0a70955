r"""Compare nested states (checkpoints, state dicts) bit for bit, naming the first difference."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["first_difference"]


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit // 2]}...{text[-limit // 2 :]}"


def _len(value: Any) -> str:
    return str(len(value)) if isinstance(value, list | tuple) else "-"


def first_difference(a: Any, b: Any, path: str = "", *, nan_equal: bool = False) -> str | None:
    """The first key path where two nested states differ, or None if they are identical.

    Tensors must match in type, dtype, shape and every bit (torch.equal; with `nan_equal`, NaN
    entries at the same places count as equal, e.g. a "not set yet" NaN in a bank); dicts in
    their keys, in order; lists and tuples in type and length; everything else in type and ==.

    Example:
        >>> first_difference({"w": torch.zeros(2)}, {"w": torch.ones(2)})
        "['w']: tensor values differ"
    """
    where = path or "<root>"
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return f"{where}: tensor vs {type(b if isinstance(a, torch.Tensor) else a).__name__}"
        if a.dtype != b.dtype or a.shape != b.shape:
            return f"{where}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
        if nan_equal and a.is_floating_point():
            if not torch.equal(a.isnan(), b.isnan()):
                return f"{where}: NaN at different places"
            a, b = a.nan_to_num(nan=0.0), b.nan_to_num(nan=0.0)
        return None if torch.equal(a, b) else f"{where}: tensor values differ"
    if isinstance(a, dict) or isinstance(b, dict):
        if not (isinstance(a, dict) and isinstance(b, dict)) or list(a) != list(b):
            keys = lambda x: list(x) if isinstance(x, dict) else type(x).__name__  # noqa: E731
            return f"{where}: keys {keys(a)} vs {keys(b)}"
        for key in a:
            found = first_difference(a[key], b[key], f"{path}[{key!r}]", nan_equal=nan_equal)
            if found is not None:
                return found
        return None
    if isinstance(a, list | tuple) or isinstance(b, list | tuple):
        if type(a) is not type(b) or len(a) != len(b):
            return f"{where}: {type(a).__name__} of {_len(a)} vs {type(b).__name__} of {_len(b)}"
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            found = first_difference(x, y, f"{path}[{index}]", nan_equal=nan_equal)
            if found is not None:
                return found
        return None
    return None if type(a) is type(b) and a == b else f"{where}: {_short(a)} vs {_short(b)}"
