r"""Check docs/troubleshooting.md against the error messages in the code; print the gaps.

The messages are those of ebmkit's own error types (`EbmkitError` and every class derived from
it in the scanned folders), found by reading the source with `ast`, never by importing it: every
call that builds one of them, its message argument resolved to a template (an f-string's
placeholders written `{}`; a local variable, a `+` concatenation, a conditional or a helper
function of the project that returns the message followed to the strings it can be).

The catalogue's entries are the level-4 headings of docs/troubleshooting.md whose whole text is
one code span, e.g. "#### `checkpoint {path} does not exist`". An entry covers a message when
the entry, with its `{name}` placeholders written `{}` and a trailing "…" dropped, is the start of
the message's template; an entry without a word of three letters (e.g. `{where}: {reason}`)
must equal the whole template instead, so that it cannot cover everything.

    .venv/bin/python scripts/troubleshooting_gaps.py     # exit 1 and the gaps, or exit 0
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import attrs

ROOT = Path(__file__).resolve().parents[1]
CATALOGUE = ROOT / "docs" / "troubleshooting.md"
BASE_ERROR = "EbmkitError"
_ENTRY = re.compile(r"^#### (`+) ?(.+?) ?\1\s*$")
_PLACEHOLDER = re.compile(r"\{[^{}]*\}")
_WORD = re.compile(r"[A-Za-z]{3,}")
_PERCENT = re.compile(r"%[-+ #0]*\d*(?:\.\d+)?[sdrfgex]")
_MAX_DEPTH = 4
_CLASS = re.compile(r"^\s*class\s+(\w+)\s*\(([^)]*)\)", re.MULTILINE)


@attrs.frozen
class Message:
    """One message template an error of the project can carry, and where it is built."""

    template: str
    error: str
    path: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


@attrs.frozen
class Entry:
    """One catalogue heading: its normalized template and its line in the page."""

    text: str
    line: int

    @property
    def key(self) -> str:
        return normalize(self.text).removesuffix("…").rstrip()

    @property
    def has_word(self) -> bool:
        return bool(_WORD.search(_PLACEHOLDER.sub("", self.key)))

    def covers(self, message: Message) -> bool:
        template = normalize(message.template)
        return template.startswith(self.key) if self.has_word else template == self.key


@attrs.frozen
class Gaps:
    """What the check found: messages without an entry, entries without a message."""

    missing: list[Message]
    stale: list[Entry]

    def report(self) -> str:
        lines = []
        if self.missing:
            lines.append(f"{len(self.missing)} message(s) in the code lack a catalogue entry:")
            lines += [f"  {m.where} {m.error}: {m.template}" for m in self.missing]
        if self.stale:
            lines.append(f"{len(self.stale)} catalogue entry(ies) match no message in the code:")
            lines += [f"  {CATALOGUE.name}:{e.line}: {e.text}" for e in self.stale]
        return "\n".join(lines)


def normalize(template: str) -> str:
    """`{anything}` as `{}`, runs of white space as one space."""
    return " ".join(_PLACEHOLDER.sub("{}", template).split())


def source_folders(root: Path = ROOT) -> list[Path]:
    """ebmkit/ and every plugin's src/: the code whose errors `ebmkit` can print."""
    return [root / "ebmkit", *sorted((root / "plugins").glob("*/src"))]


class _Module:
    """A parsed source file: its classes, functions and calls, found in one walk."""

    def __init__(self, path: Path, root: Path, text: str) -> None:
        self.path = path.relative_to(root).as_posix()
        tree = ast.parse(text, filename=str(path))
        self.bases: dict[str, set[str]] = {}
        self.functions: dict[str, list[ast.FunctionDef]] = {}
        self.calls: list[tuple[ast.Call, ast.FunctionDef | None]] = []
        stack: list[tuple[ast.AST, ast.FunctionDef | None]] = [(tree, None)]
        while stack:
            node, function = stack.pop()
            if isinstance(node, ast.ClassDef):
                names = {_name(base) for base in node.bases}
                self.bases.setdefault(node.name, set()).update(names - {None})
            elif isinstance(node, ast.FunctionDef):
                self.functions.setdefault(node.name, []).append(node)
                function = node
            elif isinstance(node, ast.Call):
                self.calls.append((node, function))
            stack.extend((child, function) for child in ast.iter_child_nodes(node))


