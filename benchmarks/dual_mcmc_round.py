"""What one Dual-MCMC round costs, phase by phase, against k_x, and against a hand-written loop.

The paper (Cui & Han 2023, Table 5) reports seconds per iteration for k_x = 10 / 20 / 30 / 50:
0.861 / 1.241 / 1.594 / 2.454 s on its GPU at full CIFAR-10 size, i.e. 0.54 / 0.78 / 1 / 1.54
of the cost at k_x = 30. Those times come from the reference code, whose round has two
x-chains (the refresh). This script times the same round on a CPU, at sizes a CPU affords, so
the paper's cost can be compared in RATIO, and times a plain PyTorch loop doing the same work
with no ebmkit (the project's rule: a benchmark states its ratio to a hand-written loop).

Workloads (both with d = 8 or 128 latents, k_z = 10 posterior steps of ULA s = 0.005, σ = 0.3,
Adam β = (0, 0.9), learning rates E 1e-4 / G 3e-4 / I 1e-4, weight decay G/I 5e-4):

- toy: eight Gaussians in 2-D (datasets.EightGaussians, radius 2, std 0.15), the method file's
  §9 nets: G = generators.MLP d = 8 → 128 → 128 → 2 (SiLU, linear output), E = energies.MLP
  2 → 128 → 128 → 1 with spectral norm (SiLU), I = inference_models.MLP 2 → 128 → 16; batch 100.
- image: 32×32×3 images (random, in [−1, 1]: the cost does not depend on the pixels), the
  paper's CIFAR-10 nets at 1/32 of their widths, so G, E and I keep the paper's proportions of
  cost: generators.ResNet32 (16 channels), energies.DualResNet (16), inference_models.Conv32
  (4 → 32 channels); d = 128; batch 16 (the full nets at batch 100 are about 6400 times the
  work of a round here: 1024 for the widths, 6.25 for the batch).

Presets (the toy times both, the image workload the code's; --presets to choose): "code" =
trainers.DualMCMC (G → I → refresh x0′ = g(z) and a second x-chain → E), the
tempered revision (energies.Tempered, T = 4e-6, step 5e-7), λ 1/50/0.1; "paper" =
trainers.Contrastive (E first, one x-chain), Langevin on E at step 5e-7, λ 1/1/1 with 1/(2σ²).

Phases of an ebmkit round (each timed around the trainer's own phase callables; the
z-revision timed inside the Learnable):
  x0        data batch and x0 = g(z)                     ("data", "initializer")
  x-rev     the EBM's chains, k_x steps                   ("sampler")
  z-rev     z0 ~ q(z|x), k_z posterior steps              (Generator.revise_posterior)
  G+I step  L_G + L_I, backward, one Adam step            ("learnables" − z-rev)
  refresh   x0′ = g_{t+1}(z), k_x more steps, E's loss    ("refresh", code preset only)
  E step    E's loss (the code preset: its no-grad record) and the Adam step
            ("energy_loss", "energy_step", "initializer_update")
The hand-written loop does the same work in the same order with the same nn.Modules (copies
of the same initial weights): torch's DataLoader, a 4-line Langevin loop, the losses written
out, two Adam optimizers. It skips what ebmkit adds for diagnostics and safety: U(z) at the
z-chain's ends (2 generator passes), the logged E(x0) − E(x̃) (2 energy passes), in the code
preset E on data and x̃ for the round record (2 more), and the divergence checks (finiteness
of losses, outputs and, after its step, the generator's and inference model's parameters).

Each k_x gets fresh models from the same seed (both loops start from the same weights); every
measurement round runs one round of each (k_x, loop) pair in an order rotated from round to
round, so drift in machine speed (other work on shared cores) hits every cell alike; the
warm-up rounds are not recorded. Table: median seconds over the timed rounds per phase, the
median total, its ratio to k_x = 30 beside the paper's, and ebmkit ÷ hand on the totals; under
it, the least-squares line total ≈ a + b·k_x of each loop and of the paper's times: a/b (the
rest of the round in x-steps) sets the ratios, and it pools the four k_x, so it is steadier
than any one cell. In the code preset x-rev and refresh do the same chain work: their
difference shows the timing noise.

    .venv/bin/python benchmarks/dual_mcmc_round.py [--quick] [--threads N] [--log PATH]

Writes the report to benchmarks/logs/dual_mcmc_round.txt (a --quick run writes nothing unless
--log is given) and prints it.
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from machine_info import cpu_name, load_average
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from ebmkit.data.toy import EightGaussians
from ebmkit.energies.mlp import MLPEnergy
from ebmkit.energies.tempered import TemperedEnergy
from ebmkit.samplers.langevin import Langevin
from ebmkit.trainers.contrastive import Contrastive, RoundWork
from ebmkit_dual_mcmc.energy import DualResNetEnergy
from ebmkit_dual_mcmc.initializer import Generator
from ebmkit_dual_mcmc.networks import (
    GeneratorMLP,
    GeneratorResNet32,
    InferenceConv32,
    InferenceMLP,
)
from ebmkit_dual_mcmc.trainer import DualMCMC

ROOT = Path(__file__).resolve().parent.parent
LOG = ROOT / "benchmarks" / "logs" / "dual_mcmc_round.txt"
K_X = (10, 20, 30, 50)
PAPER_SECONDS = {10: 0.861, 20: 1.241, 30: 1.594, 50: 2.454}  # Table 5, s/iter
TEMPERATURE, X_STEP = 4e-6, 5e-7  # the code's CIFAR-10 (δ, η) = (0.5, 1e-3)
SIGMA, Z_STEP, K_Z = 0.3, 0.005, 10
PHASES = ("x0", "x-rev", "z-rev", "G+I step", "refresh", "E step")


@dataclass
class Workload:
    name: str
    make_nets: Callable[[], tuple[nn.Module, nn.Module, nn.Module]]  # energy, generator, q
    make_data: Callable[[], Tensor]
    batch: int
    presets: tuple[str, ...]  # "code" and/or "paper"
    warmup: int
    rounds: int


def toy_nets() -> tuple[nn.Module, nn.Module, nn.Module]:
    energy = MLPEnergy(in_features=2, hidden=(128, 128), spectral_norm=True)
    generator = GeneratorMLP(latent_dim=8, output_shape=(2,), hidden=(128, 128), output="linear")
    inference = InferenceMLP(input_shape=(2,), latent_dim=8, hidden=(128,))
    return energy, generator, inference


def image_nets() -> tuple[nn.Module, nn.Module, nn.Module]:
    """The paper's CIFAR-10 nets at 1/32 of their widths (E and G 512 → 16, I 128 → 4)."""
    energy = DualResNetEnergy(channels=16)
    generator = GeneratorResNet32(latent_dim=128, channels=16)
    inference = InferenceConv32(latent_dim=128, channels=4)
    return energy, generator, inference


