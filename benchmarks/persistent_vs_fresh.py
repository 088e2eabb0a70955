"""Do persistent chains reach a mixture's weights that fresh short runs from one mode miss?

Target: the 1-D mixture 0.25·N(−m, s²) + 0.75·N(m, s²) (m = 1.5, s = 0.5), exact MALA
(h = 0.2). Every chain starts in the right mode, N(m, s²). Both arms spend the same
budget: R rounds of K MALA steps on the same number of chains.

- persistent: `initializers.Persistent` — each round continues the bank's chains (their
  states handed over, written back by `update`), so a chain has run r·K steps by round r;
- fresh: `initializers.Noise` at the same start — each round runs K steps from N(m, s²).

The left-mode weight (fraction of chains below 0) of the last round's samples is compared
with the exact 0.25, over several seeds (mean ± sd).

    .venv/bin/python benchmarks/persistent_vs_fresh.py [--seeds 5] [--rounds 100]
        [--steps 20] [--chains 2048] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from machine_info import cpu_name, load_average

from ebmkit.initializers.noise import Noise
from ebmkit.initializers.persistent import Persistent
from ebmkit.samplers.mala import MALA
from ebmkit.testing import MixtureTarget, finished_round

LEFT_WEIGHT, MODE, SCALE = 0.25, 1.5, 0.5
MIXTURE = MixtureTarget(
    weights=(LEFT_WEIGHT, 1 - LEFT_WEIGHT), means=(-MODE, MODE), stds=(SCALE, SCALE)
)


def left_weight_after(initializer, rounds: int, steps: int, chains: int) -> float:
    """Run `rounds` rounds of `steps` MALA steps from `initializer`; the last left weight."""
    sampler = MALA(step_size=0.2)
    for index in range(1, rounds + 1):
        init = initializer.sample(chains)
        result = sampler.sample(MIXTURE.energy, init, steps)
        initializer.update(finished_round(index, init, result))
    return float((result.x[:, 0] < 0).float().mean())


def right_mode() -> Noise:
    return Noise(shape=(1,), distribution="gaussian", mean=MODE, std=SCALE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--chains", type=int, default=2048)
    parser.add_argument("--quick", action="store_true", help="2 seeds, 5 rounds, 256 chains")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.rounds, args.chains = 2, 5, 256
    torch.set_num_threads(1)
    print(
        f"# {cpu_name()}, load {load_average()}, torch {torch.__version__}; target "
        f"{LEFT_WEIGHT}·N(−{MODE}, {SCALE}²) + {1 - LEFT_WEIGHT}·N({MODE}, {SCALE}²), MALA "
        f"h = 0.2, {args.chains} chains, {args.rounds} rounds × {args.steps} steps"
    )
    arms = {
        "persistent (Persistent bank)": lambda: Persistent(
            n_chains=args.chains, start=right_mode()
        ),
        "fresh (Noise at the right mode)": right_mode,
    }
    print("| chains | left weight (exact 0.25), mean ± sd | |error| | per seed | s |")
    print("|---|---|---|---|---|")
    for name, make in arms.items():
        weights, clock = [], time.perf_counter()
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            weights.append(left_weight_after(make(), args.rounds, args.steps, args.chains))
        mean = statistics.fmean(weights)
        sd = statistics.stdev(weights) if len(weights) > 1 else 0.0
        per_seed = ", ".join(f"{w:.3f}" for w in weights)
        print(
            f"| {name} | {mean:.4f} ± {sd:.4f} | {abs(mean - LEFT_WEIGHT):.4f} | {per_seed} | "
            f"{time.perf_counter() - clock:.1f} |"
        )


if __name__ == "__main__":
    main()
