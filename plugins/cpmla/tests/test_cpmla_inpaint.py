"""`ebmkit eval inpaint` on a tiny CPMLA CIFAR-10 run: grids written, JSON with the masked MSE,
known pixels kept exactly; a non-MirrorLangevin sampler is refused clearly; the centre mask."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import gin
from ebmkit import Langevin
from ebmkit.cli import main
from ebmkit.registry import AUTOLOAD_ENV, reset_registry
from ebmkit.testing.fixtures import write_cifar10
from ebmkit_cpmla.inpaint import centre_mask, inpaint
from ebmkit_cpmla.mirror import QuadraticMirror
from ebmkit_cpmla.mirror_langevin import MirrorLangevin

GIN = Path(__file__).resolve().parents[3] / "gin"
TINY = [
    'DEVICE = "cpu"',
    "trainers.Contrastive.batch_size = 4",
    "energies.CoopFlowResNet.n_f = 2",
    "flows.CPFlowImage.hidden = 4",
    "flows.CPFlowImage.blocks_per_scale = 1",
    "samplers.MirrorLangevin.n_steps = 2",
    "experiment.checkpoint_every = 1",
]


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    yield
    gin.clear_config()
    reset_registry()


def cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    gin.clear_config()
    reset_registry()
    return status, out.getvalue(), err.getvalue()


def test_centre_mask() -> None:
    mask = centre_mask((3, 8, 8), 4)
    assert mask.sum() == 3 * (64 - 16) and mask[:, 2:6, 2:6].sum() == 0
    with pytest.raises(ValueError, match="mask-size"):
        centre_mask((3, 8, 8), 9)


def test_inpaint_refuses_another_sampler() -> None:
    with pytest.raises(ValueError, match="MirrorLangevin"):
        inpaint(
            Langevin(step_size=0.1),
            lambda x: x.sum(1),
            torch.zeros(2, 3),
            torch.ones(3),
            n_steps=1,
        )


def test_inpaint_lowers_the_known_pixels_loss_with_a_quadratic_mirror() -> None:
    sampler = MirrorLangevin(mirror=QuadraticMirror(scale=2.0), step_size=1e-2, noise="exact")
    images = torch.rand(4, 1, 4, 4, dtype=torch.float64) * 2 - 1
    mask = centre_mask((1, 4, 4), 2).to(images)

    def energy(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x.flatten(1).square().sum(1)

    found = inpaint(sampler, energy, images, mask, n_steps=3, iterations=17, lr=0.03)
    assert found["losses"][-1] < found["losses"][0]
    assert torch.equal(found["filled"] * mask, images * mask)


@pytest.mark.slow
def test_eval_inpaint_on_a_tiny_cpmla_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EBMKIT_DATA", str(write_cifar10(tmp_path / "data", per_batch=4)))
    argv = ["run", str(GIN / "cpmla_cifar10.gin"), "--out", str(tmp_path / "run"), "--rounds", "1"]
    for binding in TINY:
        argv += ["--bind", binding]
    status, _, err = cli(argv)
    assert status == 0, err[-3000:]
    out = tmp_path / "inpaint"
    status, stdout, err = cli(
        [
            "eval",
            "inpaint",
            str(tmp_path / "run"),
            "--mask-size",
            "16",
            "--chains",
            "4",
            "--iterations",
            "2",
            "--lr",
            "0.03",
            "--out",
            str(out),
        ]
    )
    assert status == 0, err[-3000:]
    summary = json.loads(stdout[stdout.index("{") :])
    assert summary["masked_mse"] == summary["masked_mse"] and summary["masked_mse"] >= 0
    assert {path.name for path in out.glob("*.png")} == {"before.png", "after.png", "original.png"}
