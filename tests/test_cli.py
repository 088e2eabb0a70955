"""The `ebmkit` command: what a tiny run writes, and one clear error for each bad input."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch
from helpers import (
    PNG_SIGNATURE,
    TOY_GIN,
    checkpoint,
    console_script,
    metrics_lines,
    run_cli,
    subprocess_env,
    write_lines,
)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import gin
from ebmkit.registry import get_registry, reset_registry
from ebmkit.samplers.langevin import Langevin

pytestmark = pytest.mark.usefixtures("builtin_registry")

ROUNDS = 5
STEP_SIZE = 0.02  # bound on the command line (the config says 0.01)

TINY_LINES = [
    f"include '{TOY_GIN}'",
    "trainers.Contrastive.dataset = @datasets.EightGaussians()",
    "trainers.Contrastive.sampler = @samplers.Langevin()",
    "trainers.Contrastive.initializer = @initializers.Replay()",
    "trainers.Contrastive.n_rounds = 1000",
    "trainers.Contrastive.batch_size = 32",
    "energies.MLP.hidden = (16, 16)",
    "datasets.EightGaussians.n_samples = 96",
    "samplers.Langevin.step_size = 0.01",
    "samplers.Langevin.n_steps = 3",
    "initializers.Replay.noise = @initializers.Noise()",
    "initializers.Replay.capacity = 64",
    "initializers.Noise.low = -3.0",
    "initializers.Noise.high = 3.0",
    "experiment.log_every = 1",
    "experiment.eval_every = 2",
    "experiment.sample_every = 3",
    "experiment.checkpoint_every = 1",
    "experiment.keep_checkpoints = 2",
]
SCALAR_TAGS = {
    "energy/data",
    "energy/samples",
    "energy/gap",
    "loss/total",
    "grad_norm",
    "sampler/step_size",
    "perf/samples_per_s",
    "metrics/grid_kl",
    "metrics/mode_weight_error",
    "metrics/mode_weight_max_error",
    "metrics/density_mode_weight_error",
    "metrics/density_mode_weight_max_error",
}


def mlp_hidden(hidden: tuple[int, ...]) -> set[str]:
    """The operative-config line of energies.MLP.hidden, short or qualified: gin writes
    `MLP.hidden` while the name is unique and `energies.MLP.hidden` once a plugin registers
    another MLP (generators.MLP, inference_models.MLP)."""
    return {f"{prefix}MLP.hidden = {hidden}" for prefix in ("", "energies.")}


def write_config(
    folder: Path, name: str = "tiny.gin", replace: dict[str, str] | None = None
) -> Path:
    """The tiny config, with whole lines replaced (`{old line: new line}`)."""
    lines = list(TINY_LINES)
    for old, new in (replace or {}).items():
        lines[lines.index(old)] = new
    return write_lines(folder, name, lines)


def snapshot(folder: Path) -> dict[str, tuple[int, str, int]]:
    """Every file under `folder`: (size, sha256, mtime_ns); folders as (-1, "", mtime_ns)."""
    state = {}
    for path in sorted(folder.rglob("*")):
        stat = path.stat()
        if path.is_dir():
            state[str(path.relative_to(folder))] = (-1, "", stat.st_mtime_ns)
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            state[str(path.relative_to(folder))] = (stat.st_size, digest, stat.st_mtime_ns)
    return state


def assert_one_clear_error(status: int, out: str, err: str) -> str:
    """Exit 1, nothing on stdout, one `ebmkit: error:` message, no traceback; the message."""
    assert status == 1
    assert out == ""
    assert err.startswith("ebmkit: error: ")
    assert err.count("ebmkit: error:") == 1
    assert "Traceback" not in err
    return err.removeprefix("ebmkit: error: ")


@attrs.frozen
class FinishedRun:
    config: Path
    out: Path
    status: int
    summary: dict


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> FinishedRun:
    """One tiny run of 5 rounds (config: 1000), step size bound to 0.02; read-only for tests."""
    folder = tmp_path_factory.mktemp("finished")
    config = write_config(folder)
    out = folder / "run"
    argv = ["run", str(config), "--out", str(out), "--rounds", str(ROUNDS)]
    argv += ["--bind", f"samplers.Langevin.step_size = {STEP_SIZE}"]
    status, stdout, _ = run_cli(argv)
    reset_registry()
    return FinishedRun(config, out, status, json.loads(stdout) if status == 0 else {})


@pytest.fixture
def run_copy(finished: FinishedRun, tmp_path: Path) -> Path:
    """A copy of the finished run (mtimes kept) that a test may break."""
    assert finished.status == 0
    copy = tmp_path / "run"
    shutil.copytree(finished.out, copy)
    return copy


# -- what a run writes -----------------------------------------------------------------------


def test_a_tiny_run_succeeds_and_prints_its_summary(finished: FinishedRun) -> None:
    assert finished.status == 0
    assert finished.summary["run_dir"] == str(finished.out)
    assert finished.summary["rounds"] == ROUNDS
    evaluations = [line for line in metrics_lines(finished.out) if "metrics/grid_kl" in line]
    assert evaluations[-1]["round"] == ROUNDS
    assert finished.summary["metrics"]["grid_kl"] == evaluations[-1]["metrics/grid_kl"]
    assert finished.summary["metrics"]["mmd"] == evaluations[-1]["metrics/mmd"]
    assert finished.summary["metrics"]["finite_fraction"] == 1.0
    assert set(finished.summary["metrics"]) >= {"grid_kl", "mmd", "sliced_wasserstein"}
    # Mode weights of the samples and of the density exp(-E), both as sum and max of |w - w*|.
    for key in ("mode_weight_error", "density_mode_weight_error"):
        assert finished.summary["metrics"][key] == evaluations[-1][f"metrics/{key}"]
    keys = {"mode_weight_max_error", "density_mode_weight_max_error", "density_mode_weight_7"}
    assert set(finished.summary["metrics"]) >= keys


def test_the_run_directory_holds_exactly_the_expected_outputs(finished: FinishedRun) -> None:
    top = sorted(path.name for path in finished.out.iterdir())
    assert top == ["checkpoints", "metrics.jsonl", "operative_config.gin", "samples", "tb"]


def test_operative_config_shows_bind_and_rounds_overrides(finished: FinishedRun) -> None:
    operative = (finished.out / "operative_config.gin").read_text()
    lines = set(operative.splitlines())
    assert f"Langevin.step_size = {STEP_SIZE}" in lines
    assert "Langevin.step_size = 0.01" not in lines
    assert f"Contrastive.n_rounds = {ROUNDS}" in lines
    assert "Contrastive.n_rounds = 1000" not in lines
    assert "Replay.capacity = 64" in lines
    assert mlp_hidden((16, 16)) & lines
    # defaults the config never mentions are written out too
    assert "Langevin.noise_scale = None" in lines
    # and it parses back (a run can be repeated from it)
    gin.clear_config()
    gin.parse_config(operative)
    assert gin.query_parameter("Langevin.step_size") == STEP_SIZE


def test_only_the_last_keep_checkpoints_remain(finished: FinishedRun) -> None:
    folder = finished.out / "checkpoints"
    assert sorted(path.name for path in folder.iterdir()) == [
        "round-00000004.pt",
        "round-00000005.pt",
    ]
    state = checkpoint(finished.out, 5)
    assert state["round"] == ROUNDS
    assert state["operative_config"] == (finished.out / "operative_config.gin").read_text()
    assert set(state) >= {"energy", "optimizer", "loader", "components", "rng"}
    assert state["components"]["initializer"]["buffer"].shape == (64, 2)
    assert checkpoint(finished.out, 4)["round"] == 4


def test_sample_pictures_are_png_files_at_the_sample_rounds(finished: FinishedRun) -> None:
    pictures = sorted((finished.out / "samples").iterdir())
    assert [path.name for path in pictures] == ["round-00000003.png", "round-00000005.png"]
    for path in pictures:
        assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_metrics_jsonl_holds_one_valid_json_line_per_log(finished: FinishedRun) -> None:
    lines = metrics_lines(finished.out)
    assert [line["round"] for line in lines] == [1, 2, 2, 3, 4, 4, 5, 5]
    scalars = [line for line in lines if "energy/gap" in line]
    assert [line["round"] for line in scalars] == [1, 2, 3, 4, 5]
    for line in scalars:
        assert line["sampler/step_size"] == float(np.float32(STEP_SIZE))
        # Langevin's budget: one gradient at init and one per step but the last.
        assert (line["sampler/grad_evals"], line["sampler/energy_evals"]) == (3.0, 0.0)
        assert line["sampler/flow_evals"] == 0.0
        assert line["loss/contrastive"] == -line["energy/gap"]
        total = np.float32(line["loss/contrastive"]) + np.float32(line["loss/regulariser"])
        assert np.float32(line["loss/total"]) == total
        assert line["grad_norm"] > 0
        assert line["perf/samples_per_s"] > 0
    evaluations = [line for line in lines if "metrics/grid_kl" in line]
    assert [line["round"] for line in evaluations] == [2, 4, 5]
    for line in evaluations:
        assert np.isfinite(line["metrics/grid_kl"]) and line["metrics/grid_kl"] > 0
        assert line["metrics/finite_fraction"] == 1.0
        assert "energy/gap" not in line


def test_tensorboard_events_hold_the_scalars(finished: FinishedRun) -> None:
    events = list((finished.out / "tb").iterdir())
    assert len(events) == 1 and events[0].name.startswith("events.out.tfevents.")
    accumulator = EventAccumulator(str(finished.out / "tb"), size_guidance={"scalars": 0})
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    assert tags >= SCALAR_TAGS
    jsonl = metrics_lines(finished.out)
    for tag in SCALAR_TAGS:
        logged = {line["round"]: line[tag] for line in jsonl if tag in line}
        events = {event.step: event.value for event in accumulator.Scalars(tag)}
        expected_steps = [2, 4, 5] if tag.startswith("metrics/") else [1, 2, 3, 4, 5]
        assert sorted(events) == expected_steps, tag
        if tag == "perf/samples_per_s":
            continue  # a rate: float32 of the same number, but checked for steps only
        for step, value in events.items():
            assert value == float(np.float32(logged[step])), (tag, step)


# -- bad input: one clear message, exit 1, nothing written -----------------------------------


def test_an_unknown_component_lists_the_registered_samplers(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        replace={
            "trainers.Contrastive.sampler = @samplers.Langevin()": (
                "trainers.Contrastive.sampler = @samplers.Langvin()"
            )
        },
    )
    out = tmp_path / "run"
    message = assert_one_clear_error(*run_cli(["run", str(config), "--out", str(out)]))
    assert message.startswith(f"in config {config}: No configurable matching reference ")
    assert "'@samplers.Langvin()'" in message
    assert f'In file "{config}", line 3\n' in message
    registered = ", ".join(
        f"{c.gin_name} ({c.plugin})" for c in get_registry().components("sampler")
    )
    assert message.endswith(f"\nregistered samplers: {registered}\n")
    assert "samplers.Langevin (ebmkit)" in registered and "samplers.MALA (ebmkit)" in registered
    assert not out.exists()


def test_a_misspelled_parameter_names_file_line_and_the_parameters(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        replace={"samplers.Langevin.step_size = 0.01": "samplers.Langevin.step_sze = 0.01"},
    )
    out = tmp_path / "run"
    message = assert_one_clear_error(*run_cli(["run", str(config), "--out", str(out)]))
    assert message.startswith(
        f"in config {config}: Configurable 'samplers.Langevin' doesn't have a parameter "
        f"named 'step_sze'."
    )
    assert f'In file "{config}", line 9\n    samplers.Langevin.step_sze = 0.01' in message
    parameters = "step_size, noise_scale, n_steps, grad_clip, clamp, compile"
    settable = [field.name for field in attrs.fields(Langevin) if field.init]
    assert settable == parameters.split(", ")
    assert message.endswith(f"\nits parameters are: {parameters}\n")
    assert not out.exists()


def test_a_misspelled_bind_is_reported_too(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    argv = [
        "run",
        str(config),
        "--out",
        str(tmp_path / "run"),
        "--bind",
        "samplers.MALA.stepsize = 1",
    ]
    message = assert_one_clear_error(*run_cli(argv))
    assert "Configurable 'samplers.MALA' doesn't have a parameter named 'stepsize'" in message
    assert "its parameters are: step_size, noise_scale, n_steps, grad_clip, adapt_steps" in message
    assert not (tmp_path / "run").exists()


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "missing.gin"
    out = tmp_path / "run"
    message = assert_one_clear_error(*run_cli(["run", str(missing), "--out", str(out)]))
    assert message.startswith(f"config file {missing} does not exist")
    assert not out.exists()
    message = assert_one_clear_error(*run_cli(["config", str(missing)]))
    assert message.startswith(f"config file {missing} does not exist")


def test_negative_rounds_are_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    argv = ["run", str(config), "--out", str(tmp_path / "run"), "--rounds", "-1"]
    message = assert_one_clear_error(*run_cli(argv))
    assert message == "--rounds must be >= 0, got -1\n"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_a_corrupt_checkpoint_is_named_and_left_alone_on_resume(
    finished: FinishedRun, run_copy: Path, damage: str
) -> None:
    latest = run_copy / "checkpoints" / "round-00000005.pt"
    original = latest.read_bytes()
    broken = {
        "garbage": bytes(range(256)) * 16,
        "truncated": original[: len(original) // 2],
        "empty": b"",
    }[damage]
    latest.write_bytes(broken)
    before = snapshot(run_copy)
    argv = ["run", str(finished.config), "--out", str(run_copy), "--resume", "--rounds", "7"]
    message = assert_one_clear_error(*run_cli(argv))
    assert message.startswith(f"checkpoint {latest} cannot be read (")
    assert "corrupt" in message
    assert latest.read_bytes() == broken
    assert snapshot(run_copy) == before
    assert sorted(p.name for p in (run_copy / "checkpoints").iterdir()) == [
        "round-00000004.pt",
        "round-00000005.pt",
    ]


def test_after_removing_a_corrupt_checkpoint_the_run_resumes_from_the_older_one(
    finished: FinishedRun, run_copy: Path
) -> None:
    latest = run_copy / "checkpoints" / "round-00000005.pt"
    latest.write_bytes(b"not a checkpoint")
    argv = ["run", str(finished.config), "--out", str(run_copy), "--resume", "--rounds", "6"]
    assert run_cli(argv)[0] == 1
    latest.unlink()
    status, out, _ = run_cli(argv)
    assert status == 0
    assert json.loads(out)["rounds"] == 6
    assert sorted(p.name for p in (run_copy / "checkpoints").iterdir()) == [
        "round-00000005.pt",
        "round-00000006.pt",
    ]
    rounds = [line["round"] for line in metrics_lines(run_copy) if "energy/gap" in line]
    assert rounds == [1, 2, 3, 4, 5, 6]  # round 5 of the first attempt was cut back: once each


def test_a_checkpoint_that_is_not_an_ebmkit_checkpoint_is_named(
    finished: FinishedRun, run_copy: Path
) -> None:
    latest = run_copy / "checkpoints" / "round-00000005.pt"
    torch.save({"weights": torch.zeros(3)}, latest)
    before = snapshot(run_copy)
    argv = ["run", str(finished.config), "--out", str(run_copy), "--resume"]
    message = assert_one_clear_error(*run_cli(argv))
    assert message.startswith(f"checkpoint {latest} is not an ebmkit checkpoint (no 'round'")
    assert snapshot(run_copy) == before


def test_running_again_into_a_run_with_checkpoints_changes_nothing(
    finished: FinishedRun, run_copy: Path
) -> None:
    before = snapshot(run_copy)
    argv = ["run", str(finished.config), "--out", str(run_copy), "--rounds", str(ROUNDS)]
    message = assert_one_clear_error(*run_cli(argv))
    assert message.startswith(f"{run_copy} already holds checkpoints (round-00000005.pt)")
    assert "--resume" in message
    assert snapshot(run_copy) == before


def test_resume_without_a_checkpoint_is_refused(finished: FinishedRun, tmp_path: Path) -> None:
    out = tmp_path / "fresh"
    argv = ["run", str(finished.config), "--out", str(out), "--resume"]
    message = assert_one_clear_error(*run_cli(argv))
    assert message.startswith(f"--resume: no checkpoint in {out / 'checkpoints'}")
    assert not out.exists()


@pytest.mark.parametrize(
    "bind", ["initializers.Replay.capacity = 32", "energies.MLP.hidden = (8,)"]
)
def test_resuming_with_a_config_that_does_not_match_the_checkpoint(
    finished: FinishedRun, run_copy: Path, bind: str
) -> None:
    before = snapshot(run_copy)
    argv = ["run", str(finished.config), "--out", str(run_copy), "--resume", "--bind", bind]
    argv += ["--bind", f"samplers.Langevin.step_size = {STEP_SIZE}", "--rounds", "7"]
    message = assert_one_clear_error(*run_cli(argv))
    latest = run_copy / "checkpoints" / "round-00000005.pt"
    # Refused before anything is built: the changed binding is listed, old → new.
    assert message.startswith("--resume: the config differs from the one the run was started")
    name, _, value = bind.partition(" = ")
    assert f"{name.split('.', 1)[1]}: " in message and f"→ {value}" in message
    assert "--accept-config-change" in message
    assert snapshot(run_copy) == before
    # Accepted on purpose, the checkpoint itself still cannot hold these shapes.
    status, out, err = run_cli([*argv, "--accept-config-change"])
    note, _, rest = err.partition("\n")
    assert note.startswith("ebmkit: note: continuing with a changed config (")
    message = assert_one_clear_error(status, out, rest)
    assert message.startswith(f"checkpoint {latest} does not fit this config (")
    assert "resume with the config and bindings the run was started with" in message
    assert snapshot(run_copy) == before


# -- `ebmkit config` -------------------------------------------------------------------------


def test_config_prints_the_resolved_bindings(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    argv = ["config", str(config), "--bind", "samplers.Langevin.step_size = 0.5"]
    status, out, err = run_cli(argv)
    assert (status, err) == (0, "")
    lines = set(out.splitlines())
    assert "Langevin.step_size = 0.5" in lines
    assert "Langevin.n_steps = 3" in lines
    assert "Contrastive.n_rounds = 1000" in lines
    assert "experiment.trainer = @trainers.Contrastive()" in lines
    assert "Noise.shape = (2,)" in lines  # from the included toy.gin
    assert mlp_hidden((16, 16)) & lines  # the config overrides toy.gin's (128, 128, 128)
    assert not mlp_hidden((128, 128, 128)) & lines
    assert not (tmp_path / "runs").exists()


def test_config_prints_the_error_of_a_bad_config(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        replace={"initializers.Replay.capacity = 64": "initializers.Replay.capacty = 64"},
    )
    message = assert_one_clear_error(*run_cli(["config", str(config)]))
    assert message.startswith(
        f"in config {config}: Configurable 'initializers.Replay' doesn't have a parameter "
        f"named 'capacty'."
    )
    assert f'In file "{config}", line 12\n' in message
    assert message.endswith("\nits parameters are: noise, capacity, reinit_prob\n")


# -- the console script, end to end ----------------------------------------------------------


@pytest.mark.slow
def test_the_console_script_runs_a_config_into_runs_name(tmp_path: Path) -> None:
    config = write_config(tmp_path, name="tiny_e2e.gin")
    completed = subprocess.run(
        [*console_script(), "run", config.name, "--rounds", "2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    summary = json.loads(completed.stdout)
    run = tmp_path / "runs" / "tiny_e2e"
    assert summary["run_dir"] == str(Path("runs") / "tiny_e2e")
    assert summary["rounds"] == 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "round-00000001.pt",
        "round-00000002.pt",
    ]
    assert "Contrastive.n_rounds = 2" in (run / "operative_config.gin").read_text()
    assert [line["round"] for line in metrics_lines(run)] == [1, 2, 2]
    again = subprocess.run(
        [*console_script(), "run", config.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    assert again.returncode == 1
    assert again.stdout == ""
    assert again.stderr.startswith("ebmkit: error: runs/tiny_e2e already holds checkpoints")
    assert "Traceback" not in again.stderr


def test_the_console_script_prints_a_config_in_a_fresh_process(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    completed = subprocess.run(
        [*console_script(), "config", str(config)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert "experiment.trainer = @trainers.Contrastive()" in completed.stdout.splitlines()
