"""Fixtures shared by several test modules; plain helpers live in tests/helpers.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import gin
from ebmkit.registry import AUTOLOAD_ENV, reset_registry


# Not autouse: a module opts in with `pytestmark = pytest.mark.usefixtures("builtin_registry")`.
@pytest.fixture
def builtin_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Plugin autoload on (its variable unset); gin and the registry reset after the test."""
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    yield
    gin.clear_config()
    reset_registry()
