"""Data-parallel runs through torchrun on CPU (gloo, 2 processes): the ranks keep one model,
their own chains, agree on a divergence, resume exactly, and refuse another world size."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import TOY_GIN, run_cli, write_lines

from ebmkit.checkpoint.files import latest_checkpoint, load_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("builtin_registry")]

TORCHRUN = Path(sys.executable).with_name("torchrun")
TIMEOUT = 150  # seconds a 2-process run may take before the test fails (never hangs)
ROUNDS = 6

# Runs in each rank (torchrun runs this file): the `ebmkit` CLI, with test hooks that dump
# what the rank holds at the end, kill the rank with SIGKILL, send rank 1 a SIGTERM, or put a
# NaN in rank 1's chains.
WORKER = """
import os, signal, sys
import torch
from ebmkit.cli import main
from ebmkit.runs.observer import RunObserver
from ebmkit.trainers.contrastive import Contrastive

rank = int(os.environ["RANK"])
dump, kill_after, nan_round, term_round = (
    os.environ.get(k) for k in ("DUMP", "KILL_AFTER", "NAN_ROUND", "TERM_ROUND"))
after_round, after_fit, run_chains = (
    RunObserver.after_round, RunObserver.after_fit, Contrastive.run_chains)

def hooked_after_round(self, trainer, round):
    after_round(self, trainer, round)
    self.last_samples = round.result.x.detach().clone()
    if kill_after and round.index == int(kill_after):
        os.kill(os.getpid(), signal.SIGKILL)

def hooked_after_fit(self, trainer):
    if dump:
        learnables = {path: part.state_dict() for path, part in trainer.all_learnables.items()}
        torch.save({"energy": trainer.energy.state_dict(), "learnables": learnables,
                    "samples": self.last_samples}, f"{dump}/rank{rank}.pt")
    after_fit(self, trainer)

def hooked_run_chains(self, work):
    run_chains(self, work)
    if term_round and rank == 1 and work.index == int(term_round):
        os.kill(os.getpid(), signal.SIGTERM)
    if nan_round and rank == 1 and work.index == int(nan_round):
        with torch.no_grad():
            work.result.x[0, 0] = float("nan")

RunObserver.after_round, RunObserver.after_fit = hooked_after_round, hooked_after_fit
Contrastive.run_chains = hooked_run_chains
sys.exit(main(sys.argv[1:]))
"""


def write_config(folder: Path) -> Path:
    """Eight Gaussians, an MLP (16, 16), batch 32 per rank, Langevin 3 steps, a replay shard
    per rank, and a RealNVP Learnable fitted to the chains (its gradients are averaged)."""
    return write_lines(
        folder,
        "toy.gin",
        [
            f"include '{TOY_GIN}'",
            "trainers.Contrastive.dataset = @datasets.EightGaussians()",
            "trainers.Contrastive.sampler = @samplers.Langevin()",
            "trainers.Contrastive.initializer = @initializers.Replay()",
            "trainers.Contrastive.learnables = [@flows.RealNVP()]",
            "trainers.Contrastive.batch_size = 32",
            f"trainers.Contrastive.n_rounds = {ROUNDS}",
            "energies.MLP.hidden = (16, 16)",
            "datasets.EightGaussians.n_samples = 160",  # 80 a rank: 2 batches an epoch
            "samplers.Langevin.step_size = 0.01",
            "samplers.Langevin.n_steps = 3",
            "initializers.Replay.noise = @initializers.Noise()",
            "initializers.Replay.capacity = 64",
            "initializers.Noise.low = -3.0",
            "initializers.Noise.high = 3.0",
            "flows.RealNVP.dim = 2",
            "flows.RealNVP.transforms = 2",
            "flows.RealNVP.hidden_features = (8,)",
            "flows.RealNVP.fit_on = 'samples'",
            "flows.RealNVP.learning_rate = 1e-2",
            "experiment.log_every = 2",
            "experiment.eval_every = 3",
            "experiment.sample_every = 100",
            "experiment.checkpoint_every = 3",
        ],
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun(
    tmp_path: Path, arguments: Sequence[str], **hooks: str
) -> subprocess.CompletedProcess[str]:
    """`torchrun --nproc_per_node=2 worker.py ARGUMENTS` with the worker's `hooks` set."""
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **hooks}
    command = [
        str(TORCHRUN),
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        "--monitor-interval=1",  # a rank that fails first leaves the other time to say why
        str(worker),
        *arguments,
    ]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=environment,
        cwd=tmp_path,
    )


