"""The Dual-MCMC configs (issue 15): the presets bind what their headers say, every config
builds, and the CIFAR-10 configs run end to end and resume bit for bit.

- gin/base/dual_mcmc_paper.gin: trainers.Contrastive (the EBM first), Langevin on E at T = 1,
  λ 1/1/1 with 1/(2σ²); gin/base/dual_mcmc_code.gin: trainers.DualMCMC (refresh), the
  tempered revision E/T with step η²/2, λ 1/50/0.1, NLL ε = 1e-6. Both: σ = 0.3, the scoped
  posterior sampler (ULA s = 0.005, 10 steps), Adam β = (0, 0.9), learning rates 1e-4/3e-4/1e-4,
  weight decay G/I 5e-4, ExponentialLR 0.998 per epoch on the three optimizers.
- The trainer settings reach either trainer through macros (a trainers.Contrastive.* binding
  does not reach trainers.DualMCMC: shown), and no unscoped samplers.Langevin.* binding
  reaches the posterior sampler (shown to leak without the scoped bindings).
- `ebmkit run` of both CIFAR-10 configs on a folder in torchvision's format (tiny widths):
  2 rounds, a checkpoint with the three networks, their optimizers and schedulers, and a run
  of 1 round + --resume to 2 equal to it in every tensor; in the paper preset the learn order
  changes no parameter.
- A generator whose step makes its parameters NaN stops the run in that round naming the
  generator, and the last good checkpoint is kept (round 2, unchanged), in both orders.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import gin
from ebmkit.cli import main
from ebmkit.config import parse_config
from ebmkit.data.images import DATA_ROOT_ENV
from ebmkit.energies.tempered import TemperedEnergy
from ebmkit.registry import AUTOLOAD_ENV, get_registry, reset_registry
from ebmkit.samplers.langevin import Langevin
from ebmkit.testing.fixtures import write_cifar10
from ebmkit.testing.states import first_difference
from ebmkit.trainers.contrastive import Contrastive
from ebmkit_dual_mcmc.energy import DualResNetEnergy
from ebmkit_dual_mcmc.initializer import Generator
from ebmkit_dual_mcmc.networks import (
    GeneratorResNet32,
    GeneratorResNet64,
    InferenceConv32,
    InferenceConv64,
)
from ebmkit_dual_mcmc.trainer import DualMCMC

ROOT = Path(__file__).resolve().parents[3]
GIN = ROOT / "gin"
PAPER_PRESET, CODE_PRESET = (
    GIN / "base" / "dual_mcmc_paper.gin",
    GIN / "base" / "dual_mcmc_code.gin",
)
needs_repository = pytest.mark.skipif(not GIN.is_dir(), reason="needs the repository's gin/")

# config → the code preset or the paper's, the image side, T of energies.Tempered (None: the
# energy is not tempered), λ_s
CONFIGS: dict[str, dict[str, Any]] = {
    "dual_mcmc_cifar10.gin": {"code": False, "size": 32, "temperature": None, "teach": 1.0},
    "dual_mcmc_code_cifar10.gin": {"code": True, "size": 32, "temperature": 4e-6, "teach": 50.0},
    "dual_mcmc_celeba64.gin": {"code": False, "size": 64, "temperature": None, "teach": 1.0},
    "dual_mcmc_code_celeba64.gin": {
        "code": True,
        "size": 64,
        "temperature": (1e-3 / 0.3) ** 2,
        "teach": 70.0,
    },
}
DELTA = {32: 0.5, 64: 0.3}  # the code's δ_x (CIFAR-10, CelebA); η_x = 1e-3 on both

NO_DATA = ['DEVICE = "cpu"', "DATASET = @datasets.Digits()"]  # builds without an image folder
TINY = {
    32: [
        "datasets.Digits.image_size = 32",
        "datasets.Digits.channels = 3",
        "LATENT_DIM = 16",
        "generators.ResNet32.channels = 16",
        "inference_models.Conv32.channels = 8",
        "energies.DualResNet.channels = 16",
    ],
    64: [
        "datasets.Digits.image_size = 64",
        "datasets.Digits.channels = 3",
        "LATENT_DIM = 16",
        "generators.ResNet64.channels = 16",
        "inference_models.Conv64.channels = 4",
        "energies.DualResNet.widths = (4, 4, 8, 8, 16)",
    ],
}
RUN = [
    'DEVICE = "cpu"',
    *TINY[32],
    "BATCH_SIZE = 8",
    "samplers.Langevin.n_steps = 2",
    "posterior/samplers.Langevin.n_steps = 2",
    "experiment.checkpoint_every = 1",
    "experiment.log_every = 1",
    "experiment.sample_every = 2",
]
CIFAR_CONFIGS = ["dual_mcmc_cifar10.gin", "dual_mcmc_code_cifar10.gin"]


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Plugin autoload on; gin and the registry reset after the test."""
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    yield
    gin.clear_config()
    reset_registry()