def toy_data() -> Tensor:
    points = EightGaussians(n_samples=20000, seed=0)
    return torch.stack([points[index] for index in range(len(points))]).float()


def image_data() -> Tensor:
    return torch.rand(640, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1


def workloads(quick: bool) -> list[Workload]:
    if quick:
        return [
            Workload("toy", toy_nets, toy_data, 100, ("code", "paper"), warmup=1, rounds=2),
            Workload("image", image_nets, image_data, 4, ("code",), warmup=1, rounds=1),
        ]
    return [
        Workload("toy", toy_nets, toy_data, 100, ("code", "paper"), warmup=3, rounds=30),
        Workload("image", image_nets, image_data, 16, ("code",), warmup=1, rounds=7),
    ]


# ebmkit ------------------------------------------------------------------------------------


def ebmkit_trainer(
    preset: str, nets: tuple[nn.Module, nn.Module, nn.Module], data: Tensor, batch: int, k_x: int
) -> Contrastive:
    """The preset's trainer (the bindings of gin/base/dual_mcmc_<preset>.gin, in Python)."""
    network, generator_net, inference_net = nets
    code = preset == "code"
    scheduler = lambda optimizer: torch.optim.lr_scheduler.ExponentialLR(optimizer, 0.998)  # noqa: E731
    generator = Generator(
        generator=generator_net,
        inference=inference_net,
        sigma=SIGMA,
        posterior_sampler=Langevin(step_size=Z_STEP, n_steps=K_Z),
        lambda_teach=50.0 if code else 1.0,
        lambda_inference=0.1 if code else 1.0,
        loss_scaling=preset,
        nll_epsilon=1e-6 if code else 0.0,
        scheduler=scheduler,
        scheduler_interval="epoch",
        energy_revision_stats=True,
    )
    common: dict[str, Any] = {
        "energy": TemperedEnergy(network=network, temperature=TEMPERATURE) if code else network,
        "sampler": Langevin(step_size=X_STEP, n_steps=k_x),
        "initializer": generator,
        "dataset": data,
        "batch_size": batch,
        "n_rounds": 10**9,
        "learning_rate": 1e-4,
        "betas": (0.0, 0.9),
        "scheduler": scheduler,
        "scheduler_interval": "epoch",
        "blowup_factor": None,  # timing only: the guard's stops are not what is measured
    }
    if code:
        return DualMCMC(**common)
    return Contrastive(**common, learn_order="after_energy_step")


def timed_z_revision(generator: Generator, seconds: list[float]) -> None:
    """Wrap the Learnable's posterior revision so its time is recorded apart."""
    revise = generator.revise_posterior

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        result = revise(*args, **kwargs)
        seconds.append(time.perf_counter() - start)
        return result

    generator.revise_posterior = timed  # an instance attribute over the method


PHASE_OF = {
    "data": "x0",
    "initializer": "x0",
    "sampler": "x-rev",
    "learnables": "G+I step",
    "refresh": "refresh",
    "energy_loss": "E step",
    "energy_step": "E step",
    "initializer_update": "E step",
}


def ebmkit_round(trainer: Contrastive, z_seconds: list[float]) -> dict[str, float]:
    """One `train_round`, its phases timed (the loop of `Contrastive.train_round`)."""
    times = dict.fromkeys(PHASES, 0.0)
    z_seconds.clear()
    work = RoundWork(index=trainer.round_index + 1)
    for name, phase in trainer.phases():
        start = time.perf_counter()
        phase(work)
        times[PHASE_OF[name]] += time.perf_counter() - start
    trainer.round_index = work.index
    times["z-rev"] = sum(z_seconds)
    times["G+I step"] -= times["z-rev"]
    return times


# The hand-written loop ---------------------------------------------------------------------


def langevin(energy: Callable[[Tensor], Tensor], x: Tensor, n: int, step: float) -> Tensor:
    """n steps of x ← x − step·∇E(x) + sqrt(2·step)·ξ; detached."""
    noise = math.sqrt(2 * step)
    for _ in range(n):
        x = x.detach().requires_grad_()
        (grad,) = torch.autograd.grad(energy(x).sum(), x)
        x = x - step * grad + noise * torch.randn_like(x)
    return x.detach()


def squared(a: Tensor, b: Tensor) -> Tensor:
    return (a - b).flatten(1).square().sum(1)


def nll(z: Tensor, mean: Tensor, log_var: Tensor, epsilon: float) -> Tensor:
    return 0.5 * (log_var + (z - mean).square() / (log_var.exp() + epsilon)).sum(1)


class HandRound:
    """The same round as a research script writes it: no ebmkit."""

    def __init__(
        self,
        preset: str,
        nets: tuple[nn.Module, nn.Module, nn.Module],
        data: Tensor,
        batch: int,
        k_x: int,
    ) -> None:
        self.code = preset == "code"
        self.network, self.generator, self.inference = nets
        self.k_x = k_x
        self.loader = DataLoader(
            TensorDataset(data), batch_size=batch, shuffle=True, drop_last=True
        )
        self.batches = self._batches()
        self.energy_optimizer = torch.optim.Adam(
            self.network.parameters(), lr=1e-4, betas=(0.0, 0.9)
        )
        self.optimizer = torch.optim.Adam(
            [
                {"params": self.generator.parameters(), "lr": 3e-4},
                {"params": self.inference.parameters(), "lr": 1e-4},
            ],
            betas=(0.0, 0.9),
            weight_decay=5e-4,
        )
        self.lambdas = (1.0, 50.0, 0.1) if self.code else (1.0, 1.0, 1.0)
        self.scale = 1.0 if self.code else 1 / (2 * SIGMA**2)
        self.epsilon = 1e-6 if self.code else 0.0

    def _batches(self) -> Iterator[Tensor]:
        while True:
            for (x,) in self.loader:
                yield x

    def energy(self, x: Tensor) -> Tensor:
        value = self.network(x)
        return value / TEMPERATURE if self.code else value

    def energy_loss(self, x: Tensor, x_model: Tensor) -> Tensor:
        return self.energy(x).mean() - self.energy(x_model).mean()

    def energy_step(self, loss: Tensor) -> None:
        self.energy_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.energy_optimizer.step()

    def round(self) -> dict[str, float]:
        times = dict.fromkeys(PHASES, 0.0)
        start = time.perf_counter()
        x = next(self.batches)
        z = torch.randn(x.shape[0], self.generator.latent_dim)
        with torch.no_grad():
            x0 = self.generator(z)
        times["x0"], start = time.perf_counter() - start, time.perf_counter()
        x_revised = langevin(self.energy, x0, self.k_x, X_STEP)
        times["x-rev"], start = time.perf_counter() - start, time.perf_counter()
        if not self.code:  # the paper: the EBM first, on x̃
            self.energy_step(self.energy_loss(x, x_revised))
            times["E step"], start = time.perf_counter() - start, time.perf_counter()
        with torch.no_grad():
            mean, log_var = self.inference(x)
            z0 = mean + (0.5 * log_var).exp() * torch.randn_like(mean)

        def posterior(z_: Tensor) -> Tensor:
            return squared(x, self.generator(z_)) / (2 * SIGMA**2) + 0.5 * z_.square().sum(1)

        z_revised = langevin(posterior, z0, K_Z, Z_STEP)
        times["z-rev"], start = time.perf_counter() - start, time.perf_counter()
        data_w, teach_w, inference_w = self.lambdas
        generator_loss = self.scale * (
            data_w * squared(x, self.generator(z_revised)).mean()
            + teach_w * squared(x_revised, self.generator(z)).mean()
        )
        mean, log_var = self.inference(x)
        mean_r, log_var_r = self.inference(x_revised)
        inference_loss = (
            nll(z_revised, mean, log_var, self.epsilon).mean()
            + inference_w * nll(z, mean_r, log_var_r, self.epsilon).mean()
        )
        self.optimizer.zero_grad(set_to_none=True)
        (generator_loss + inference_loss).backward()
        self.optimizer.step()
        times["G+I step"], start = time.perf_counter() - start, time.perf_counter()
        if self.code:  # the code: refresh x0′ = g_{t+1}(z), a second chain, then the EBM
            with torch.no_grad():
                x0 = self.generator(z)
            x_revised = langevin(self.energy, x0, self.k_x, X_STEP)
            loss = self.energy_loss(x, x_revised)  # in "refresh", as ebmkit's refresh phase
            times["refresh"], start = time.perf_counter() - start, time.perf_counter()
            self.energy_step(loss)
            times["E step"] = time.perf_counter() - start
        return times


# Measuring ---------------------------------------------------------------------------------


def measure(work: Workload, preset: str, k_values: tuple[int, ...]) -> dict[int, Any]:
    """Per-round phase times of ebmkit and the hand loop at every k_x.

    Each k_x gets its own models from seed 0 (the same initial weights for both loops). Every
    round of the measurement runs one round of each (k_x, loop) pair, in an order rotated
    from round to round, so a change in machine speed (other work on the cores) hits every
    cell of the table alike; the first `work.warmup` rounds are not recorded.
    """
    setups = {}
    for k_x in k_values:
        torch.manual_seed(0)
        nets, data = work.make_nets(), work.make_data()
        trainer = ebmkit_trainer(preset, copy.deepcopy(nets), data, work.batch, k_x)
        z_seconds: list[float] = []
        timed_z_revision(trainer.initializer, z_seconds)
        hand = HandRound(preset, copy.deepcopy(nets), data, work.batch, k_x)
        setups[k_x] = (trainer, z_seconds, hand)
    cells = [(k_x, loop) for k_x in k_values for loop in ("ebmkit", "hand")]
    rounds: dict[int, dict[str, list[dict[str, float]]]] = {
        k_x: {"ebmkit": [], "hand": []} for k_x in k_values
    }
    for index in range(work.warmup + work.rounds):
        shift = index % len(cells)
        for k_x, loop in cells[shift:] + cells[:shift]:
            trainer, z_seconds, hand = setups[k_x]
            times = ebmkit_round(trainer, z_seconds) if loop == "ebmkit" else hand.round()
            if index >= work.warmup:
                rounds[k_x][loop].append(times)
    return rounds


def median_phases(rounds: list[dict[str, float]]) -> dict[str, float]:
    medians = {phase: statistics.median(r[phase] for r in rounds) for phase in PHASES}
    medians["total"] = statistics.median(sum(r.values()) for r in rounds)
    return medians


def table(work: Workload, preset: str, results: dict[int, dict[str, Any]]) -> list[str]:
    lines = [
        f"### {work.name}, {preset} preset (batch {work.batch}, k_z = {K_Z}; "
        f"{work.warmup} warm-up + {work.rounds} timed rounds of each loop; median seconds)",
        "",
        "| k_x | loop | x0 | x-rev | z-rev | G+I step | refresh | E step | total s/round "
        "| ÷ k_x=30 | paper s/iter | paper ÷ k_x=30 | ebmkit ÷ hand |",
        "|---" * 13 + "|",
    ]
    medians = {
        (k_x, loop): median_phases(rounds[loop])
        for k_x, rounds in results.items()
        for loop in ("ebmkit", "hand")
    }
    for k_x in results:
        for loop in ("ebmkit", "hand"):
            ours = medians[k_x, loop]
            base = medians.get((30, loop))
            ratio = f"{ours['total'] / base['total']:.2f}" if base else "–"
            phases = " | ".join(
                "–" if phase == "refresh" and preset == "paper" else f"{ours[phase]:.4f}"
                for phase in PHASES
            )
            if loop == "ebmkit":
                paper = PAPER_SECONDS[k_x]
                extra = f"{paper:.3f} | {paper / PAPER_SECONDS[30]:.2f}"
                versus = f"{ours['total'] / medians[k_x, 'hand']['total']:.3f}"
            else:
                extra, versus = "| ", ""
            lines.append(
                f"| {k_x} | {loop} | {phases} | {ours['total']:.4f} | {ratio} | {extra} "
                f"| {versus} |"
            )
    fits = []
    for loop in ("ebmkit", "hand"):
        a, b = linear_fit({k_x: medians[k_x, loop]["total"] for k_x in results})
        fits.append(f"{loop} {a:.4f} + {b:.5f}·k_x (a/b = {a / b:.1f} x-steps)")
    a, b = linear_fit(PAPER_SECONDS)
    fits.append(f"paper {a:.3f} + {b:.4f}·k_x (a/b = {a / b:.1f})")
    lines += ["", "least-squares fit of the totals, s/round = a + b·k_x: " + "; ".join(fits)]
    return [*lines, ""]


def linear_fit(seconds: dict[int, float]) -> tuple[float, float]:
    """(a, b) of the least-squares line seconds ≈ a + b·k_x: b is the cost of one more x-step
    per round (two chain steps with the refresh), a the rest (z-chain, updates) — a/b, the
    rest in x-steps, is what sets the ratios to k_x = 30."""
    ks, ts = list(seconds), list(seconds.values())
    k_mean, t_mean = statistics.fmean(ks), statistics.fmean(ts)
    slope = sum((k - k_mean) * (t - t_mean) for k, t in zip(ks, ts, strict=True)) / sum(
        (k - k_mean) ** 2 for k in ks
    )
    return t_mean - slope * k_mean, slope


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few tiny rounds (smoke test)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--presets",
        nargs="+",
        default=None,
        choices=["code", "paper"],
        help="presets to time (default: both on the toy, the code's on the image workload)",
    )
    parser.add_argument("--log", type=Path, default=None, help=f"report file (default {LOG})")
    options = parser.parse_args(argv)
    torch.set_num_threads(options.threads)
    log = options.log if options.log is not None else (None if options.quick else LOG)
    k_values = (10, 30) if options.quick else K_X
    started = time.perf_counter()
    lines = [
        "# Dual-MCMC: seconds per round by phase, against k_x and a hand-written loop",
        "",
        f"device: cpu ({cpu_name()}); torch {torch.__version__}, python "
        f"{sys.version.split()[0]}, {platform.platform()}",
        f"threads: {torch.get_num_threads()}; load average (1 min) at start: {load_average()}",
        f"command: benchmarks/dual_mcmc_round.py {' '.join(argv or sys.argv[1:])}".rstrip(),
        "paper (Table 5, CIFAR-10 full size, its GPU, the code's round with the refresh): "
        + ", ".join(f"k_x {k}: {s} s/iter" for k, s in PAPER_SECONDS.items()),
        "noise: in the code preset x-rev and refresh do the same chain work, so their gap (and "
        "the hand loop's) shows this run's timing noise; see the load averages",
        "",
    ]
    print("\n".join(lines), flush=True)
    for work in workloads(options.quick):
        for preset in options.presets or work.presets:
            results = measure(work, preset, k_values)
            block = table(work, preset, results)
            print("\n".join(block), flush=True)
            lines += block
    tail = [
        f"load average (1 min) at end: {load_average()}; "
        f"wall {time.perf_counter() - started:.0f} s",
    ]
    print("\n".join(tail))
    lines += tail
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("\n".join(lines) + "\n")
        print(f"wrote {log}")


if __name__ == "__main__":
    main()