class _Scanner:
    """Finds the project's error types and the message templates their calls can carry."""

    def __init__(self, folders: Iterable[Path], root: Path) -> None:
        # Parsing is most of the cost: read every file, parse only those that build an error
        # or define a function a message comes from (found by name, parsed on demand).
        self.root = root
        self.texts = {p: p.read_text(encoding="utf-8") for f in folders for p in f.rglob("*.py")}
        self.parsed: dict[Path, _Module] = {}
        self.errors = self._error_types()
        called = re.compile(r"\b(?:" + "|".join(map(re.escape, sorted(self.errors))) + r")\(")
        self.modules = [
            self._module(p) for p in sorted(self.texts) if called.search(self.texts[p])
        ]

    def _module(self, path: Path) -> _Module:
        if path not in self.parsed:
            self.parsed[path] = _Module(path, self.root, self.texts[path])
        return self.parsed[path]

    def _error_types(self) -> set[str]:
        """EbmkitError and every class derived from it, read from the class statements."""
        bases: dict[str, set[str]] = {}
        for text in self.texts.values():
            for name, listed in _CLASS.findall(text):
                names = {b.strip().rpartition(".")[2] for b in listed.split(",")}
                bases.setdefault(name, set()).update(names - {""})
        found = {BASE_ERROR}
        while grown := {c for c, b in bases.items() if c not in found and b & found}:
            found |= grown
        return found

    def _defining(self, name: str) -> list[_Module]:
        """The modules that define a function `name` (parsed on demand)."""
        pattern = re.compile(rf"^\s*def {re.escape(name)}\(", re.MULTILINE)
        return [self._module(p) for p in sorted(self.texts) if pattern.search(self.texts[p])]

    def messages(self) -> list[Message]:
        found = []
        for module in self.modules:
            for node, function in module.calls:
                if _name(node.func) not in self.errors:
                    continue
                argument = _message_argument(node)
                if argument is None:
                    continue  # a bare `raise Error()`: nothing to catalogue
                for template in self._templates(argument, _Place(module, function), 0):
                    found.append(Message(template, _name(node.func), module.path, node.lineno))
        return sorted(set(found), key=lambda m: (m.path, m.line, m.template))

    def _templates(self, node: ast.expr, place: _Place, depth: int) -> list[str]:
        """Every template `node` can evaluate to; "{}" where it is not known statically."""
        if depth > _MAX_DEPTH:
            return ["{}"]
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node.value]
        if isinstance(node, ast.JoinedStr):
            return self._joined(node, place, depth)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            lefts = self._templates(node.left, place, depth + 1)
            rights = self._templates(node.right, place, depth + 1)
            return [left + right for left in lefts for right in rights]
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
            return [_PERCENT.sub("{}", t) for t in self._templates(node.left, place, depth + 1)]
        if isinstance(node, ast.IfExp):
            body = self._templates(node.body, place, depth + 1)
            return body + self._templates(node.orelse, place, depth + 1)
        if isinstance(node, ast.Name):
            return self._variable(node, place, depth)
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Attribute) and node.func.attr == "format":
                return self._templates(node.func.value, place, depth + 1)
            return self._returned(node, place, depth)
        return ["{}"]

    def _joined(self, node: ast.JoinedStr, place: _Place, depth: int) -> list[str]:
        """An f-string's template; a leading local variable is followed, the rest are `{}`."""
        heads = [""]
        for index, value in enumerate(node.values):
            if isinstance(value, ast.Constant):
                heads = [head + str(value.value) for head in heads]
            elif index == 0 and isinstance(value, ast.FormattedValue):
                leading = value.value
                is_name = isinstance(leading, ast.Name)
                heads = self._variable(leading, place, depth) if is_name else ["{}"]
            else:
                heads = [head + "{}" for head in heads]
        return heads

    def _variable(self, node: ast.Name, place: _Place, depth: int) -> list[str]:
        """The templates assigned to a local variable before `node`, in its function."""
        if place.function is None:
            return ["{}"]
        values = [
            statement.value
            for statement in ast.walk(place.function)
            if isinstance(statement, ast.Assign | ast.AnnAssign)
            and statement.value is not None
            and statement.lineno < node.lineno
            and any(_is_name(target, node.id) for target in _targets(statement))
        ]
        return [t for value in values for t in self._templates(value, place, depth + 1)] or ["{}"]

    def _returned(self, node: ast.Call, place: _Place, depth: int) -> list[str]:
        """The templates a project function returns (its own module first, else by name)."""
        name = _name(node.func)
        if name is None:
            return ["{}"]
        module = place.module
        candidates = [(module, f) for f in module.functions.get(name, [])] or [
            (other, f) for other in self._defining(name) for f in other.functions.get(name, [])
        ]
        if len(candidates) != 1:
            return ["{}"]
        owner, function = candidates[0]
        inner = _Place(owner, function)
        returned = [
            statement.value
            for statement in ast.walk(function)
            if isinstance(statement, ast.Return) and statement.value is not None
        ]
        templates = [t for value in returned for t in self._templates(value, inner, depth + 1)]
        return templates or ["{}"]


@attrs.frozen
class _Place:
    """Where an expression is resolved: its module and the function around it."""

    module: _Module
    function: ast.FunctionDef | None


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _targets(statement: ast.Assign | ast.AnnAssign) -> list[ast.expr]:
    return statement.targets if isinstance(statement, ast.Assign) else [statement.target]


def _is_name(target: ast.expr, name: str) -> bool:
    return isinstance(target, ast.Name) and target.id == name


def _message_argument(call: ast.Call) -> ast.expr | None:
    if call.args and not isinstance(call.args[0], ast.Starred):
        return call.args[0]
    for keyword in call.keywords:
        if keyword.arg in ("message", "cause", "msg"):
            return keyword.value
    return None


def code_messages(folders: Sequence[Path] | None = None, root: Path = ROOT) -> list[Message]:
    """Every message template of the project's error types under `folders`."""
    return _Scanner(source_folders(root) if folders is None else folders, root).messages()


def catalogue_entries(page: Path = CATALOGUE) -> list[Entry]:
    """The catalogue's entries: level-4 headings that are one code span."""
    entries = []
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
        if match := _ENTRY.match(line):
            entries.append(Entry(match.group(2), number))
    return entries


def find_gaps(messages: Sequence[Message], entries: Sequence[Entry]) -> Gaps:
    """Messages no entry covers, and entries that cover no message."""
    missing = [m for m in messages if not any(e.covers(m) for e in entries)]
    stale = [e for e in entries if not any(e.covers(m) for m in messages)]
    return Gaps(missing, stale)


def _main(argv: Sequence[str]) -> int:
    if "--list" in argv:
        for message in code_messages():
            print(f"{message.where} {message.error}: {message.template}")
        return 0
    gaps = find_gaps(code_messages(), catalogue_entries())
    if gaps.missing or gaps.stale:
        print(gaps.report())
        return 1
    print(f"the catalogue in {CATALOGUE.relative_to(ROOT)} covers every message")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
