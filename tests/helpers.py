"""Helpers shared by several test modules (`from helpers import ...`; tests/ is on sys.path)."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import itertools
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from ebmkit.cli import main
from ebmkit.registry import AUTOLOAD_ENV, reset_registry
from ebmkit.runs.lock import LOCK_NAME
from ebmkit.testing.states import first_difference  # noqa: F401 - the tests import it from here

TOY_GIN = Path(__file__).resolve().parents[1] / "gin" / "base" / "toy.gin"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FLOW_TOY_LINES = (
    f"include '{TOY_GIN}'",
    "trainers.Contrastive.dataset = @datasets.EightGaussians()",
    "trainers.Contrastive.sampler = @samplers.Langevin()",
    "trainers.Contrastive.initializer = @initializers.Flow()",
    "trainers.Contrastive.batch_size = 16",
    "datasets.EightGaussians.n_samples = 64",
    "samplers.Langevin.step_size = 0.01",
    "samplers.Langevin.n_steps = 2",
    "energies.MLP.hidden = (8,)",
    "initializers.Flow.flow = @flows.Affine()",
    "flows.Affine.dim = 2",
    "flows.Affine.fit_on = 'samples'",
)
"""A tiny eight-Gaussians run whose chains start at an affine flow's samples (a Learnable)."""
_unique = itertools.count()


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """main(argv) in this process; (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


def write_lines(folder: Path, name: str, lines: Sequence[str]) -> Path:
    """A config file `folder/name` holding `lines`, one a line; its path."""
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path


def metrics_lines(run: Path) -> list[dict]:
    """A run's metrics.jsonl, one dict a line."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def checkpoint(run: Path, round_index: int) -> dict[str, Any]:
    """A run's checkpoint of `round_index`, as torch.load reads it (weights_only)."""
    return torch.load(run / "checkpoints" / f"round-{round_index:08d}.pt", weights_only=True)


def console_script() -> list[str]:
    """The `ebmkit` command of this interpreter's environment (or `python -m ebmkit.cli`)."""
    script = Path(sys.executable).with_name("ebmkit")
    return [str(script)] if script.exists() else [sys.executable, "-m", "ebmkit.cli"]


def subprocess_env(pythonpath: Path | None = None) -> dict[str, str]:
    """This environment for a child process: one thread, autoload unset, PYTHONPATH if given."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    env.pop(AUTOLOAD_ENV, None)
    return env


def unique_tag() -> str:
    """A tag for names no other test (or xdist worker) uses: `<pid>_<counter>`."""
    return f"{os.getpid()}_{next(_unique)}"


def write_distribution(
    site: Path, dist: str, version: str, entry_points: dict[str, str], modules: dict[str, str]
) -> None:
    """An installed distribution in `site`: modules plus a dist-info with `ebmkit` entry points."""
    info = site / f"{dist}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[ebmkit]\n{lines}")
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))


@contextlib.contextmanager
def on_sys_path(folder: Path, *, first: bool = True, forget: bool = True) -> Iterator[Path]:
    """`folder` on sys.path; after: removed, new ebmkit_test_* modules dropped, registry reset."""
    before = set(sys.modules)
    if first:
        sys.path.insert(0, str(folder))
    else:
        sys.path.append(str(folder))
    importlib.invalidate_caches()
    try:
        yield folder
    finally:
        sys.path.remove(str(folder))
        if forget:
            for name in set(sys.modules) - before:
                if name.startswith("ebmkit_test_"):
                    del sys.modules[name]
        importlib.invalidate_caches()
        reset_registry()


def plugin_listing(output: str) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """`ebmkit plugins` output → ({plugin: status line}, {section: {component: plugin}})."""
    plugins: dict[str, str] = {}
    sections: dict[str, dict[str, str]] = {}
    section = None
    for line in output.splitlines():
        if line and not line.startswith(" "):
            section = line.removesuffix(":")
            sections.setdefault(section, {})
        elif section == "plugins":
            name, _, rest = line.strip().partition(" ")
            plugins[name] = rest
        elif section is not None:
            match = re.fullmatch(r"  (\S+)\s+\[(\S+)\] ?.*", line)
            assert match, f"unexpected line in `ebmkit plugins`: {line!r}"
            sections[section][match.group(1)] = match.group(2)
    sections.pop("plugins", None)
    return plugins, sections


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by path relative to it ("nothing lost" checks)."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def run_console_script(
    argv: Sequence[str], *, prefix: Sequence[str] = (), cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The `ebmkit` console script in a child process (one thread, autoload unset), captured.

    `prefix` goes before the command, e.g. a wrapper that runs it in another mount namespace.
    """
    return subprocess.run(
        [*prefix, *console_script(), *argv],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=cwd,
        timeout=300,
    )


def ended_pid() -> int:
    """The PID of a process that has run and been reaped: one no live process holds."""
    ended = subprocess.Popen(["true"])
    ended.wait()
    return ended.pid


def write_stale_lock(run_dir: Path) -> int:
    """Leave the run lock a killed run leaves (its PID ended, this host); returns that PID."""
    pid = ended_pid()
    record = {"pid": pid, "host": socket.gethostname(), "started": "earlier"}
    (run_dir / LOCK_NAME).write_text(json.dumps(record))
    return pid
