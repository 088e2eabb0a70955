"""How much time does ebmkit's `Langevin.sample` add over a hand-written PyTorch Langevin loop?

Both sides do the same work: the same energy, the same chains, the same step size and noise,
the same number of gradient evaluations (n for n steps) and the same random numbers (a run
of each from the same seed gives the same samples, which is checked before timing).

    .venv/bin/python benchmarks/langevin_overhead.py [--processes 3] [--repeats 7] [--no-trim]
        [--steps N] [--quick] [--compile] [--only TEXT]

Each workload runs in `--processes` fresh interpreters, one after another (the allocator's
luck with where big temporaries land is fixed per process, so it is averaged over several);
in each, hand, ebmkit and hand again run interleaved in rotating order after a warm-up. The
table gives the pooled median milliseconds per step of each; ratio = hand / ebmkit (>= 0.98:
ebmkit adds <= 2 %); the median and interquartile range of the per-repeat (paired) ratios;
each process's paired median; an A/A ratio (the hand loop against a second run of itself:
the machine's timing noise); the difference of the medians in microseconds per step; the
median minor page faults per step of each (glibc handing pages back to the OS and faulting
them in again; `--no-trim` turns that off in the children); and the largest difference
between the two loops' samples. The first row, an almost free energy, measures ebmkit's
fixed cost per step, which bounds its relative overhead on any real energy. The thread count
is torch's default (not changed here).

`--compile` adds ebmkit with `Langevin(compile=True)` (E and ∇E through torch.compile) to the
interleaved loops and five columns: its ms/step, hand / compiled (pooled and paired, with the
IQR), the compile seconds (its first call, less one timed run's seconds; each process starts
with an empty inductor cache, so this is what a first run pays) and its largest difference
from the hand loop's samples (float rounding: same random numbers, fused arithmetic).
`--only TEXT` keeps the workload named TEXT, else those whose name contains TEXT.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from machine_info import cpu_name, load_average
from torch import Tensor, nn

from ebmkit.energies.conv import ConvEnergy
from ebmkit.energies.mlp import MLPEnergy
from ebmkit.samplers.langevin import Langevin


class HalfSquare(nn.Module):
    """E(x) = ½·Σx²: almost free, so its row shows ebmkit's fixed cost per step."""

    def forward(self, x: Tensor) -> Tensor:
        return 0.5 * x.square().flatten(1).sum(1)


def hand_langevin(f: nn.Module, x0: Tensor, n: int, h: float, s: float) -> Tensor:
    """The reference loop: n gradient evaluations, x ← x − h∇E(x) + sξ."""
    x = x0
    for _ in range(n):
        x = x.detach().requires_grad_()
        (g,) = torch.autograd.grad(f(x).sum(), x)
        x = x - h * g + s * torch.randn_like(x)
    return x.detach()


def ebmkit_langevin(f: nn.Module, x0: Tensor, n: int, h: float, s: float) -> Tensor:
    return Langevin(step_size=h, noise_scale=s).sample(f, x0, n).x


def compiled_langevin(h: float, s: float) -> Callable[[nn.Module, Tensor, int], Tensor]:
    """ebmkit with compile=True: one sampler, so its compiled gradient is made once."""
    sampler = Langevin(step_size=h, noise_scale=s, compile=True)

    def run(f: nn.Module, x0: Tensor, n: int, h: float, s: float) -> Tensor:
        return sampler.sample(f, x0, n).x

    return run


LOOPS = {"hand": hand_langevin, "ebmkit": ebmkit_langevin, "again": hand_langevin}
COMPILED = "compiled"


@dataclass
class Workload:
    name: str
    make_energy: Callable[[], nn.Module]
    shape: tuple[int, ...]
    steps: int
    step_size: float
    noise_scale: float


def workloads(quick: bool, steps: int | None) -> list[Workload]:
    if quick:
        return [
            Workload("floor: E = ½·Σx²", HalfSquare, (64, 2), 50, 0.01, 0.1414),
            Workload("MLP 2-D (16,16)", lambda: MLPEnergy(2, (16, 16)), (256, 2), 5, 0.01, 0.1),
            Workload(
                "Conv (8,16)", lambda: ConvEnergy(channels=(8, 16)), (4, 3, 8, 8), 3, 1.0, 0.01
            ),
        ]
    return [
        Workload("floor: E = ½·Σx²", HalfSquare, (64, 2), steps or 2000, 0.01, 0.1414),
        Workload(
            "MLP 2-D (128,128,128), the default run's chains",
            lambda: MLPEnergy(2, (128, 128, 128)),
            (256, 2),
            steps or 400,
            0.01,
            0.1414,
        ),
        Workload(
            "MLP 2-D (128,128,128)",
            lambda: MLPEnergy(2, (128, 128, 128)),
            (10_000, 2),
            steps or 100,
            0.01,
            0.1414,
        ),
        Workload(
            "Conv (64,128,256,256)",
            lambda: ConvEnergy(channels=(64, 128, 256, 256)),
            (64, 3, 32, 32),
            steps or 25,
            1.0,
            0.01,
        ),
    ]


