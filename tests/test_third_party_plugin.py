"""The third-party example `examples/ebmkit-hmc` as an installed distribution: `ebmkit plugins`
lists its sampler under its own distribution name, and its gin files run through the CLI with
a core initializer (Replay) and a paper's initializer (Dual-MCMC's Generator).

The package goes on the path the way pip leaves it: its modules plus an
`ebmkit_hmc-<version>.dist-info` (METADATA, entry_points.txt from its pyproject.toml) in a
temporary folder on PYTHONPATH, which comes before site-packages; nothing is built or
downloaded, so this works offline in the time a copy takes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from helpers import console_script, subprocess_env

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ebmkit-hmc"
TINY = {
    "hmc_replay_eight_gaussians.gin": [
        "trainers.Contrastive.batch_size = 16",
        "energies.MLP.hidden = (16,)",
        "initializers.Replay.capacity = 64",
    ],
    "hmc_generator_eight_gaussians.gin": [
        "trainers.Contrastive.batch_size = 16",
        "energies.MLP.hidden = (16,)",
        "generators.MLP.hidden = (16,)",
        "inference_models.MLP.hidden = (16,)",
    ],
}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding ebmkit_hmc and its dist-info, as `pip install` would leave them."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    name, version = project["name"], project["version"]
    folder = tmp_path_factory.mktemp("site")
    shutil.copytree(
        EXAMPLE / "src" / "ebmkit_hmc",
        folder / "ebmkit_hmc",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    info = folder / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    groups = project["entry-points"]
    lines = "".join(
        f"[{group}]\n" + "".join(f"{key} = {value}\n" for key, value in points.items())
        for group, points in groups.items()
    )
    (info / "entry_points.txt").write_text(lines)
    return folder


def ebmkit(site: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = subprocess_env(site)
    return subprocess.run(
        [*console_script(), *argv], capture_output=True, text=True, env=env, timeout=300
    )


def test_the_example_declares_only_an_ebmkit_entry_point() -> None:
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    assert project["name"] == "ebmkit-hmc"
    assert project["entry-points"] == {"ebmkit": {"hmc": "ebmkit_hmc.plugin"}}


def test_ebmkit_plugins_lists_hmc_under_its_distribution(site: Path) -> None:
    listed = ebmkit(site, "plugins")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert "  hmc (ebmkit-hmc 0.1.0): ok" in lines
    samplers = lines[lines.index("samplers:") + 1 :]
    (row,) = [line for line in samplers if line.split()[:2] == ["HMC", "[hmc]"]]
    assert "leapfrog" in row


@pytest.mark.slow
def test_the_plugin_comes_from_the_installed_copy(site: Path) -> None:
    """The distribution found is the one in `site` (it precedes any other install): ~5–9 s."""
    probe = (
        "import importlib.metadata as m, ebmkit_hmc; "
        "(e,) = [e for e in m.entry_points(group='ebmkit') if e.name == 'hmc']; "
        "print(e.dist.name, e.value, ebmkit_hmc.__file__)"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env=subprocess_env(site),
        timeout=120,
    )
    assert found.returncode == 0, found.stderr
    dist, value, module = found.stdout.split()
    assert (dist, value) == ("ebmkit-hmc", "ebmkit_hmc.plugin")
    assert Path(module).is_relative_to(site)


@pytest.mark.slow
@pytest.mark.parametrize("config", list(TINY))
def test_a_gin_file_runs_hmc_for_two_rounds(site: Path, tmp_path: Path, config: str) -> None:
    """About 15–25 s each on a shared CPU (a fresh process, 2 tiny rounds, the final eval)."""
    binds = [argument for line in TINY[config] for argument in ("--bind", line)]
    out = tmp_path / "run"
    run = ebmkit(
        site, "run", str(EXAMPLE / "gin" / config), "--out", str(out), "--rounds", "2", *binds
    )
    assert run.returncode == 0, run.stderr
    assert "samplers.HMC()" in (out / "operative_config.gin").read_text()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    trained = [row for row in rows if "sampler/grad_evals" in row]
    assert [row["round"] for row in trained][-1] == 2
    assert trained[-1]["sampler/grad_evals"] == 1 + 10 * 3  # init + n_steps × n_leapfrog
    assert 0.0 <= trained[-1]["sampler/acceptance_rate"] <= 1.0
    assert (out / "checkpoints" / "round-00000002.pt").is_file()
