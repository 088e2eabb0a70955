"""Output folders and the messages around them (issue 10, items 6-8): a bad `--out` is one
`ebmkit: error:` line, checkpoints leave no temporaries and get the usual file mode, and a
refused setting names its parameter, the value and the `--bind` or line that set it."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import TOY_GIN, ended_pid, file_hashes, run_cli, run_console_script, write_lines

from ebmkit.checkpoint.files import remove_orphaned_temporaries, save_checkpoint
from ebmkit.config import explain_build_error, parse_config
from ebmkit.errors import EbmkitError, OutputPathError
from ebmkit.runs import folders
from ebmkit.runs.draw import write_samples
from ebmkit.runs.experiment import Experiment
from ebmkit.runs.folders import check_run_dir, prepare_run_dir

pytestmark = pytest.mark.usefixtures("builtin_registry")

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def toy_config(folder: Path, *extra: str) -> Path:
    """A two-round eight-Gaussians run small enough to start many times."""
    return write_lines(
        folder,
        "toy.gin",
        [
            f"include '{TOY_GIN}'",
            "trainers.Contrastive.dataset = @datasets.EightGaussians()",
            "trainers.Contrastive.sampler = @samplers.Langevin()",
            "trainers.Contrastive.initializer = @initializers.Noise()",
            "trainers.Contrastive.batch_size = 16",
            "trainers.Contrastive.n_rounds = 2",
            "energies.MLP.hidden = (8, 8)",
            "datasets.EightGaussians.n_samples = 64",
            "samplers.Langevin.step_size = 0.01",
            "samplers.Langevin.n_steps = 2",
            "experiment.log_every = 1",
            "experiment.eval_every = 1000",
            "experiment.sample_every = 1000",
            "experiment.checkpoint_every = 1",
            *extra,
        ],
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The message of a command that failed with exactly one `ebmkit: error:` line."""
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ebmkit: error: "), result.stderr
    return lines[0].removeprefix("ebmkit: error: ")


# -- ebmkit run --out -------------------------------------------------------------------------


def test_run_with_out_naming_a_file_is_one_error_line(tmp_path: Path) -> None:
    config = toy_config(tmp_path)
    taken = tmp_path / "taken"
    taken.write_text("the user's notes\n")
    message = one_error_line(run_console_script(["run", str(config), "--out", str(taken)]))
    assert message == (
        f"--out {taken}: a file named {taken} exists where the run folder should be; choose "
        f"another --out, or move that file away"
    )
    assert taken.read_text() == "the user's notes\n"
    inside = taken / "run"
    message = one_error_line(run_console_script(["run", str(config), "--out", str(inside)]))
    assert message == (
        f"--out {inside}: a file named {taken} exists where a folder should be; choose "
        f"another --out, or move that file away"
    )
    assert taken.read_text() == "the user's notes\n"


@contextlib.contextmanager
def unwritable(folder: Path) -> Iterator[list[str]]:
    """`folder` made unwritable for the console script; yields the prefix its command needs.

    Not root: mode 0555. Root (permissions do not bind it): the immutable flag (chattr +i),
    else a read-only tmpfs mounted over it in a private mount namespace; neither: skip.
    """
    folder.mkdir()
    if not AS_ROOT:
        folder.chmod(0o555)
        try:
            yield []
        finally:
            folder.chmod(0o755)
        return
    chattr = shutil.which("chattr")
    if chattr and subprocess.run([chattr, "+i", str(folder)], capture_output=True).returncode == 0:
        try:
            yield []
        finally:
            subprocess.run([chattr, "-i", str(folder)], check=True)
        return
    unshare = shutil.which("unshare")
    mount = 'mount -t tmpfs -o ro tmpfs "$0" && exec "$@"'
    probe = [unshare or "unshare", "--mount", "sh", "-c", mount, str(folder), "true"]
    if unshare is None or subprocess.run(probe, capture_output=True).returncode != 0:
        pytest.skip("running as root without chattr or mount namespaces: nothing is unwritable")
    yield [unshare, "--mount", "sh", "-c", mount, str(folder)]


def test_run_into_an_unwritable_folder_is_one_error_line_and_touches_nothing(
    tmp_path: Path,
) -> None:
    config = toy_config(tmp_path)
    locked = tmp_path / "locked"
    with unwritable(locked) as prefix:
        for out in (locked, locked / "run"):  # the folder itself, and a new one inside it
            argv = ["run", str(config), "--out", str(out)]
            message = one_error_line(run_console_script(argv, prefix=prefix))
            assert message.startswith(f"--out {out}: "), message
            cause = "is on a read-only filesystem" if prefix else "permission denied: "
            assert cause in message
            assert "choose another --out" in message
    assert list(locked.iterdir()) == []