def timed(loop: Callable[..., Tensor], *args: object) -> tuple[float, int]:
    """Wall seconds of one run and the minor page faults it caused (0 where unknown)."""
    faults = minor_faults()
    start = time.perf_counter()
    loop(*args)
    return time.perf_counter() - start, minor_faults() - faults


def minor_faults() -> int:
    try:
        import resource
    except ImportError:  # not on Windows
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def measure(work: Workload, repeats: int, compile_too: bool = False) -> dict[str, object]:
    """One process's interleaved timings: seconds per step and page faults per step of each
    (with `compile_too`, of the compiled sampler too, and its first call's seconds)."""
    torch.manual_seed(0)
    energy = work.make_energy()
    x0 = torch.rand(work.shape) * 2 - 1
    args = (energy, x0, work.steps, work.step_size, work.noise_scale)
    loops = dict(LOOPS)
    if compile_too:
        loops[COMPILED] = compiled_langevin(work.step_size, work.noise_scale)

    # Same work: from the same seed both loops give the same samples (this is also the warm-up).
    torch.manual_seed(1)
    reference = hand_langevin(*args)
    torch.manual_seed(1)
    difference = (ebmkit_langevin(*args) - reference).abs().max().item()
    compiled: dict[str, float] = {}
    if compile_too:  # the first call compiles: timed apart, then checked against the hand loop
        torch.manual_seed(1)
        start = time.perf_counter()
        samples = loops[COMPILED](*args)
        compiled["first_call"] = time.perf_counter() - start
        compiled["diff"] = (samples - reference).abs().max().item()

    # Interleaved, in rotating order, so drift in machine speed hits every loop alike; the
    # hand loop runs twice per repeat, and hand / hand again shows the timing noise (A/A).
    times: dict[str, list[float]] = {name: [] for name in loops}
    faults: dict[str, list[float]] = {name: [] for name in loops}
    for repeat in range(repeats):
        shift = repeat % len(loops)
        names = list(loops)[shift:] + list(loops)[:shift]
        for name in names:
            seconds, page_faults = timed(loops[name], *args)
            times[name].append(seconds / work.steps)
            faults[name].append(page_faults / work.steps)
    if compile_too:  # compile time: the first call less what a compiled run takes now
        compiled["compile"] = compiled["first_call"] - statistics.median(times[COMPILED]) * (
            work.steps
        )
    return {"times": times, "faults": faults, "diff": difference, "compiled": compiled}


def summarize(runs: list[dict[str, object]]) -> dict[str, float | str]:
    """Pool the repeats of every process: medians, paired ratios with their IQR, A/A."""
    times = {name: [t for run in runs for t in run["times"][name]] for name in LOOPS}
    faults = {name: [f for run in runs for f in run["faults"][name]] for name in LOOPS}
    hand, lib, again = (statistics.median(times[name]) for name in LOOPS)
    per_process = [
        statistics.median(
            a / b for a, b in zip(run["times"]["hand"], run["times"]["ebmkit"], strict=True)
        )
        for run in runs
    ]
    summary: dict[str, float | str] = {
        "hand": hand,
        "ebmkit": lib,
        "ratio": hand / lib,
        "paired": paired_ratio(times["hand"], times["ebmkit"]),
        "processes": " ".join(f"{ratio:.3f}" for ratio in per_process),
        "aa": hand / again,
        "faults": f"{statistics.median(faults['hand']):.0f} / "
        f"{statistics.median(faults['ebmkit']):.0f}",
        "extra": (lib - hand) * 1e6,
        "diff": max(run["diff"] for run in runs),
    }
    if all(run.get("compiled") for run in runs):
        compiled_times = [t for run in runs for t in run["times"][COMPILED]]
        compiled = statistics.median(compiled_times)
        summary.update(
            compiled=compiled,
            compiled_ratio=hand / compiled,
            compiled_paired=paired_ratio(times["hand"], compiled_times),
            compile_seconds=" ".join(f"{run['compiled']['compile']:.1f}" for run in runs),
            compiled_diff=max(run["compiled"]["diff"] for run in runs),
        )
    return summary


def paired_ratio(numerators: list[float], denominators: list[float]) -> str:
    """The median and interquartile range of the per-repeat ratios, as "m (low–high)"."""
    paired = [a / b for a, b in zip(numerators, denominators, strict=True)]
    low, mid, high = statistics.quantiles(paired, n=4) if len(paired) > 1 else paired * 3
    return f"{mid:.3f} ({low:.3f}–{high:.3f})"