def build(config: str | Path, bindings: list[str]) -> Any:
    """The trainer `ebmkit run <config>` would build, its Learnable's optimizer and scheduler
    made while the config is still parsed (the scheduler factory reads gamma from gin; the
    fixture clears gin after the test)."""
    get_registry()
    parse_config(Path(GIN / config), bindings)
    trainer = gin.get_configurable("experiment")().trainer
    trainer.initializer.optimizer  # noqa: B018 - makes the optimizer and its scheduler
    return trainer


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


def run(config: str, out: Path, rounds: int, bindings: list[str], *extra: str) -> tuple[int, str]:
    argv = ["run", str(GIN / config), "--out", str(out), "--rounds", str(rounds), *extra]
    for binding in bindings:
        argv += ["--bind", binding]
    status, _, stderr = run_cli(argv)
    return status, stderr


def checkpoint(out: Path, round_index: int) -> dict[str, Any]:
    return torch.load(out / "checkpoints" / f"round-{round_index:08d}.pt", weights_only=True)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# Every config builds what its header says ---------------------------------------------------


@pytest.mark.slow
@needs_repository
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_config_builds_the_papers_nets_and_the_presets_settings(config: str) -> None:
    """At the configs' own (full) widths; the dataset swapped for the shipped digits."""
    expected = CONFIGS[config]
    size = expected["size"]  # the digits at the config's image size: its nets are refused else
    digits = [f"datasets.Digits.image_size = {size}", "datasets.Digits.channels = 3"]
    trainer = build(config, [*NO_DATA, *digits])
    code, size = expected["code"], expected["size"]
    assert type(trainer) is (DualMCMC if code else Contrastive)
    assert trainer.batch_size == 100 and trainer.learning_rate == 1e-4
    assert trainer.betas == (0.0, 0.9) and trainer.weight_decay == 0.0 and trainer.alpha == 0.0
    assert trainer.scheduler_interval == "epoch" and trainer.lr_scheduler.gamma == 0.998
    # The nets: the paper's at 32×32, ours at 64×64; d = 128.
    energy = trainer.energy
    if code:
        assert isinstance(energy, TemperedEnergy)
        assert math.isclose(energy.temperature, expected["temperature"], rel_tol=1e-12)
        assert trainer.max_energy_gap == pytest.approx(1e4 / expected["temperature"])
        assert trainer.refresh_negatives
        energy = energy.network
    else:
        assert trainer.max_energy_gap == 1e4 and trainer.learn_order == "after_energy_step"
    assert isinstance(energy, DualResNetEnergy)
    generator = trainer.initializer
    assert isinstance(generator, Generator)
    nets = (
        (GeneratorResNet32, InferenceConv32)
        if size == 32
        else (GeneratorResNet64, InferenceConv64)
    )
    assert isinstance(generator.generator, nets[0]) and isinstance(generator.inference, nets[1])
    assert generator.latent_dim == 128 and generator.generator.output_shape == (3, size, size)
    assert generator.inference.input_shape == (3, size, size)
    widths = [block.conv2.out_channels for block in energy.blocks]
    assert widths == ([512] * 4 if size == 32 else [64, 128, 256, 512, 1024, 1024, 1024])
    assert generator.generator.linear.out_features == 16 * (512 if size == 32 else 1024)
    assert generator.inference.mean.in_channels == 1024
    # The Learnable: σ, the loss form, the two parameter groups, the epoch scheduler.
    assert generator.sigma == 0.3
    lambdas = (generator.lambda_data, generator.lambda_teach, generator.lambda_inference)
    assert lambdas == ((1.0, expected["teach"], 0.1) if code else (1.0, 1.0, 1.0))
    assert generator.loss_scaling == ("code" if code else "paper")
    assert generator.nll_epsilon == (1e-6 if code else 0.0)
    assert generator.energy_revision_stats
    groups = generator.optimizer.param_groups
    assert [group["lr"] for group in groups] == [3e-4, 1e-4]
    assert all(g["betas"] == (0.0, 0.9) and g["weight_decay"] == 5e-4 for g in groups)
    assert generator.scheduler.gamma == 0.998 and generator.scheduler_interval == "epoch"
    # The two Langevin samplers: k_x = 30 on E (or E/T), k_z = 10 at s = 0.005, noise 0.1.
    x_sampler, z_sampler = trainer.sampler, generator.posterior_sampler
    assert isinstance(x_sampler, Langevin) and isinstance(z_sampler, Langevin)
    assert x_sampler is not z_sampler
    assert (x_sampler.step_size, x_sampler.n_steps) == (5e-7, 30)
    assert x_sampler.noise_scale == pytest.approx(1e-3, rel=1e-12)  # η_x: sqrt(2·5e-7)
    assert (z_sampler.step_size, z_sampler.n_steps) == (0.005, 10)
    assert (
        z_sampler.noise_scale == pytest.approx(0.1, rel=1e-12)
        and generator.posterior_steps is None
    )
    for sampler in (x_sampler, z_sampler):
        assert sampler.grad_clip is None and sampler.clamp is None


