"""Metrics and pictures leave the energy's buffers alone: a spectral-norm energy's power
iteration (saved in checkpoints) is not advanced by an evaluation, so a run stopped off the
evaluation cadence and resumed equals the uninterrupted one (found with Dual-MCMC's toys)."""

from __future__ import annotations

from pathlib import Path

import torch
from helpers import TOY_GIN, checkpoint, first_difference, run_cli, write_lines

from ebmkit.energies.mlp import MLPEnergy
from ebmkit.runs.observer import buffers_kept


def test_buffers_are_put_back_after_a_training_mode_pass() -> None:
    energy = MLPEnergy(hidden=(8,), spectral_norm=True)
    before = {name: value.clone() for name, value in energy.named_buffers()}
    assert before  # spectral norm keeps its power-iteration vectors as buffers
    with buffers_kept([energy]):
        energy(torch.randn(4, 2))
        moved = any(not torch.equal(value, before[name]) for name, value in energy.named_buffers())
    assert moved  # without the guard the pass changes them
    assert all(torch.equal(value, before[name]) for name, value in energy.named_buffers())


def test_a_spectral_norm_run_resumed_off_the_eval_cadence_equals_the_straight_one(
    tmp_path: Path,
) -> None:
    config = write_lines(
        tmp_path,
        "sn.gin",
        [
            f"include '{TOY_GIN}'",
            "trainers.Contrastive.dataset = @datasets.EightGaussians()",
            "trainers.Contrastive.sampler = @samplers.Langevin()",
            "trainers.Contrastive.initializer = @initializers.Noise()",
            "trainers.Contrastive.batch_size = 32",
            "samplers.Langevin.step_size = 0.01",
            "samplers.Langevin.n_steps = 3",
            "energies.MLP.hidden = (16, 16)",
            "energies.MLP.spectral_norm = True",
            "datasets.EightGaussians.n_samples = 256",
            "experiment.eval_every = 5",
            "experiment.sample_every = 5",
            "experiment.checkpoint_every = 1",
        ],
    )
    straight, parts = tmp_path / "straight", tmp_path / "parts"
    for out, rounds, extra in ((straight, 3, []), (parts, 2, []), (parts, 3, ["--resume"])):
        argv = ["run", str(config), "--out", str(out), "--rounds", str(rounds), *extra]
        status, _, err = run_cli(argv)
        assert status == 0, err[-2000:]
    a, b = checkpoint(straight, 3), checkpoint(parts, 3)
    for part in ("energy", "optimizer", "rng"):
        assert first_difference(a[part], b[part]) is None, part
