"""A resume that accepts a changed learning rate (or betas, weight decay) trains with the new
one: the checkpoint's optimizer state must not silently put the old settings back."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import FLOW_TOY_LINES, checkpoint, run_cli, write_lines

from ebmkit.checkpoint.optimizer_settings import (
    OptimizerSlot,
    apply_configured,
    configured_settings,
)


def adam(lr: float, gamma: float | None = None, betas=(0.0, 0.999)) -> OptimizerSlot:
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.Adam([weight], lr=lr, betas=betas)
    scheduler = None
    if gamma is not None:
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma)
    return OptimizerSlot("the energy's optimizer", optimizer, scheduler)


def train(slot: OptimizerSlot, steps: int) -> None:
    for _ in range(steps):
        slot.optimizer.zero_grad()
        slot.optimizer.param_groups[0]["params"][0].sum().backward()
        slot.optimizer.step()
        if slot.scheduler is not None:
            slot.scheduler.step()


def resumed(saved: OptimizerSlot, fresh: OptimizerSlot) -> list[str]:
    """Load `saved`'s state into `fresh` as a resume does, then apply fresh's config."""
    wanted = configured_settings(fresh.optimizer)
    fresh.optimizer.load_state_dict(saved.optimizer.state_dict())
    if saved.scheduler is not None:
        fresh.scheduler.load_state_dict(saved.scheduler.state_dict())
    return apply_configured(fresh, wanted)


def test_a_new_learning_rate_replaces_the_saved_one_and_keeps_adams_moments() -> None:
    saved = adam(1e-2)
    train(saved, 3)
    fresh = adam(5e-3, betas=(0.5, 0.999))
    changes = resumed(saved, fresh)
    group = fresh.optimizer.param_groups[0]
    assert group["lr"] == 5e-3 and group["betas"] == (0.5, 0.999)
    assert changes == [
        "the energy's optimizer: lr 0.01 → 0.005",
        "the energy's optimizer: betas (0.0, 0.999) → (0.5, 0.999)",
    ]
    moments = fresh.optimizer.state_dict()["state"][0]["exp_avg_sq"]
    assert torch.equal(moments, saved.optimizer.state_dict()["state"][0]["exp_avg_sq"])


def test_a_scheduled_rate_goes_on_from_where_it_was_at_the_new_scale() -> None:
    saved = adam(1e-2, gamma=0.5)
    train(saved, 3)  # lr 1e-2 · 0.5³
    fresh = adam(4e-2, gamma=0.5)
    assert resumed(saved, fresh) == ["the energy's optimizer: lr 0.01 → 0.04"]
    assert fresh.optimizer.param_groups[0]["lr"] == pytest.approx(4e-2 * 0.5**3, rel=1e-12)
    assert fresh.scheduler.base_lrs == [4e-2]
    train(fresh, 1)
    assert fresh.scheduler.get_last_lr() == [pytest.approx(4e-2 * 0.5**4, rel=1e-12)]


def test_unchanged_settings_change_nothing() -> None:
    saved = adam(1e-2, gamma=0.9)
    train(saved, 4)
    fresh = adam(1e-2, gamma=0.9)
    assert resumed(saved, fresh) == []
    assert fresh.optimizer.state_dict() == saved.optimizer.state_dict()


def flow_config(folder: Path) -> Path:
    return write_lines(
        folder,
        "lr.gin",
        [
            *FLOW_TOY_LINES,
            "trainers.Contrastive.learning_rate = 1e-3",
            "trainers.Contrastive.scheduler = @torch.optim.lr_scheduler.ExponentialLR",
            "torch.optim.lr_scheduler.ExponentialLR.gamma = 0.5",
            "flows.Affine.learning_rate = 1e-3",
            "experiment.eval_every = 100000",
            "experiment.sample_every = 100000",
            "experiment.checkpoint_every = 1",
            "experiment.keep_checkpoints = 100",
        ],
    )


@pytest.mark.usefixtures("builtin_registry")
def test_resume_with_an_accepted_new_learning_rate_trains_with_it(tmp_path: Path) -> None:
    config, run = flow_config(tmp_path), tmp_path / "run"
    status, _, err = run_cli(["run", str(config), "--out", str(run), "--rounds", "2"])
    assert status == 0, err
    new_rates = [
        "--bind",
        "trainers.Contrastive.learning_rate = 4e-3",
        "--bind",
        "flows.Affine.learning_rate = 2e-4",
    ]
    argv = ["run", str(config), "--out", str(run), "--resume", "--rounds", "4", *new_rates]
    status, _, err = run_cli([*argv, "--accept-config-change"])
    assert status == 0, err
    assert "the config's optimizer settings replace the checkpoint's" in err
    assert "the energy's optimizer: lr 0.001 → 0.004" in err
    assert "the optimizer of initializer.flow: lr 0.001 → 0.0002" in err
    energy = checkpoint(run, 4)["optimizer"]["param_groups"][0]
    assert energy["initial_lr"] == 4e-3
    assert energy["lr"] == pytest.approx(4e-3 * 0.5**4, rel=1e-12)  # the schedule went on
    flow = checkpoint(run, 4)["learnables"]["initializer.flow"]["optimizer"]["param_groups"][0]
    assert flow["lr"] == 2e-4