@needs_repository
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_config_names_its_dataset_at_its_image_size(config: str) -> None:
    get_registry()
    parse_config(GIN / config, [])
    dataset = gin.query_parameter("DATASET/macro.value").selector
    if CONFIGS[config]["size"] == 32:
        assert dataset == "datasets.CIFAR10"
        assert gin.query_parameter("datasets.CIFAR10.split") == "train"
    else:
        assert dataset == "datasets.CelebA"
        assert gin.query_parameter("datasets.CelebA.image_size") == 64
    assert gin.query_parameter("experiment.seed") == 1234  # the code's seed


@needs_repository
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_tiny_config_builds_and_the_code_presets_step_is_the_delta_eta_form(config: str) -> None:
    """One x-step of the built sampler on the built energy equals the code's
    y − (δ²/2)·∇E(y) + η·ε on the network E (δ of the data set, η = 1e-3) in the code
    presets, and the paper's y − s·∇E + sqrt(2s)·ε (s = 5e-7) in the others."""
    expected = CONFIGS[config]
    trainer = build(config, [*NO_DATA, *TINY[expected["size"]]])
    energy = trainer.energy.double().eval()  # eval: spectral norm's power iteration holds still
    network = energy.network if expected["code"] else energy
    if expected["code"]:
        drift, noise = DELTA[expected["size"]] ** 2 / 2, 1e-3
    else:
        drift, noise = 5e-7, math.sqrt(2 * 5e-7)
    size = expected["size"]
    x = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(1)).double() * 2 - 1
    moved = trainer.sampler.sample(energy, x, 1, generator=torch.Generator().manual_seed(5)).x
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(network(xr).sum(), xr)
    xi = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    torch.testing.assert_close(moved, x - drift * grad + noise * xi, rtol=1e-9, atol=1e-12)
    assert (drift * grad).abs().max() > 0  # the drift is not lost under the noise's tolerance