def in_fresh_processes(index: int, options: argparse.Namespace) -> list[dict[str, object]]:
    """Run workload `index` in `options.processes` new interpreters, one after another.

    Where the allocator puts big temporaries (and so how often pages are returned to the OS
    and faulted back, or land on the same cache sets) is fixed per process and differs
    between the two loops by luck; pooling several processes averages that luck out.
    """
    environment = dict(os.environ)
    if options.no_trim:  # glibc keeps freed memory: no page returned, none faulted back
        environment.update(
            MALLOC_MMAP_THRESHOLD_="4294967296", MALLOC_TRIM_THRESHOLD_="8589934592"
        )
    command = [sys.executable, __file__, "--worker", str(index), "--repeats", str(options.repeats)]
    command += ["--quick"] * options.quick + (
        ["--steps", str(options.steps)] if options.steps else []
    )
    command += ["--compile"] * options.compile + (["--only", options.only] if options.only else [])
    runs = []
    for _ in range(options.processes):
        with tempfile.TemporaryDirectory(prefix="inductor-") as cache:
            if options.compile:  # an empty inductor cache: the compile time a first run pays
                environment["TORCHINDUCTOR_CACHE_DIR"] = cache
            done = subprocess.run(
                command, env=environment, capture_output=True, text=True, check=True
            )
        runs.append(json.loads(done.stdout.splitlines()[-1]))
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs of each loop")
    parser.add_argument("--processes", type=int, default=3, help="fresh interpreters per workload")
    parser.add_argument("--steps", type=int, default=None, help="Langevin steps per run")
    parser.add_argument("--quick", action="store_true", help="tiny workloads (smoke test)")
    parser.add_argument(
        "--no-trim", action="store_true", help="glibc keeps freed memory (MALLOC_*_THRESHOLD_)"
    )
    parser.add_argument(
        "--compile", action="store_true", help="add Langevin(compile=True): its columns"
    )
    parser.add_argument(
        "--only", default=None, help="the workload of this name, else those containing it"
    )
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.quick and options.repeats == 7:
        options.repeats = 2
    work_list = workloads(options.quick, options.steps)
    if options.only:
        exact = [work for work in work_list if work.name == options.only]
        work_list = exact or [work for work in work_list if options.only in work.name]
        if not work_list:
            names = ", ".join(repr(work.name) for work in workloads(options.quick, options.steps))
            parser.error(f"--only {options.only!r} matches no workload; they are {names}")
    if options.worker is not None:  # a child: time one workload, print its raw numbers
        work = work_list[options.worker]
        print(json.dumps(measure(work, options.repeats, compile_too=options.compile)))
        return

    print(f"device: cpu ({cpu_name()})")
    print(f"torch {torch.__version__}, python {sys.version.split()[0]}, {platform.platform()}")
    print(f"threads: torch.get_num_threads() = {torch.get_num_threads()}")
    print(
        f"per workload: {options.processes} fresh processes × {options.repeats} interleaved "
        f"hand/ebmkit/hand{'/compiled' * options.compile} runs after a warm-up; allocator: "
        f"{'glibc, trimming off' if options.no_trim else 'glibc defaults'}"
    )
    if options.compile:
        print(
            "compiled: Langevin(compile=True), torch.compile (inductor) of E and ∇E; each "
            "process starts with an empty inductor cache"
        )
    print(f"load average (1 min) at start: {load_average()}\n")
    header = (
        "| workload | chains | steps | hand ms/step | ebmkit ms/step | ratio hand/ebmkit "
        "| paired ratio (IQR) | per process | A/A hand/hand | ebmkit − hand µs/step "
        "| page faults/step hand / ebmkit | max abs diff |"
    )
    if options.compile:
        header += (
            " compiled ms/step | ratio hand/compiled | paired hand/compiled (IQR) "
            "| compile s (first call), per process | max abs diff compiled |"
        )
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for index, work in enumerate(work_list):
        result = summarize(in_fresh_processes(index, options))
        chains = "×".join(str(size) for size in work.shape)
        print(
            f"| {work.name} | {chains} | {work.steps} | {1e3 * result['hand']:.3f} "
            f"| {1e3 * result['ebmkit']:.3f} | {result['ratio']:.3f} | {result['paired']} "
            f"| {result['processes']} | {result['aa']:.3f} | {result['extra']:+.1f} "
            f"| {result['faults']} | {result['diff']:.1e} |"
            + (
                f" {1e3 * result['compiled']:.3f} | {result['compiled_ratio']:.3f} "
                f"| {result['compiled_paired']} | {result['compile_seconds']} "
                f"| {result['compiled_diff']:.1e} |"
                if options.compile
                else ""
            ),
            flush=True,
        )
    print(f"\nload average (1 min) at end: {load_average()}")


if __name__ == "__main__":
    main()