def test_folder_errors_name_the_path_the_cause_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each errno the OS can give: permission, read-only filesystem, disk full, other."""
    out = tmp_path / "run"
    cases = {
        errno.EACCES: f"--out {out}: permission denied: {out} is not writable by user ",
        errno.EROFS: f"--out {out}: {out} is on a read-only filesystem; choose another --out",
        errno.ENOSPC: f"--out {out}: no space left on the disk holding {out} (",
        errno.EIO: f"--out {out}: cannot write the run folder (Input/output error); choose",
    }
    for code, expected in cases.items():

        def fail(folder: Path, code: int = code) -> None:
            raise OSError(code, os.strerror(code), str(folder / ".probe"))

        monkeypatch.setattr(folders, "check_writable", fail)
        with pytest.raises(OutputPathError) as caught:
            prepare_run_dir(out)
        assert str(caught.value).startswith(expected), str(caught.value)
    assert str(caught.value).endswith("choose another --out")


def test_check_run_dir_refuses_a_file_in_the_way_without_creating_anything(
    tmp_path: Path,
) -> None:
    (tmp_path / "taken").write_text("")
    with pytest.raises(OutputPathError, match="a file named .*taken exists where a folder"):
        check_run_dir(tmp_path / "taken" / "deeper" / "run")
    check_run_dir(tmp_path / "new" / "run")
    assert not (tmp_path / "new").exists()


# -- ebmkit sample --out, eval fid --save-stats -----------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("trained")
    status, _, err = run_cli(["run", str(toy_config(folder)), "--out", str(folder / "run")])
    assert status == 0, err
    return folder / "run"


def test_sample_with_out_naming_a_file_is_one_error_line(
    trained_run: Path, tmp_path: Path
) -> None:
    before = file_hashes(trained_run)
    taken = tmp_path / "taken.png"
    taken.write_bytes(b"not a folder")
    for out, where in ((taken, "the sample folder"), (taken / "more", "a folder")):
        argv = ["sample", str(trained_run), "--n", "4", "--out", str(out)]
        message = one_error_line(run_console_script(argv))
        assert message == (
            f"--out {out}: a file named {taken} exists where {where} should be; choose "
            f"another --out, or move that file away"
        )
    assert taken.read_bytes() == b"not a folder"
    assert file_hashes(trained_run) == before


def test_a_disk_that_fills_while_writing_samples_says_how_many_were_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision.utils

    written: list[Path] = []

    def save_image(image: torch.Tensor, path: Path) -> None:
        if len(written) == 2:
            Path(path).write_bytes(b"half a png")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        Path(path).write_bytes(b"png")
        written.append(Path(path))

    monkeypatch.setattr(torchvision.utils, "save_image", save_image)
    out = tmp_path / "samples"
    with pytest.raises(OutputPathError) as caught:
        write_samples(torch.zeros(4, 3, 8, 8), out)
    message = str(caught.value)
    assert message.startswith(f"--out {out}: no space left on the disk holding {out} (")
    assert message.endswith("(2 of 4 samples were written before it failed)")
    assert sorted(p.name for p in out.iterdir()) == ["sample-000000.png", "sample-000001.png"]


def test_save_stats_in_the_way_of_a_file_or_a_folder_fails_before_any_work(
    tmp_path: Path,
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (tmp_path / "taken").write_text("")
    (tmp_path / "folder.npz").mkdir()
    argv = ["eval", "fid", "--samples", str(images), "--reference", str(images)]
    cases = {
        tmp_path / "taken" / "stats.npz": "a file named {taken} exists where a folder should be",
        tmp_path / "folder.npz": "a folder named {stats} exists where the statistics file",
        tmp_path / "stats.np": "--save-stats must name an .npz file",
    }
    for stats, expected in cases.items():
        status, out, err = run_cli([*argv, "--random-weights", "--save-stats", str(stats)])
        assert status == 1 and out == "" and err.count("\n") == 1, err
        assert expected.format(taken=tmp_path / "taken", stats=stats) in err  # before "no images"


# -- checkpoint files -------------------------------------------------------------------------


def test_orphaned_temporary_checkpoints_are_removed(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    save_checkpoint({"round": 1}, folder, 1, keep=3)
    orphans = [
        folder / ".tmp-k2j4x9q1.pt",  # tempfile.mkstemp's names, before the PID was in them
        folder / f".tmp-{ended_pid()}-0123abcd.pt",  # its writer has exited
        folder / f".tmp-{os.getpid()}-89abcdef.pt",
    ]
    with subprocess.Popen(["sleep", "30"]) as alive:
        busy = folder / f".tmp-{alive.pid}-fedcba98.pt"  # another live writer: kept
        for path in [*orphans, busy]:
            path.write_bytes(b"half a checkpoint")
        assert sorted(remove_orphaned_temporaries(folder)) == sorted(orphans)
        alive.kill()
    assert sorted(p.name for p in folder.iterdir()) == [busy.name, "round-00000001.pt"]
    assert remove_orphaned_temporaries(tmp_path / "absent") == []


def test_a_run_started_after_a_kill_mid_write_removes_the_temporary(tmp_path: Path) -> None:
    config = toy_config(tmp_path)
    out = tmp_path / "run"
    status, _, err = run_cli(["run", str(config), "--out", str(out), "--rounds", "1"])
    assert status == 0, err
    orphan = out / "checkpoints" / ".tmp-k2j4x9q1.pt"
    orphan.write_bytes(b"half a checkpoint")
    kept = file_hashes(out / "checkpoints")
    status, _, err = run_cli(["run", str(config), "--out", str(out), "--rounds", "2", "--resume"])
    assert status == 0, err
    assert not orphan.exists()
    del kept[orphan.name]
    after = file_hashes(out / "checkpoints")
    assert {name: after[name] for name in kept} == kept  # round 1 byte-identical
    assert sorted(after) == ["round-00000001.pt", "round-00000002.pt"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_checkpoints_get_the_mode_the_umask_gives_every_file(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        path = save_checkpoint({"round": 3}, tmp_path / "checkpoints", 3, keep=1)
        other = tmp_path / "metrics.jsonl"
        other.write_text("{}\n")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask == other.stat().st_mode & 0o777


def test_a_run_writes_its_checkpoints_0644_like_its_other_files(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        status, _, err = run_cli(["run", str(toy_config(tmp_path)), "--out", str(tmp_path / "r")])
    finally:
        os.umask(previous)
    assert status == 0, err
    checkpoints = sorted((tmp_path / "r" / "checkpoints").iterdir())
    assert checkpoints and {p.stat().st_mode & 0o777 for p in checkpoints} == {0o644}
    assert (tmp_path / "r" / "operative_config.gin").stat().st_mode & 0o777 == 0o644


# -- refused settings -------------------------------------------------------------------------


def test_a_wrong_type_in_a_bind_names_the_parameter_the_value_and_the_bind(
    tmp_path: Path,
) -> None:
    config = toy_config(tmp_path)
    out = tmp_path / "run"
    bind = 'samplers.Langevin.n_steps = "x"'
    status, stdout, err = run_cli(["run", str(config), "--out", str(out), "--bind", bind])
    assert status == 1 and stdout == ""
    assert err == (
        f"ebmkit: error: --bind '{bind}': samplers.Langevin.n_steps = 'x' is refused ('>=' not "
        f"supported between instances of 'str' and 'int'); samplers.Langevin.n_steps takes int "
        f"(default 100); fix that --bind\n"
    )
    assert not out.exists()


def test_a_wrong_type_in_the_file_names_its_line(tmp_path: Path) -> None:
    config = toy_config(tmp_path, "samplers.Langevin.step_size = 'small'")
    line = len(config.read_text().splitlines())
    parse_config(config)
    with pytest.raises(ValueError) as caught:
        Experiment()
    message = str(explain_build_error(caught.value, config, ()))
    assert message == (
        f"in config {config}, line {line} (samplers.Langevin.step_size = 'small'): "
        f"samplers.Langevin.step_size = 'small' is refused (could not convert string to "
        f"float: 'small'); samplers.Langevin.step_size takes float; fix that line"
    )


def test_an_unknown_choice_reads_one_of_not_an_attrs_dump(tmp_path: Path) -> None:
    config = toy_config(tmp_path)
    bind = "experiment.on_divergence = 'rollbak'"
    status, _, err = run_cli(["run", str(config), "--out", str(tmp_path / "run"), "--bind", bind])
    assert status == 1
    assert err == (
        f'ebmkit: error: --bind "{bind}": experiment.on_divergence must be one of '
        f"('stop', 'rollback'), got 'rollbak'; fix that --bind\n"
    )
    with pytest.raises(ValueError) as caught:  # in Python (gin adds its "In call to" line)
        Experiment(trainer=None, on_divergence="rollbak")
    first_line = str(caught.value).splitlines()[0]
    assert first_line == "on_divergence must be one of ('stop', 'rollback'), got 'rollbak'"


@pytest.mark.parametrize(
    ("binding", "expected"),
    [
        (
            "initializers.Noise.distribution = 'normal'",
            "initializers.Noise.distribution must be one of ('uniform', 'gaussian'), got 'normal'",
        ),
        (
            "trainers.Contrastive.learn_order = 'last'",
            "trainers.Contrastive.learn_order must be one of ('after_energy_step', "
            "'before_energy_step'), got 'last'",
        ),
        ("samplers.Langevin.n_steps = -1", "samplers.Langevin.n_steps must be >= 0: -1"),
    ],
    ids=["distribution", "learn_order", "n_steps"],
)
def test_every_refused_setting_is_named_in_full(
    tmp_path: Path, binding: str, expected: str
) -> None:
    config = toy_config(tmp_path)
    parse_config(config, [binding])
    with pytest.raises((TypeError, ValueError)) as caught:
        Experiment()
    error = explain_build_error(caught.value, config, [binding])
    assert isinstance(error, EbmkitError)
    assert str(error).endswith(f": {expected}; fix that --bind")
    assert "Attribute(" not in str(error) and "In call to configurable" not in str(error)