@needs_repository
@pytest.mark.parametrize("preset", [PAPER_PRESET, CODE_PRESET], ids=["paper", "code"])
def test_unscoped_langevin_bindings_do_not_reach_the_posterior_sampler(
    preset: Path, tmp_path: Path
) -> None:
    config = GIN / (
        "dual_mcmc_code_cifar10.gin" if preset == CODE_PRESET else "dual_mcmc_cifar10.gin"
    )
    odd = [
        "samplers.Langevin.step_size = 0.125",
        "samplers.Langevin.noise_scale = 0.25",
        "samplers.Langevin.n_steps = 7",
        "samplers.Langevin.grad_clip = 9.0",
        "samplers.Langevin.clamp = (-2.0, 2.0)",
    ]
    trainer = build(config, [*NO_DATA, *TINY[32], *odd])
    x_sampler, z_sampler = trainer.sampler, trainer.initializer.posterior_sampler
    assert (x_sampler.step_size, x_sampler.noise_scale, x_sampler.n_steps) == (0.125, 0.25, 7)
    assert (x_sampler.grad_clip, x_sampler.clamp) == (9.0, (-2.0, 2.0))
    assert (z_sampler.step_size, z_sampler.n_steps, z_sampler.grad_clip, z_sampler.clamp) == (
        0.005,
        10,
        None,
        None,
    )
    assert z_sampler.noise_scale == pytest.approx(0.1)
    # Power: the same preset without its scoped posterior lines but the step lets them leak.
    lines = preset.read_text().splitlines()
    kept = [
        line
        for line in lines
        if not line.startswith("posterior/") or line.startswith("posterior/samplers.Langevin.step")
    ]
    assert len(kept) == len(lines) - 4
    body = [line for line in config.read_text().splitlines() if not line.startswith("include")]
    leaky = tmp_path / config.name  # the preset pasted in: no include to resolve elsewhere
    leaky.write_text("\n".join(kept + body) + "\n")
    leaked = build(leaky, [*NO_DATA, *TINY[32], *odd])
    z_leaked = leaked.initializer.posterior_sampler
    assert (z_leaked.step_size, z_leaked.n_steps, z_leaked.grad_clip) == (0.005, 7, 9.0)


@needs_repository
def test_trainer_settings_reach_either_trainer_through_the_macros() -> None:
    """gin binds per configurable name: trainers.Contrastive.batch_size does not reach
    trainers.DualMCMC (a subclass), so the presets route the data set's settings through
    BATCH_SIZE, DATASET, ENERGY, N_ROUNDS and DEVICE."""
    tiny = [*NO_DATA, *TINY[32]]
    code = build("dual_mcmc_code_cifar10.gin", [*tiny, "trainers.Contrastive.batch_size = 7"])
    assert isinstance(code, DualMCMC) and code.batch_size == 100  # the binding missed it
    for config in CIFAR_CONFIGS:
        trainer = build(config, [*tiny, "BATCH_SIZE = 7", "N_ROUNDS = 3"])
        assert (trainer.batch_size, trainer.n_rounds, trainer.device) == (7, 3, "cpu")
        assert len(trainer.dataset) == 1797  # DATASET reached it
    paper = build("dual_mcmc_cifar10.gin", [*tiny, "trainers.Contrastive.batch_size = 7"])
    assert paper.batch_size == 7  # the paper preset's own trainer takes the direct binding


# End to end ----------------------------------------------------------------------------------


