"""The CPMLA image configs: `ebmkit run gin/cpmla_cifar10.gin` on a CIFAR-10 folder written in
torchvision's format (tiny widths by --bind) runs 2 rounds end to end, writes a grid, and a run
of 1 round + --resume to 2 equals it in every saved tensor; the paper-size parts have the
paper's parameter counts; the SVHN and CelebA configs parse and bind their datasets."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import gin
from ebmkit.cli import main
from ebmkit.registry import AUTOLOAD_ENV, reset_registry
from ebmkit.testing.fixtures import write_cifar10
from ebmkit_cpmla.energies import CoopFlowResNet

GIN = Path(__file__).resolve().parents[3] / "gin"
TINY = [
    'DEVICE = "cpu"',
    "trainers.Contrastive.batch_size = 4",
    "energies.CoopFlowResNet.n_f = 2",
    "flows.CPFlowImage.hidden = 4",
    "flows.CPFlowImage.blocks_per_scale = 1",
    "samplers.MirrorLangevin.n_steps = 2",
    "experiment.checkpoint_every = 1",
    "experiment.log_every = 1",
    "experiment.sample_every = 1",
]


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    yield
    gin.clear_config()
    reset_registry()


def run(out: Path, rounds: int, *extra: str) -> str:
    argv = ["run", str(GIN / "cpmla_cifar10.gin"), "--out", str(out), "--rounds", str(rounds)]
    for binding in TINY:
        argv += ["--bind", binding]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = main([*argv, *extra])
    gin.clear_config()
    reset_registry()
    assert status == 0, stderr.getvalue()[-3000:]
    return stdout.getvalue()


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
        same = same and a.dtype == b.dtype and a.shape == b.shape
        if same and a.is_floating_point():
            same = torch.equal(a.nan_to_num(nan=-1234.5), b.nan_to_num(nan=-1234.5))
        elif same:
            same = torch.equal(a, b)
        return [] if same else [path]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path} keys"]
        return [d for key in a for d in differences(a[key], b[key], f"{path}/{key}")]
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            return [f"{path} length"]
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in differences(x, y, f"{path}/{i}")
        ]
    return [] if a == b else [path]


def checkpoint(run_dir: Path, index: int) -> dict[str, Any]:
    return torch.load(run_dir / "checkpoints" / f"round-{index:08d}.pt", weights_only=True)


def test_the_paper_energy_has_17129444_parameters() -> None:
    count = sum(parameter.numel() for parameter in CoopFlowResNet(n_f=128).parameters())
    print(f"energies.CoopFlowResNet(n_f=128): {count} parameters")
    assert count == 17_129_444


@pytest.mark.slow
def test_cpmla_cifar10_runs_two_rounds_and_resumes_bit_identically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EBMKIT_DATA", str(write_cifar10(tmp_path / "data", per_batch=4)))
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run(whole, 2)
    run(parts, 1)
    run(parts, 2, "--resume")
    first, second = checkpoint(whole, 2), checkpoint(parts, 2)
    (flow_path,) = first["learnables"]
    flow_state = first["learnables"][flow_path]
    assert flow_state["optimizer"]["state"], "the flow took no optimizer step"
    assert bool(flow_state["module"]["initialized"])
    for part in ("energy", "optimizer", "loader", "components", "learnables", "guard", "rng"):
        assert not differences(first[part], second[part]), part
    assert list((whole / "samples").glob("*.png"))
    operative = (whole / "operative_config.gin").read_text()
    assert "MirrorLangevin.noise = 'diagonal'" in operative
    assert "Contrastive.learn_order = 'before_energy_step'" in operative


@pytest.mark.parametrize(
    ("config", "dataset"), [("cpmla_svhn.gin", "SVHN"), ("cpmla_celeba.gin", "CelebA")]
)
def test_the_other_image_configs_bind_their_datasets(config: str, dataset: str) -> None:
    text = (GIN / config).read_text()
    assert "include 'cpmla_cifar10.gin'" in text
    assert f"trainers.Contrastive.dataset = @datasets.{dataset}()" in text
