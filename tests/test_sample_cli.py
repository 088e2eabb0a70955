"""`ebmkit sample`: rebuild a run from its checkpoint's operative config and write samples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ebmkit.runs.experiment  # noqa: F401 - defines the `experiment` configurable
from ebmkit.checkpoint.files import load_checkpoint
from ebmkit.cli import main
from ebmkit.errors import ConfigError
from ebmkit.records import InitBatch
from ebmkit.runs.draw import build_parts, parse_config_string
from ebmkit.samplers.mala import MALA

POINTS_CONFIG = """
experiment.trainer = @trainers.Contrastive()
experiment.log_every = 1
experiment.checkpoint_every = 1
trainers.Contrastive.energy = @energies.MLP()
trainers.Contrastive.dataset = @datasets.EightGaussians()
trainers.Contrastive.sampler = @samplers.Langevin()
trainers.Contrastive.initializer = @initializers.Replay()
trainers.Contrastive.batch_size = 16
trainers.Contrastive.n_rounds = 1000
energies.MLP.hidden = (8, 8)
datasets.EightGaussians.n_samples = 64
samplers.Langevin.step_size = 0.01
samplers.Langevin.n_steps = 3
initializers.Replay.noise = @initializers.Noise()
initializers.Replay.capacity = 32
initializers.Replay.reinit_prob = 0.0
initializers.Noise.shape = (2,)
"""

IMAGE_CONFIG = """
experiment.trainer = @trainers.Contrastive()
experiment.sample_every = 2
trainers.Contrastive.energy = @energies.ResNet()
trainers.Contrastive.dataset = @datasets.Digits()
trainers.Contrastive.sampler = @samplers.Langevin()
trainers.Contrastive.initializer = @initializers.Noise()
trainers.Contrastive.batch_size = 8
trainers.Contrastive.n_rounds = 1000
energies.ResNet.in_channels = 1
energies.ResNet.widths = (4, 8)
energies.ResNet.blocks_per_stage = 1
samplers.Langevin.step_size = 1.0
samplers.Langevin.noise_scale = 0.01
samplers.Langevin.n_steps = 2
initializers.Noise.shape = (1, 8, 8)
"""


PERSISTENT_CONFIG = (
    POINTS_CONFIG.replace("@samplers.Langevin()", "@samplers.MALA()")
    .replace("@initializers.Replay()", "@initializers.Persistent()")
    .replace("samplers.Langevin.", "samplers.MALA.")
    .replace("initializers.Replay.noise", "initializers.Persistent.start")
    .replace("initializers.Replay.capacity = 32", "initializers.Persistent.n_chains = 32")
    .replace("initializers.Replay.reinit_prob = 0.0\n", "samplers.MALA.adapt_steps = 4\n")
)


def _train(tmp_path: Path, text: str, name: str) -> Path:
    config = tmp_path / f"{name}.gin"
    config.write_text(text)
    run = tmp_path / name
    assert main(["run", str(config), "--rounds", "2", "--out", str(run)]) == 0
    return run


@pytest.fixture(scope="module")
def points_run(tmp_path_factory) -> Path:
    """One tiny trained 2-D run, shared: the tests only read it."""
    return _train(tmp_path_factory.mktemp("runs"), POINTS_CONFIG, "points")


def _sample(run: Path, out: Path, *extra: str) -> int:
    return main(["sample", str(run), "--out", str(out), *extra])


def test_points_are_written_as_npy_and_reproducible(points_run, tmp_path, capsys):
    capsys.readouterr()
    assert _sample(points_run, tmp_path / "a", "--n", "10", "--steps", "2") == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["kind"] == "points" and summary["round"] == 2 and summary["n"] == 10
    assert f"wrote 10 points to {tmp_path / 'a'}" in captured.err
    samples = np.load(tmp_path / "a" / "samples.npy")
    assert samples.shape == (10, 2) and np.isfinite(samples).all()
    checkpoint = points_run / "checkpoints" / "round-00000002.pt"
    assert _sample(checkpoint, tmp_path / "b", "--n", "10", "--steps", "2") == 0
    np.testing.assert_array_equal(np.load(tmp_path / "b" / "samples.npy"), samples)
    assert _sample(points_run, tmp_path / "c", "--n", "10", "--steps", "2", "--seed", "1") == 0
    assert not np.array_equal(np.load(tmp_path / "c" / "samples.npy"), samples)


def test_the_checkpoint_state_is_what_samples_come_from(points_run, tmp_path):
    state = load_checkpoint(points_run / "checkpoints" / "round-00000002.pt")
    parts = build_parts(state, "the test checkpoint")
    for name, tensor in parts.energy.state_dict().items():
        assert torch.equal(tensor, state["energy"][name]), name
    assert parts.n_steps is None and parts.batch_size == 16
    # Zero steps from the loaded replay buffer (reinit_prob 0): rows of the stored buffer.
    assert _sample(points_run, tmp_path / "zero", "--n", "5", "--steps", "0") == 0
    samples = torch.from_numpy(np.load(tmp_path / "zero" / "samples.npy"))
    buffer = state["components"]["initializer"]["buffer"]
    assert all((buffer == row).all(dim=1).any() for row in samples)


def test_images_are_written_as_png_files(tmp_path, capsys):
    run = _train(tmp_path, IMAGE_CONFIG, "digits")
    assert (run / "samples" / "round-00000002.png").is_file()
    out = tmp_path / "pictures"
    capsys.readouterr()
    assert _sample(run, out, "--n", "5", "--batch-size", "2") == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "images"
    files = sorted(out.glob("sample-*.png"))
    assert [f.name for f in files] == [f"sample-{i:06d}.png" for i in range(5)]
    with Image.open(files[0]) as image:
        assert image.size == (8, 8)


def test_sample_errors_are_one_clear_line(points_run, tmp_path, capsys):
    assert _sample(tmp_path / "nothing", tmp_path / "x") == 1
    assert "no checkpoint at" in capsys.readouterr().err
    assert _sample(points_run, tmp_path / "twice", "--n", "2") == 0
    assert _sample(points_run, tmp_path / "twice", "--n", "2") == 1
    assert "already holds samples" in capsys.readouterr().err
    assert _sample(points_run, tmp_path / "y", "--n", "0") == 1
    assert "--n must be >= 1, got 0" in capsys.readouterr().err


def test_an_operative_config_naming_an_unknown_component_says_so():
    with pytest.raises(ConfigError, match="cannot rebuild the run from the test config"):
        parse_config_string("experiment.trainer = @trainers.Nope()", origin="the test config")


def test_persistent_chains_are_sampled_with_their_state(tmp_path, monkeypatch):
    """`ebmkit sample` hands the sampler the whole InitBatch: chains of a persistent bank
    continue with the adapted step sizes the checkpoint holds, not from scratch."""
    run = _train(tmp_path, PERSISTENT_CONFIG, "persistent")
    bank = load_checkpoint(run / "checkpoints" / "round-00000002.pt")["components"]["initializer"]
    starts = []
    original = MALA.sample

    def recording(self, energy, start, n_steps=None, **options):
        starts.append(start)
        return original(self, energy, start, n_steps, **options)

    monkeypatch.setattr(MALA, "sample", recording)
    assert _sample(run, tmp_path / "out", "--n", "20", "--steps", "2") == 0
    assert [len(start.x) for start in starts] == [16, 4]
    for start in starts:
        assert isinstance(start, InitBatch) and start.state is not None
        assert torch.equal(start.x, bank["positions"][start.indices])
        assert torch.equal(start.state.step_size, bank["step_sizes"][start.indices])
        assert torch.equal(start.state.owned["age"], bank["owned"]["age"][start.indices])
    # The two training rounds ran chains 0-15, then 16-31, 3 adapting steps each.
    assert bank["step_sizes"].isfinite().all() and (bank["step_sizes"] != 0.01).all()
    assert bank["owned"]["age"].eq(3).all()
