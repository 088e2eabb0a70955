"""A run that stopped before its first checkpoint (killed, or its first write hit a full disk)
continues with `--resume`: the run starts afresh in its folder, the earlier logs are moved into
a dated subfolder (nothing deleted), and every stop message names a command that works."""

from __future__ import annotations

import io
import shlex
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import (
    TOY_GIN,
    file_hashes,
    first_difference,
    metrics_lines,
    run_cli,
    write_lines,
)

from ebmkit.checkpoint.files import latest_checkpoint, load_checkpoint

pytestmark = pytest.mark.usefixtures("builtin_registry")

LINES = [
    f"include '{TOY_GIN}'",
    "trainers.Contrastive.dataset = @datasets.EightGaussians()",
    "trainers.Contrastive.sampler = @samplers.Langevin()",
    "trainers.Contrastive.initializer = @initializers.Replay()",
    "trainers.Contrastive.batch_size = 32",
    "trainers.Contrastive.n_rounds = 3",
    "energies.MLP.hidden = (16, 16)",
    "datasets.EightGaussians.n_samples = 96",
    "samplers.Langevin.step_size = 0.01",
    "samplers.Langevin.n_steps = 3",
    "initializers.Replay.noise = @initializers.Noise()",
    "initializers.Replay.capacity = 64",
    "experiment.seed = 5",
    "experiment.log_every = 1",
    "experiment.eval_every = 1000",
    "experiment.sample_every = 1000",
    "experiment.checkpoint_every = 1",
]


def _failing_save(state: Any, stream: Any, *args: Any, **kwargs: Any) -> None:
    stream.write(b"partial")
    raise OSError(28, "No space left on device")


@pytest.fixture
def stopped_before_first_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, Path, str]:
    """A run whose first checkpoint write hit a full disk: (config, run folder, its error)."""
    config, run = write_lines(tmp_path, "toy.gin", LINES), tmp_path / "run"
    monkeypatch.setattr(torch, "save", _failing_save)
    status, _, err = run_cli(["run", str(config), "--out", str(run)])
    monkeypatch.undo()
    assert status == 1
    assert latest_checkpoint(run / "checkpoints") is None
    return config, run, err


def test_a_full_disk_at_the_first_checkpoint_names_a_command_that_works(
    stopped_before_first_checkpoint: tuple[Path, Path, str],
) -> None:
    config, run, err = stopped_before_first_checkpoint
    assert err.count("ebmkit: error:") == 1 and "Traceback" not in err
    assert "it would have been the run's first" in err and "are intact" not in err
    assert "run the same command with --resume" in err
    assert metrics_lines(run)[0]["round"] == 1  # round 1 was logged before its save failed
    status, _, err = run_cli(["run", str(config), "--out", str(run), "--resume"])
    assert status == 0, err
    assert load_checkpoint(latest_checkpoint(run / "checkpoints"))["round"] == 3


def test_resume_starts_afresh_keeping_the_earlier_logs_and_equals_a_clean_run(
    stopped_before_first_checkpoint: tuple[Path, Path, str], tmp_path: Path
) -> None:
    config, run, _ = stopped_before_first_checkpoint
    earlier = file_hashes(run)
    status, _, err = run_cli(["run", str(config), "--out", str(run), "--resume"])
    assert status == 0, err
    assert "ebmkit: note:" in err and "starts afresh" in err
    (kept,) = sorted(run.glob("earlier-*"))
    assert f"kept in {kept}" in err
    moved = file_hashes(kept)  # every earlier log, byte for byte, nothing deleted
    assert moved == {name: digest for name, digest in earlier.items() if name in moved}
    assert set(moved) == {name for name in earlier if not name.startswith("checkpoints")}
    clean = tmp_path / "clean"
    assert run_cli(["run", str(config), "--out", str(clean)])[0] == 0
    rounds = lambda folder: [row["round"] for row in metrics_lines(folder)]  # noqa: E731
    assert rounds(run) == rounds(clean) and rounds(run)[:3] == [1, 2, 3]  # none twice
    final = lambda folder: load_checkpoint(latest_checkpoint(folder / "checkpoints"))  # noqa: E731
    assert first_difference(final(run), final(clean)) is None


def test_a_plain_run_into_that_folder_is_refused_naming_the_resume_command(
    stopped_before_first_checkpoint: tuple[Path, Path, str],
) -> None:
    config, run, _ = stopped_before_first_checkpoint
    before = file_hashes(run)
    status, _, err = run_cli(["run", str(config), "--out", str(run)])
    assert status == 1 and err.count("ebmkit: error:") == 1
    command = f"ebmkit run {shlex.quote(str(config))} --out {shlex.quote(str(run))} --resume"
    assert f"`{command}` starts it afresh there" in err
    assert file_hashes(run) == before


def test_resume_into_a_folder_with_no_earlier_run_is_still_refused(tmp_path: Path) -> None:
    config, out = write_lines(tmp_path, "toy.gin", LINES), tmp_path / "typo"
    status, _, err = run_cli(["run", str(config), "--out", str(out), "--resume"])
    assert status == 1
    assert f"--resume: no checkpoint in {out / 'checkpoints'}" in err
    assert not out.exists()


def test_the_stop_message_of_a_full_disk_with_checkpoints_still_says_they_are_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, run = write_lines(tmp_path, "toy.gin", LINES), tmp_path / "run"
    assert run_cli(["run", str(config), "--out", str(run), "--rounds", "1"])[0] == 0
    monkeypatch.setattr(torch, "save", _failing_save)
    status, _, err = run_cli(["run", str(config), "--out", str(run), "--resume"])
    monkeypatch.undo()
    assert status == 1 and "are intact" in err and "continue with --resume" in err
    assert io.StringIO(err).read().count("ebmkit: error:") == 1