def assert_same(left: Any, right: Any, where: str = "state") -> None:
    """Every tensor and value of two nested states equal, bit for bit."""
    if isinstance(left, torch.Tensor):
        assert isinstance(right, torch.Tensor) and torch.equal(left, right), where
    elif isinstance(left, dict):
        assert set(left) == set(right), where
        for key in left:
            assert_same(left[key], right[key], f"{where}.{key}")
    elif isinstance(left, list | tuple):
        assert len(left) == len(right), where
        for number, (a, b) in enumerate(zip(left, right, strict=True)):
            assert_same(a, b, f"{where}[{number}]")
    else:
        assert left == right, where


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-process run of `ROUNDS` rounds; each rank dumps its networks and chains."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    config = write_config(folder)
    done = torchrun(folder, ["run", str(config), "--out", "run"], DUMP=str(folder))
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


def test_ranks_share_the_model_and_keep_their_own_chains(uninterrupted: Path) -> None:
    ranks = [torch.load(uninterrupted / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert_same(ranks[0]["energy"], ranks[1]["energy"], "energy")
    assert list(ranks[0]["learnables"]) == ["learnables.0"]
    assert_same(ranks[0]["learnables"], ranks[1]["learnables"], "learnables")
    assert not torch.equal(ranks[0]["samples"], ranks[1]["samples"])
    state = load_checkpoint(latest_checkpoint(uninterrupted / "run" / "checkpoints"))
    assert state["round"] == ROUNDS and state["distributed"]["world_size"] == 2
    buffers = [
        part["components"]["initializer"]["buffer"] for part in state["distributed"]["ranks"]
    ]
    assert not torch.equal(buffers[0], buffers[1])  # each rank's replay shard, both saved
    # Rank 0 alone writes the logs: one row per logged round, scalars averaged over ranks.
    rows = (uninterrupted / "run" / "metrics.jsonl").read_text().splitlines()
    assert [row.split(",")[0] for row in rows if '"energy/gap"' in row] == [
        '{"round": 2',
        '{"round": 4',
        '{"round": 6',
    ]


def test_killed_run_resumes_bit_identical(uninterrupted: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path)
    run = ["run", str(config), "--out", "run"]
    killed = torchrun(tmp_path, run, KILL_AFTER="4")  # SIGKILL after round 4 (saved at 3)
    assert killed.returncode != 0
    assert latest_checkpoint(tmp_path / "run" / "checkpoints").name == "round-00000003.pt"
    resumed = torchrun(tmp_path, [*run, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))
    reference = load_checkpoint(latest_checkpoint(uninterrupted / "run" / "checkpoints"))
    assert final["round"] == ROUNDS
    final.pop("run"), reference.pop("run")  # the config's path differs, nothing else
    assert_same(final, reference)


def test_another_world_size_is_refused(uninterrupted: Path) -> None:
    config = uninterrupted / "toy.gin"
    status, _, err = run_cli(
        ["run", str(config), "--out", str(uninterrupted / "run"), "--resume", "--rounds", "8"]
    )
    assert status == 1
    assert "written by a run of 2 processes (world size 2)" in err
    assert "this run has 1 process (world size 1)" in err


def test_nan_on_one_rank_stops_every_rank(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    done = torchrun(tmp_path, ["run", str(config), "--out", "run"], NAN_ROUND="2")
    assert done.returncode != 0
    # The NaN is in rank 1's chains only; both ranks stop in round 2 with rank 1's message
    # (counted in the whole stderr: the two ranks' writes may share a line).
    message = (
        r"ebmkit: error: rank 1 of 2: round 2: non-finite sample energy[^;\n]*; every rank stops"
    )
    assert len(re.findall(message, done.stderr)) == 2, done.stderr[-3000:]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_sigterm_on_one_rank_stops_every_rank_after_a_checkpoint(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    done = torchrun(tmp_path, ["run", str(config), "--out", "run"], TERM_ROUND="2")
    assert done.returncode != 0
    stopped = "ebmkit: interrupted by SIGTERM at round 2 (checkpoint round-00000002.pt written)"
    assert done.stderr.count(stopped) == 2, done.stderr[-3000:]  # rank 1's signal, both ranks
    assert "continue with: torchrun --nproc_per_node=2 -m ebmkit run" in done.stderr
    state = load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))
    assert state["round"] == 2 and state["distributed"]["world_size"] == 2
