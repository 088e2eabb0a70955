r"""Resume checks: the run's own bindings re-applied, a changed config refused, logs cut back."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import attrs

from ebmkit.errors import CheckpointError

__all__ = [
    "ACCEPT_FLAG",
    "ConfigChange",
    "bindings_of",
    "config_changes",
    "cut_metrics_back",
    "refuse_changes",
]

ACCEPT_FLAG = "--accept-config-change"

# Bindings a resumed run may change: how far it goes, how often it logs and saves, where.
_FREE = (
    re.compile(r"(^|/)[\w.]+\.n_rounds$"),
    re.compile(r"(^|/)experiment\.(log_every|eval_every|sample_every|checkpoint_every)$"),
    re.compile(r"(^|/)experiment\.keep_checkpoints$"),
    re.compile(r"(^|/)[\w.]+\.device$"),
    re.compile(r"^DEVICE$"),
)
_BINDING = re.compile(r"^([%\w./]+)\s*=\s*(.*)$")


@attrs.frozen
class ConfigChange:
    """One binding whose value differs between the run's config and the new one."""

    binding: str
    old: str | None
    new: str | None

    def __str__(self) -> str:
        old = "(unset)" if self.old is None else self.old
        new = "(unset)" if self.new is None else self.new
        return f"{self.binding}: {old} → {new}"


def bindings_of(operative_config: str) -> dict[str, str]:
    """`selector.parameter` → value text, from gin's operative config (continuation lines
    joined, comments and blank lines dropped)."""
    bindings: dict[str, str] = {}
    current: str | None = None
    for line in operative_config.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line[0].isspace() and current is not None:  # a value continued from the line above
            bindings[current] += " " + stripped
            continue
        match = _BINDING.match(stripped)
        if match is None:  # import / include lines
            current = None
            continue
        current = match.group(1)
        bindings[current] = match.group(2)
    return {name: " ".join(value.split()) for name, value in bindings.items()}


def config_changes(old_config: str, new_config: str) -> list[ConfigChange]:
    """The bindings that differ, except those a resumed run may change (rounds, cadence,
    device)."""
    old, new = bindings_of(old_config), bindings_of(new_config)
    changes = []
    for name in sorted(set(old) | set(new)):
        if old.get(name) != new.get(name) and not any(p.search(name) for p in _FREE):
            changes.append(ConfigChange(name, old.get(name), new.get(name)))
    return changes


def refuse_changes(changes: Sequence[ConfigChange], checkpoint: Path) -> None:
    """Raise CheckpointError listing the changed bindings and the flag that accepts them."""
    if not changes:
        return
    listed = "\n".join(f"  {change}" for change in changes)
    raise CheckpointError(
        f"--resume: the config differs from the one the run was started with (stored in "
        f"{checkpoint}) in {len(changes)} binding(s):\n{listed}\nA resumed run re-applies its "
        f"own --bind values by itself; only the rounds, the logging/checkpoint cadence and the "
        f"device may change. Resume with the same config, or pass {ACCEPT_FLAG} to continue "
        f"with these changes on purpose"
    )


def cut_metrics_back(path: Path, round_index: int) -> int:
    """Drop metrics.jsonl rows after `round_index` (logged by a run killed after its last
    checkpoint, about to be logged again); atomic rewrite. Returns the rows dropped."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines(keepends=True):
        try:
            row_round = json.loads(line)["round"]
        except (ValueError, KeyError, TypeError):
            row_round = None  # a line cut short by the kill: drop it
        if row_round is not None and row_round <= round_index:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text("".join(kept))
        os.replace(temporary, path)
    return dropped