@pytest.fixture
def cifar10(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A CIFAR-10 folder of 10 training images in torchvision's format, found through
    $EBMKIT_DATA: at batch 8 each round is a new epoch, so the epoch schedulers step."""
    root = write_cifar10(tmp_path / "data", per_batch=2)
    monkeypatch.setenv(DATA_ROOT_ENV, str(root))
    return root


@pytest.mark.slow
@needs_repository
@pytest.mark.parametrize("config", CIFAR_CONFIGS)
def test_cifar10_config_runs_two_rounds_and_resumes_bit_identically(
    config: str, cifar10: Path, tmp_path: Path
) -> None:
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    for out, rounds in ((whole, 2), (parts, 1)):
        status, stderr = run(config, out, rounds, RUN)
        assert status == 0, stderr[-3000:]
    status, stderr = run(config, parts, 2, RUN, "--resume")
    assert status == 0, stderr[-3000:]
    first, second = checkpoint(whole, 2), checkpoint(parts, 2)
    code = config.startswith("dual_mcmc_code")
    # The energy (inside energies.Tempered in the code preset), its Adam and epoch scheduler.
    prefix = "network.blocks." if code else "blocks."
    assert any(key.startswith(prefix) for key in first["energy"])
    assert first["optimizer"]["state"] and first["optimizer"]["param_groups"][0]["betas"] == (
        0.0,
        0.9,
    )
    assert first["scheduler"]["last_epoch"] == 1 and first["scheduler_epoch"] == 1
    assert first["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-4 * 0.998)
    # The generator and the inference model: one Learnable, one Adam with two groups.
    assert list(first["learnables"]) == ["initializer"]
    learnable = first["learnables"]["initializer"]
    module = learnable["module"]
    assert any(key.startswith("generator.") for key in module)
    assert any(key.startswith("inference.") for key in module)
    assert {key.split(".")[0] for key in module} == {"generator", "inference"}
    groups = learnable["optimizer"]["param_groups"]
    assert len(groups) == 2 and len(learnable["optimizer"]["state"]) == sum(
        len(group["params"]) for group in groups
    )
    assert [group["lr"] for group in groups] == pytest.approx([3e-4 * 0.998, 1e-4 * 0.998])
    assert learnable["scheduler"]["last_epoch"] == 1 and learnable["scheduler_epoch"] == 1
    # 1 round + --resume 1 = 2 rounds, in every tensor of every part.
    for part in (
        "energy",
        "optimizer",
        "scheduler",
        "scheduler_epoch",
        "loader",
        "components",
        "learnables",
        "guard",
        "rng",
    ):
        assert first_difference(first[part], second[part], nan_equal=True) is None, part
    rows = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    rows = [row for row in rows if "initializer/generator/loss" in row]
    assert [row["round"] for row in rows] == [1, 2]
    assert "initializer/revision/energy_drop" in rows[-1]
    samples = sorted(path.name for path in (whole / "samples").glob("round-*.png"))
    assert samples == ["round-00000002.png"]


@pytest.mark.slow
@needs_repository
def test_paper_preset_learn_order_changes_no_parameter(cifar10: Path, tmp_path: Path) -> None:
    """x̃ and z̃ are drawn before any update and the losses share no parameter: the paper's
    EBM-first order and the Learnables-first order give the same parameters, bit for bit
    (with the logged E(x0) − E(x̃) on, as the preset binds it)."""
    states = {}
    for order in ("after_energy_step", "before_energy_step"):
        out = tmp_path / order
        bindings = [*RUN, f"trainers.Contrastive.learn_order = '{order}'"]
        assert run("dual_mcmc_cifar10.gin", out, 2, bindings)[0] == 0
        state = checkpoint(out, 2)
        states[order] = (state["energy"], state["learnables"]["initializer"]["module"])
        moved = first_difference(checkpoint(out, 1)["energy"], state["energy"], nan_equal=True)
        assert moved is not None  # round 2 changed the energy: the comparison is not vacuous
    assert (
        first_difference(states["after_energy_step"], states["before_energy_step"], nan_equal=True)
        is None
    )


# A diverging generator --------------------------------------------------------------------

# λ_s = 1e38 with the 1/(2σ²) scaling: L_G ≈ 1e37 is finite but its gradient overflows
# float32 (5.6e38), so the Adam step makes the generator's parameters NaN. (A huge learning
# rate cannot do it here: a resumed run takes its learning rates from the checkpoint's
# optimizer state, and BatchNorm and tanh keep g(z) finite for any finite weights.)
DIVERGE = [
    "initializers.Generator.lambda_teach = 1e38",
    "initializers.Generator.loss_scaling = 'paper'",
]


def diverge(config: str, out: Path) -> tuple[int, str, str, str]:
    """2 good rounds, then --resume with the generator made to diverge in round 3;
    (exit status, stderr, round 2's hash before, after)."""
    assert run(config, out, 2, RUN)[0] == 0
    good = out / "checkpoints" / "round-00000002.pt"
    before = digest(good)
    status, stderr = run(config, out, 4, [*RUN, *DIVERGE], "--resume", "--accept-config-change")
    return status, stderr, before, digest(good)


@pytest.mark.slow
@needs_repository
@pytest.mark.parametrize("config", CIFAR_CONFIGS)
def test_a_diverging_generator_stops_the_run_naming_it_and_keeps_round_2(
    config: str, cifar10: Path, tmp_path: Path
) -> None:
    """In either order the NaN parameters are found in round 3, the round of the step that
    made them, before any checkpoint holds them."""
    out = tmp_path / "run"
    status, stderr, before, after = diverge(config, out)
    assert status != 0
    message = stderr.strip().splitlines()[-1]
    assert "its generator GeneratorResNet32" in message and "non-finite" in message, message
    assert "at round 3" in message and "training stopped" in message, message
    assert before == after  # the last good checkpoint, byte for byte
    kept = sorted(path.name for path in (out / "checkpoints").iterdir())
    assert kept == ["round-00000001.pt", "round-00000002.pt"]
