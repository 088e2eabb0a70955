r"""docs/troubleshooting.md covers every message of ebmkit's error types, and only those.

The scan and the matching live in scripts/troubleshooting_gaps.py (which prints the gaps);
these tests run it on the real tree and on small planted sources, so that a scanner which
found nothing, or a matcher which matched everything, fails here too.
"""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_gaps_module():
    spec = importlib.util.spec_from_file_location(
        "troubleshooting_gaps", ROOT / "scripts" / "troubleshooting_gaps.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # attrs resolves the classes' annotations through it
    spec.loader.exec_module(module)
    return module


gaps = _load_gaps_module()


@pytest.fixture(scope="module")
def messages():
    return gaps.code_messages()


def test_catalogue_covers_every_message_and_nothing_else(messages):
    entries = gaps.catalogue_entries()
    found = gaps.find_gaps(messages, entries)
    assert not found.missing and not found.stale, (
        found.report() + "\nadd or fix the entries in docs/troubleshooting.md "
        "(.venv/bin/python scripts/troubleshooting_gaps.py lists the gaps)"
    )


def test_scan_finds_the_messages_of_every_kind_of_site(messages):
    """Known messages, one per way a message is built, are found with their templates."""
    templates = {(m.path, m.template) for m in messages}
    expected = [
        ("ebmkit/checkpoint/files.py", "checkpoint {} does not exist"),  # f-string
        ("ebmkit/cli.py", "-p takes no:NAME to block a plugin, got -p {}"),  # the CLI's own
        ("ebmkit/config.py", "{}: {}; {}"),  # opaque parts: kept whole
    ]
    for path, template in expected:
        assert (path, template) in templates, f"{path}: {template!r} not found"
    by_start = [m.template for m in messages]
    # a variable built before the raise, a helper's return value, a `+` concatenation
    assert any(t.startswith("dataset {} not found under root") for t in by_start)
    assert any(t.startswith("unknown {} {}; registered {}s:") for t in by_start)
    assert any(t.endswith("; if that run has ended, delete {} and start again") for t in by_start)


def _tree(tmp_path: Path, source: str) -> Path:
    folder = tmp_path / "pkg"
    folder.mkdir()
    (folder / "errors.py").write_text(
        "class EbmkitError(Exception): ...\nclass ConfigError(EbmkitError): ...\n"
        "class Other(Exception): ...\n"
    )
    (folder / "code.py").write_text(textwrap.dedent(source))
    return folder


def test_scan_follows_subclasses_variables_helpers_and_branches(tmp_path):
    folder = _tree(
        tmp_path,
        """
        from pkg.errors import ConfigError, EbmkitError, Other

        class LockError(ConfigError): ...

        def _why(name):
            if name:
                return f"no such name {name}"
            return "empty name"

        def check(value, name):
            if value < 0:
                raise ConfigError(f"value must be >= 0, got {value}")
            message = f"{value} is odd"
            message += "; use an even one"
            if value % 2:
                raise EbmkitError(message)
            raise LockError(_why(name) + " (locked)")

        def unrelated():
            raise Other("not ours")
            raise ValueError("not ours either")
        """,
    )
    found = gaps.code_messages([folder], root=tmp_path)
    assert sorted(m.template for m in found) == [
        "empty name (locked)",
        "no such name {} (locked)",
        "value must be >= 0, got {}",
        "{} is odd",
    ]
    assert {m.error for m in found} == {"ConfigError", "EbmkitError", "LockError"}
    assert all(m.path == "pkg/code.py" for m in found)


def test_matching_by_prefix_and_exact_for_wordless_entries(tmp_path):
    folder = _tree(
        tmp_path,
        """
        from pkg.errors import EbmkitError

        def f(a, b, c):
            raise EbmkitError(f"checkpoint {a} cannot be read ({b}); remove it")

        def g(a, b):
            raise EbmkitError(f"{a}: {b}")
        """,
    )
    messages = gaps.code_messages([folder], root=tmp_path)
    page = tmp_path / "page.md"
    page.write_text(
        "#### `checkpoint {path} cannot be read…`\n"
        "#### `{a}: {b}`\n"
        "#### `{x}`\n"  # wordless and not a whole template: covers nothing
        "#### `checkpoint {path} is gone`\n"  # matches no message
        "### `not an entry: level 3`\n"
    )
    entries = gaps.catalogue_entries(page)
    assert [e.line for e in entries] == [1, 2, 3, 4]
    found = gaps.find_gaps(messages, entries)
    assert found.missing == []
    assert [e.text for e in found.stale] == ["{x}", "checkpoint {path} is gone"]
    page.write_text("#### `checkpoint {path} cannot be read…`\n")
    found = gaps.find_gaps(messages, gaps.catalogue_entries(page))
    assert [m.template for m in found.missing] == ["{}: {}"]
    assert "lack a catalogue entry" in found.report()


@pytest.mark.parametrize(
    ("entry", "template", "covers"),
    [
        ("checkpoint {path} does not exist", "checkpoint {} does not exist", True),
        ("checkpoint {a}   does…", "checkpoint {} does not exist", True),
        ("checkpoint {a} exists", "checkpoint {} does not exist", False),
        ("{where}: {reason}; {fix}", "{}: {}; {}", True),
        ("{where}: {reason}", "{}: {}; {}", False),
        ("round {r}: …", "round {}: non-finite {}", True),
    ],
)
def test_entry_covers(entry, template, covers):
    message = gaps.Message(template, "EbmkitError", "x.py", 1)
    assert gaps.Entry(entry, 1).covers(message) is covers
