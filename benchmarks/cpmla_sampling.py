"""CPMLA (T = 20) vs Langevin started from the same flow (T = 30, CoopFlow's) on a CPU-sized
image energy: seconds per 1k samples, gradient evaluations, and the inverse-solve cost
(L-BFGS iterations per step, the `solve/iterations` stat: summed over the 4 blocks).

CPU-sized: energies.CoopFlowResNet(n_f=8) (the paper: 128) and flows.CPFlowImage(hidden=16,
blocks_per_scale=2) (the paper's layout, narrower), both untrained (the flow's ActNorms
initialised on uniform noise images), 3×32×32, float32, one run. Usage:
    python benchmarks/cpmla_sampling.py [--quick]   (log: benchmarks/logs/cpmla_sampling.txt)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ebmkit import Langevin
from ebmkit_cpmla.energies import CoopFlowResNet
from ebmkit_cpmla.mirror_langevin import MirrorLangevin
from ebmkit_cpmla.multiscale import CPFlowImage


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="8 chains (default 32)")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    batch = 8 if args.quick else 32
    energy = CoopFlowResNet(n_f=8)
    for parameter in energy.parameters():
        parameter.requires_grad_(False)
    flow = CPFlowImage(event_shape=(3, 32, 32), hidden=16, blocks_per_scale=2)
    flow.initialize(torch.rand(64, 3, 32, 32) * 2 - 1)
    for parameter in flow.parameters():
        parameter.requires_grad_(False)
    cpmla = MirrorLangevin(mirror=flow, step_size=1e-2, noise="diagonal", n_steps=20)
    langevin = Langevin(
        step_size=0.00045, n_steps=30, grad_clip=222.22222222222223, clamp=(-1.0, 1.0)
    )
    rows = []
    for name, sampler in (("CPMLA T=20", cpmla), ("Langevin T=30 (flow start)", langevin)):
        generator = torch.Generator().manual_seed(1)
        start_time = time.perf_counter()
        with torch.no_grad():
            start = flow.sample(batch, generator=generator)
        result = sampler.sample(energy, start, generator=generator)
        seconds = time.perf_counter() - start_time
        iterations = result.stats.get("solve/iterations")
        rows.append((name, seconds / batch * 1000, result.n_grad_evals, iterations))
    lines = [
        f"cpmla_sampling ({'quick' if args.quick else 'full'}): {batch} chains, CPU 1 thread, "
        f"CoopFlowResNet(n_f=8), CPFlowImage(hidden=16, 2+2 blocks), 3x32x32, untrained",
        f"{'sampler':<28} {'s / 1k samples':>15} {'grad evals / chain':>19} "
        f"{'L-BFGS it. / step':>18}",
    ]
    for name, per_k, grads, iterations in rows:
        solve = "-" if iterations is None else f"{float(iterations):.1f}"
        lines.append(f"{name:<28} {per_k:>15.1f} {grads:>19} {solve:>18}")
    lines.append(f"ratio CPMLA / Langevin time: {rows[0][1] / rows[1][1]:.2f}")
    text = "\n".join(lines)
    print(text)
    log = Path(__file__).resolve().parent / "logs" / "cpmla_sampling.txt"
    log.write_text(text + "\n")


if __name__ == "__main__":
    main()
