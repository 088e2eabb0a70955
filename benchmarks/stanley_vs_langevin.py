"""What does a STANLEY step cost next to a core Langevin step on the short-run image ConvNet?

Every sampler runs the same chains (64×3×32×32 from U(−1, 1)) for the same number of steps on
the same energy (`ConvEnergy(channels=(64, 128, 256, 256))`, the IGEBM/JEM-sized ConvNet):

- Langevin: core `Langevin(step_size=1, noise_scale=0.01)` (the short-run image update).
- STANLEY: unadjusted, the paper's form (th = 1e-4, the authors' image default, ε = 1).
- STANLEY + MH: the same proposal with the exact Metropolis–Hastings correction.
- STANLEY legacy: the authors' image-code update x − ∇E + Γ·(0.01ξ), reduce = "channel".

    .venv/bin/python benchmarks/stanley_vs_langevin.py [--repeats 5] [--steps 10]
        [--device cpu|cuda] [--quick]

Runs are interleaved (Langevin, STANLEY, MH, legacy, Langevin, ...) after a warm-up of each;
the table gives the median milliseconds per step, the gradient evaluations of one run (as
counted by the energy itself and as reported by the sampler), and the ratio of each median to
Langevin's. The thread count is torch's default unless --threads is given.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from machine_info import cpu_name
from torch import Tensor, nn

import ebmkit
from ebmkit_stanley import Stanley


class Counting(nn.Module):
    """Counts forward passes of the wrapped energy (each sampler call is followed by one ∇)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return self.inner(x)


@dataclass
class Contender:
    name: str
    make: Callable[[], Any]


CONTENDERS = [
    Contender(
        "Langevin (core)",
        lambda: ebmkit.create("sampler", "Langevin", step_size=1.0, noise_scale=0.01),
    ),
    Contender("STANLEY", lambda: Stanley(step_size=1.0, th=1e-4)),
    Contender("STANLEY + MH", lambda: Stanley(step_size=1.0, th=1e-4, metropolis=True)),
    Contender(
        "STANLEY legacy_code",
        lambda: Stanley(th=1e-4, legacy_code=True, noise_scale=0.01, reduce="channel"),
    ),
]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run: Callable[[], Any], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each sampler")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 10)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--quick", action="store_true", help="a tiny ConvNet (smoke test)")
    options = parser.parse_args(argv)
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    device = torch.device(options.device)
    channels = (8, 16) if options.quick else (64, 128, 256, 256)
    shape = (8, 3, 8, 8) if options.quick else (64, 3, 32, 32)
    steps = options.steps or (3 if options.quick else 10)
    repeats = 2 if options.quick and options.repeats == 5 else options.repeats

    torch.manual_seed(0)
    energy = Counting(ebmkit.create("energy", "Conv", channels=channels)).to(device)
    x0 = (torch.rand(shape) * 2 - 1).to(device)
    samplers = [contender.make() for contender in CONTENDERS]

    grad_evals, reported = [], []
    for sampler in samplers:  # warm-up run, and the gradient count of one run
        energy.calls = 0
        result = sampler.sample(energy, x0, steps)
        grad_evals.append(energy.calls)
        reported.append(result.n_grad_evals)
    times: list[list[float]] = [[] for _ in samplers]
    for _ in range(repeats):  # interleaved: drift in machine speed hits all alike
        for index, sampler in enumerate(samplers):
            seconds = timed(lambda sampler=sampler: sampler.sample(energy, x0, steps), device)
            times[index].append(seconds / steps)
    medians = [statistics.median(values) for values in times]

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"device: {device.type} ({where})")
    print(f"torch {torch.__version__}, python {sys.version.split()[0]}, {platform.platform()}")
    print(f"threads: torch.get_num_threads() = {torch.get_num_threads()}")
    print(
        f"energy: ConvEnergy(channels={channels}); chains {'×'.join(map(str, shape))}; "
        f"{steps} steps per run; {repeats} interleaved repeats after one warm-up run each\n"
    )
    header = (
        "| sampler | median ms/step | min–max ms/step | grad evals / run (counted, reported) "
        "| time ratio vs Langevin |"
    )
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for index, contender in enumerate(CONTENDERS):
        low, high = min(times[index]), max(times[index])
        print(
            f"| {contender.name} | {1e3 * medians[index]:.1f} "
            f"| {1e3 * low:.1f}–{1e3 * high:.1f} "
            f"| {grad_evals[index]}, {reported[index]} | {medians[index] / medians[0]:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
