"""Runs never lose or mix up work: config-checked resume, one run per folder, clean interrupts,
logs that hold every round once, a guard that catches blow-ups (each through the CLI)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers import (
    TOY_GIN,
    checkpoint,
    console_script,
    file_hashes,
    metrics_lines,
    run_cli,
    run_console_script,
    subprocess_env,
    write_lines,
    write_stale_lock,
)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ebmkit.checkpoint.files import checkpoint_round, latest_checkpoint

pytestmark = pytest.mark.usefixtures("builtin_registry")

BASE = [
    f"include '{TOY_GIN}'",
    "trainers.Contrastive.dataset = @datasets.EightGaussians()",
    "trainers.Contrastive.sampler = @samplers.Langevin()",
    "trainers.Contrastive.initializer = @initializers.Replay()",
    "trainers.Contrastive.batch_size = 32",
    "energies.MLP.hidden = (16, 16)",
    "datasets.EightGaussians.n_samples = 96",
    "samplers.Langevin.step_size = 0.01",
    "samplers.Langevin.n_steps = 3",
    "initializers.Replay.noise = @initializers.Noise()",
    "initializers.Replay.capacity = 64",
    "experiment.seed = 11",
    "experiment.log_every = 1",
    "experiment.eval_every = 100000",
    "experiment.sample_every = 100000",
    "experiment.keep_checkpoints = 1000",
]


def config(folder: Path, rounds: int, checkpoint_every: int = 5) -> Path:
    lines = [
        *BASE,
        f"trainers.Contrastive.n_rounds = {rounds}",
        f"experiment.checkpoint_every = {checkpoint_every}",
    ]
    return write_lines(folder, "safety.gin", lines)


def start(argv: list[str]) -> subprocess.Popen:
    """`ebmkit <argv>` in a child process (its own process group, output captured)."""
    return subprocess.Popen(
        [*console_script(), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )


def wait_for_rounds(
    run: Path, rounds: int, process: subprocess.Popen, timeout: float = 120
) -> None:
    """Until metrics.jsonl logs `rounds` rounds (or fail if the process ends first)."""
    deadline = time.monotonic() + timeout
    path = run / "metrics.jsonl"
    while time.monotonic() < deadline:
        if path.is_file() and len(path.read_text().splitlines()) >= rounds:
            return
        if process.poll() is not None:
            raise AssertionError(f"the run ended early: {process.communicate()}")
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"{path} did not reach {rounds} rounds in {timeout} s")


def logged_rounds(run: Path) -> list[int]:
    return [row["round"] for row in metrics_lines(run) if "loss/total" in row]


def same_tensors(
    a: dict, b: dict, keys=("energy", "optimizer", "loader", "components", "rng")
) -> None:
    for key in keys:
        assert repr(a[key]) == repr(b[key]), key
    for name, tensor in a["energy"].items():
        assert torch.equal(tensor, b["energy"][name]), name
    assert torch.equal(
        a["components"]["initializer"]["buffer"], b["components"]["initializer"]["buffer"]
    )


# -- resume checks the config ----------------------------------------------------------------


def test_resume_with_another_config_is_refused_listing_the_change_and_accepted_with_the_flag(
    tmp_path: Path,
) -> None:
    path, run = config(tmp_path, rounds=4), tmp_path / "run"
    assert run_console_script(["run", str(path), "--out", str(run)]).returncode == 0
    before = file_hashes(run)
    changed = ["--bind", "samplers.Langevin.step_size = 0.02", "--rounds", "6"]
    refused = run_console_script(["run", str(path), "--out", str(run), "--resume", *changed])
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.count("ebmkit: error:") == 1 and "Traceback" not in refused.stderr
    assert "Langevin.step_size: 0.01 → 0.02" in refused.stderr
    assert "--accept-config-change" in refused.stderr
    assert file_hashes(run) == before  # nothing written, nothing lost
    accepted = run_console_script(
        ["run", str(path), "--out", str(run), "--resume", *changed, "--accept-config-change"]
    )
    assert accepted.returncode == 0, accepted.stderr
    assert "continuing with a changed config (Langevin.step_size: 0.01 → 0.02)" in accepted.stderr
    assert "Langevin.step_size = 0.02" in checkpoint(run, 6)["operative_config"]
    after = file_hashes(run)
    for name, digest in before.items():  # the first run's checkpoints are untouched
        if name.startswith("checkpoints/"):
            assert after[name] == digest, name


def test_a_resumed_run_reapplies_its_own_bindings(tmp_path: Path) -> None:
    path = config(tmp_path, rounds=3)
    run = tmp_path / "run"
    bind = ["--bind", "samplers.Langevin.n_steps = 7"]
    assert run_cli(["run", str(path), "--out", str(run), *bind])[0] == 0
    status, _, err = run_cli(["run", str(path), "--out", str(run), "--resume", "--rounds", "5"])
    assert status == 0, err
    assert "Langevin.n_steps = 7" in checkpoint(run, 5)["operative_config"]
    assert checkpoint(run, 5)["run"]["bindings"] == ["samplers.Langevin.n_steps = 7"]


def test_resume_to_a_round_already_passed_is_refused(tmp_path: Path) -> None:
    path, run = config(tmp_path, rounds=4), tmp_path / "run"
    assert run_cli(["run", str(path), "--out", str(run)])[0] == 0
    before = file_hashes(run)
    status, out, err = run_cli(["run", str(path), "--out", str(run), "--resume", "--rounds", "2"])
    assert (status, out) == (1, "")
    assert "the run is already at round 4" in err and "--rounds N with N > 4" in err
    assert file_hashes(run) == before


# -- one run per folder ------------------------------------------------------------------------


def test_a_second_run_into_a_busy_folder_is_refused_and_the_first_is_intact(
    tmp_path: Path,
) -> None:
    # The first run would go on for 100 000 rounds: it is still running, whatever the
    # machine's speed, until the test stops it with SIGINT after the second was refused.
    path, run = config(tmp_path, rounds=100000, checkpoint_every=1000), tmp_path / "run"
    first = start(["run", str(path), "--out", str(run)])
    wait_for_rounds(run, 3, first)
    second = run_console_script(["run", str(path), "--out", str(run)])
    assert second.returncode == 1 and second.stdout == ""
    assert f"is in use by another ebmkit run (pid {first.pid} on" in second.stderr
    assert second.stderr.count("ebmkit: error:") == 1
    assert first.poll() is None, "the first run must still be running"
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 130, err
    stopped = logged_rounds(run)[-1]
    assert logged_rounds(run) == list(range(1, stopped + 1))  # every round once, none mixed in
    assert not (run / ".ebmkit.lock").exists()
    reference = tmp_path / "reference"
    assert run_cli(["run", str(path), "--out", str(reference), "--rounds", str(stopped)])[0] == 0
    same_tensors(checkpoint(run, stopped), checkpoint(reference, stopped))


def test_a_stale_lock_is_taken_over_with_a_note(tmp_path: Path) -> None:
    path, run = config(tmp_path, rounds=2), tmp_path / "run"
    run.mkdir()
    pid = write_stale_lock(run)
    status, _, err = run_cli(["run", str(path), "--out", str(run)])
    assert status == 0, err
    assert f"taking over the lock of pid {pid} (no longer running)" in err
    assert not (run / ".ebmkit.lock").exists()


# -- interrupts --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_the_round_and_resume_equals_an_uninterrupted_run(
    tmp_path: Path, signum: int, status: int
) -> None:
    path, run = config(tmp_path, rounds=100000, checkpoint_every=1000), tmp_path / "run"
    process = start(["run", str(path), "--out", str(run)])
    wait_for_rounds(run, 5, process)
    process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    assert process.returncode == status, err
    stopped = logged_rounds(run)[-1]
    assert f"interrupted by {signal.Signals(signum).name} at round {stopped}" in err
    assert f"--out {run} --resume" in err and "Traceback" not in err
    assert (run / "checkpoints" / f"round-{stopped:08d}.pt").is_file()
    before = file_hashes(run / "checkpoints")
    end = stopped + 7
    resumed = run_cli(["run", str(path), "--out", str(run), "--resume", "--rounds", str(end)])
    assert resumed[0] == 0, resumed[2]
    assert logged_rounds(run) == list(range(1, end + 1))
    for name, digest in before.items():
        assert file_hashes(run / "checkpoints")[name] == digest
    reference = tmp_path / "reference"
    assert run_cli(["run", str(path), "--out", str(reference), "--rounds", str(end)])[0] == 0
    same_tensors(checkpoint(run, end), checkpoint(reference, end))


@pytest.mark.slow
def test_after_kill_9_the_resumed_run_logs_every_round_exactly_once(tmp_path: Path) -> None:
    path, run = config(tmp_path, rounds=100000, checkpoint_every=5), tmp_path / "run"
    process = start(["run", str(path), "--out", str(run)])
    wait_for_rounds(run, 8, process)
    process.kill()
    process.communicate()
    saved = checkpoint_round(latest_checkpoint(run / "checkpoints"))
    logged = logged_rounds(run)
    assert logged[-1] >= saved  # usually rounds were logged after the last checkpoint
    kept_rows = "".join(
        line + "\n"
        for line in (run / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["round"] <= saved
    )
    # the kill may land inside a checkpoint write: its temporary file is no checkpoint
    before = {
        name: digest
        for name, digest in file_hashes(run / "checkpoints").items()
        if not name.startswith(".tmp-")
    }
    end = logged[-1] + 5
    status, _, err = run_cli(
        ["run", str(path), "--out", str(run), "--resume", "--rounds", str(end)]
    )
    assert status == 0, err
    assert logged_rounds(run) == list(range(1, end + 1))
    assert (run / "metrics.jsonl").read_text().startswith(kept_rows)  # earlier rows unchanged
    after = file_hashes(run / "checkpoints")
    assert not [name for name in after if name.startswith(".tmp-")]  # orphans removed
    for name, digest in before.items():
        assert after[name] == digest
    events = EventAccumulator(str(run / "tb")).Reload()
    assert [event.step for event in events.Scalars("energy/gap")] == list(range(1, end + 1))


def test_a_fresh_run_never_appends_to_the_logs_of_a_run_without_checkpoints(
    tmp_path: Path,
) -> None:
    path, run = config(tmp_path, rounds=2), tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"round": 1, "loss/total": 0.5}\n')
    before = file_hashes(run)
    status, out, err = run_cli(["run", str(path), "--out", str(run)])
    assert (status, out) == (1, "")
    assert "holds metrics.jsonl of an earlier run but no checkpoint" in err
    assert file_hashes(run) == before


# -- the blow-up guard -------------------------------------------------------------------------


def test_a_huge_step_size_on_the_toy_config_stops_within_20_rounds_naming_the_quantity(
    tmp_path: Path,
) -> None:
    toy = Path(__file__).resolve().parents[1] / "gin" / "langevin_eight_gaussians.gin"
    run = tmp_path / "run"
    argv = ["run", str(toy), "--out", str(run), "--rounds", "200"]
    done = run_console_script([*argv, "--bind", "samplers.Langevin.step_size = 1e6"])
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.count("ebmkit: error:") == 1 and "Traceback" not in done.stderr
    message = done.stderr[done.stderr.index("ebmkit: error: ") :]
    round_index = int(message.split("round ")[1].split(":")[0])
    assert round_index <= 20, message
    assert "running scale" in message and (
        "energy gap" in message or "parameter gradient norm" in message
    )
    assert "no checkpoint was written before this round" in message
    assert "trainers.Contrastive.blowup_factor" in message


def test_the_blowup_guard_can_be_switched_off(tmp_path: Path) -> None:
    path, run = config(tmp_path, rounds=3), tmp_path / "run"
    argv = ["run", str(path), "--out", str(run), "--bind", "samplers.Langevin.step_size = 1e6"]
    status, _, err = run_cli([*argv, "--bind", "trainers.Contrastive.blowup_factor = None"])
    assert status == 0, err


def test_a_resumed_event_file_sorts_after_the_earlier_ones(tmp_path: Path) -> None:
    """Tensorboard reads event files in name order (creation second first): a resumed run's
    file made in the killed run's second could sort first and purge the earlier rounds."""
    from ebmkit.tracking.run_logger import RunLogger

    (tmp_path / "tb").mkdir()
    now = int(time.time())
    (tmp_path / "tb" / f"events.out.tfevents.{now:010d}.host.999999.0").write_bytes(b"")
    logger = RunLogger(tmp_path, purge_step=3)
    logger.close()
    names = sorted(path.name for path in (tmp_path / "tb").iterdir())
    assert names[0].startswith(f"events.out.tfevents.{now:010d}.host")
    assert int(names[1].split(".")[3]) > now
