"""A mistake in a config or a `--bind` leaves one clear line (issue 17, item 5): a value gin
cannot parse names the `--bind` and the value forms gin reads; a `--bind` to a component the
run never builds says so when the run starts; an error a component raises while running is
one `ebmkit: error:` line naming the component (a traceback only with --debug)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import TOY_GIN, run_cli, write_lines

from ebmkit.cli import DEBUG_ENV

pytestmark = pytest.mark.usefixtures("builtin_registry")

LANGEVIN = Path(__file__).resolve().parents[1] / "gin" / "langevin_eight_gaussians.gin"
LINES = [
    f"include '{TOY_GIN}'",
    "trainers.Contrastive.dataset = @datasets.EightGaussians()",
    "trainers.Contrastive.sampler = @samplers.Langevin()",
    "trainers.Contrastive.initializer = @initializers.Replay()",
    "trainers.Contrastive.batch_size = 16",
    "trainers.Contrastive.n_rounds = 1",
    "energies.MLP.hidden = (8,)",
    "datasets.EightGaussians.n_samples = 64",
    "samplers.Langevin.n_steps = 2",
    "samplers.Langevin.step_size = 0.01",
    "initializers.Replay.noise = @initializers.Noise()",
    "initializers.Replay.capacity = 32",
    "experiment.eval_every = 1000",
    "experiment.sample_every = 1000",
]


@pytest.mark.parametrize(
    ("binding", "problem"),
    [
        ("samplers.Langevin.step_size = ", "no value after '=' for samplers.Langevin.step_size"),
        ('samplers.Langevin.step_size = float("nan")', "'float' in 'float(\"nan\")' is not a"),
        ("samplers.Langevin.step_size = 1e-2 3", "the value '1e-2 3' does not parse"),
        ("samplers.Langevin.step_size", "it has no '='"),
    ],
)
def test_a_bind_that_does_not_parse_is_named_with_the_forms_gin_reads(
    binding: str, problem: str, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    status, _, err = run_cli(["run", str(LANGEVIN), "--out", str(out), "--bind", binding])
    assert status == 1 and err.count("ebmkit: error:") == 1 and len(err.splitlines()) == 1
    assert err.startswith(f"ebmkit: error: --bind '{binding}': {problem}")
    assert "gin reads these values: numbers (0.01, 1e-3, 100), 'strings'" in err
    assert "<ast." not in err and "line 1" not in err and str(LANGEVIN) not in err
    assert not out.exists()  # refused before the run folder was made


@pytest.mark.parametrize(
    "binding",
    ["samplers.MALA.step_size = 0.1", "initializers.Persistent.n_chains = 10"],
)
def test_a_bind_to_a_component_the_run_never_builds_is_noted_once(
    binding: str, tmp_path: Path
) -> None:
    config = write_lines(tmp_path, "toy.gin", LINES)
    used = "samplers.Langevin.step_size = 0.02"
    argv = ["run", str(config), "--out", str(tmp_path / "run"), "--bind", binding]
    status, _, err = run_cli([*argv, "--bind", used])
    assert status == 0, err
    notes = [line for line in err.splitlines() if line.startswith("ebmkit: note: --bind")]
    assert notes == [
        f"ebmkit: note: --bind {binding!r} has no effect: this run never builds that component "
        f"(its operative_config.gin lists the ones it builds)"
    ]


def test_binds_the_run_uses_and_the_shared_fragments_stay_quiet(tmp_path: Path) -> None:
    """gin/base/toy.gin binds components this config does not build: no note for those."""
    config = write_lines(tmp_path, "toy.gin", LINES)
    argv = ["run", str(config), "--out", str(tmp_path / "run")]
    status, _, err = run_cli([*argv, "--bind", "initializers.Noise.low = -2.0"])
    assert status == 0, err
    assert "ebmkit: note: --bind" not in err


def test_an_error_a_component_raises_while_running_is_one_line_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernel's own check fails inside round 1: one line naming samplers.Langevin."""
    from ebmkit.samplers.langevin import Langevin

    def broken_step(self: Langevin, *args: object, **kwargs: object) -> None:
        raise RuntimeError("the kernel's own check failed")

    monkeypatch.setattr(Langevin, "step", broken_step)
    config = write_lines(tmp_path, "toy.gin", LINES)
    status, _, err = run_cli(["run", str(config), "--out", str(tmp_path / "run")])
    assert status == 1 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "ebmkit: error:" in line]
    assert line.endswith(
        "ebmkit: error: in samplers.Langevin: the kernel's own check failed (RuntimeError; "
        f"rerun with --debug, or {DEBUG_ENV}=1, for the traceback)"
    )
    with pytest.raises(RuntimeError, match="the kernel's own check failed"):
        run_cli(["--debug", "run", str(config), "--out", str(tmp_path / "debug")])


def test_a_persistent_bank_smaller_than_the_batch_is_one_line_and_the_folder_takes_the_fix(
    tmp_path: Path,
) -> None:
    """Refused when the trainer is built (not in round 1 with a traceback), before the run
    folder gets any log: the corrected run then goes into the same folder as is."""
    config, out = write_lines(tmp_path, "toy.gin", LINES), tmp_path / "run"
    persistent = [
        "--bind",
        "trainers.Contrastive.initializer = @initializers.Persistent()",
        "--bind",
        "initializers.Persistent.start = @initializers.Noise()",
    ]
    argv = ["run", str(config), "--out", str(out), *persistent]
    status, _, err = run_cli([*argv, "--bind", "initializers.Persistent.n_chains = 10"])
    assert status == 1 and len(err.splitlines()) == 1, err
    assert err == (
        "ebmkit: error: initializers.Persistent.n_chains = 10 is smaller than the batch a round "
        "draws (16 chains); set initializers.Persistent.n_chains >= 16, or a smaller batch_size "
        "on the trainer\n"
    )
    assert not out.exists()
    status, _, err = run_cli([*argv, "--bind", "initializers.Persistent.n_chains = 16"])
    assert status == 0, err
