r"""How fast chains started in one mode reach the true mode weights: flow-MCMC vs MALA vs ULA.

Target: the unbalanced mixture 0.2·N(−m, 0.5²I) + 0.8·N(+m, 0.5²I), m = 2 (1-D) or (2, 2)
(2-D); the barrier between the modes is 8 (1-D) or 16 (2-D) nats. 1000 chains all start at
+m (the 0.8 mode); ŵ_small is the fraction of chains nearer −m. A row "crosses" at the first
check where |ŵ_small − 0.2| < 0.05; it reports the gradient evaluations spent per chain by
then (and energy-only evaluations and flow passes beside them) and the seconds.

Rows:
- flow-MCMC, fixed proposal: the method reference's off-centre Gaussian proposal (1-D
  N(1, 3²), 2-D N(0.5·1, 2.5²I)), as a frozen `flows.Affine`; each step one IMH move + 5 MALA
  moves at h = 0.1 (fixed).
- flow-MCMC, trained flow: a `flows.RealNVP` started near the identity (≈ N(0, I)) and fitted
  along the way, one Adam step (lr 1e-2) of forward KL on the chain states after every step,
  after which the chains' cached log λ are re-made (`init`, one more gradient, counted).
- MALA alone, h = 0.1 (fixed), and ULA, h = 0.05, each capped at 10⁵ gradient evaluations
  per chain: a row that never crosses reports "> cap" (a lower bound).

    .venv/bin/python benchmarks/flow_mcmc_mixing.py            # one run, both dimensions
    .venv/bin/python benchmarks/flow_mcmc_mixing.py --quick    # smaller caps (tests)
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import attrs
import torch
from torch import Tensor

from ebmkit.flows import Affine, RealNVP
from ebmkit.protocols import Sampler
from ebmkit.samplers.langevin import Langevin
from ebmkit.samplers.mala import MALA
from ebmkit_flow_mcmc import FlowMCMC

WEIGHT_SMALL = 0.2
TOLERANCE = 0.05
STD = 0.5


@attrs.define
class Mixture:
    """E(x) = −log[0.2·N(x; −m, σ²I) + 0.8·N(x; m, σ²I)] (normalised), any dimension."""

    dim: int

    @property
    def mean(self) -> Tensor:
        return torch.full((self.dim,), 2.0, dtype=torch.float64)

    def __call__(self, x: Tensor) -> Tensor:
        mean = self.mean.to(x.dtype)
        log_small = -((x + mean).square().sum(1)) / (2 * STD**2) + torch.log(
            torch.tensor(WEIGHT_SMALL, dtype=x.dtype)
        )
        log_large = -((x - mean).square().sum(1)) / (2 * STD**2) + torch.log(
            torch.tensor(1 - WEIGHT_SMALL, dtype=x.dtype)
        )
        normaliser = self.dim * (
            torch.log(torch.tensor(STD)) + 0.5 * torch.log(torch.tensor(2 * torch.pi))
        )
        return -torch.logaddexp(log_small, log_large) + normaliser.to(x.dtype)

    def small_fraction(self, x: Tensor) -> float:
        """The fraction of chains nearer −m than +m."""
        return float(((x * self.mean.to(x.dtype)).sum(1) < 0).double().mean())


@attrs.define
class Crossing:
    """What a row spent until it crossed (or until its cap, `crossed` False)."""

    crossed: bool
    grads: int
    energies: int
    flows: int
    seconds: float
    final_small: float


def run_until_crossing(
    sampler: Sampler,
    target: Mixture,
    n_chains: int,
    cap: int,
    check_every: int,
    seed: int,
    after_step: Callable[[Tensor], None] | None = None,
) -> Crossing:
    """Step `sampler` from +m until ŵ_small is within TOLERANCE of 0.2 or `cap` gradients.

    `after_step(x)`, when given, trains the proposal flow on the chain states; the chains
    are then re-initialised on the updated flow (caches refreshed, costs counted).
    """
    generator = torch.Generator().manual_seed(seed)
    x = target.mean.expand(n_chains, target.dim).clone()
    start = time.perf_counter()
    state, cost = sampler.init_with_cost(x, target)
    grads, energies, flows = cost.n_grad_evals, cost.n_energy_evals, cost.n_flow_evals
    step = 0
    while grads < cap:
        state, info = sampler.step(state, target, generator=generator)
        grads += info.n_grad_evals
        energies += info.n_energy_evals
        flows += info.n_flow_evals
        step += 1
        if after_step is not None:
            after_step(state.x)
            state, cost = sampler.init_with_cost(state.x, target, previous=state)
            grads += cost.n_grad_evals
            energies += cost.n_energy_evals
            flows += cost.n_flow_evals + 2  # the training step: one forward, one backward pass
        if step % check_every == 0:
            small = target.small_fraction(state.x)
            if abs(small - WEIGHT_SMALL) < TOLERANCE:
                return Crossing(True, grads, energies, flows, time.perf_counter() - start, small)
    small = target.small_fraction(state.x)
    return Crossing(False, grads, energies, flows, time.perf_counter() - start, small)


def fixed_proposal(dim: int) -> Affine:
    """The reference's off-centre proposal: N(1, 3²) in 1-D, N(0.5·1, 2.5²I) in 2-D."""
    loc, scale = (1.0, 3.0) if dim == 1 else (0.5, 2.5)
    return Affine(dim=dim, loc=loc, scale=scale).double().freeze()


def trained_flow(dim: int, seed: int) -> tuple[RealNVP, Callable[[Tensor], None]]:
    """A RealNVP near the identity and the forward-KL step that fits it to chain states."""
    torch.manual_seed(seed)
    flow = RealNVP(dim=dim, transforms=3, hidden_features=(32, 32), learning_rate=1e-2).double()
    optimizer = flow.optimizer

    def fit(x: Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = -flow.log_prob(x.detach()).mean()
        loss.backward()
        optimizer.step()

    return flow, fit


def rows(dim: int, seed: int) -> dict[str, tuple[Sampler, Callable[[Tensor], None] | None, int]]:
    """name → (sampler, per-step flow update or None, check every k steps)."""
    fixed = FlowMCMC(flow=fixed_proposal(dim), local=MALA(step_size=0.1), local_steps=5)
    flow, fit = trained_flow(dim, seed)
    trained = FlowMCMC(flow=flow, local=MALA(step_size=0.1), local_steps=5)
    return {
        "flow-MCMC, fixed off-centre proposal": (fixed, None, 1),
        "flow-MCMC, RealNVP trained along the way": (trained, fit, 1),
        "MALA, h = 0.1": (MALA(step_size=0.1), None, 100),
        "ULA, h = 0.05": (Langevin(step_size=0.05), None, 100),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chains", type=int, default=1000)
    parser.add_argument("--cap", type=int, default=100_000, help="gradients per chain, MALA/ULA")
    parser.add_argument("--flow-cap", type=int, default=20_000, help="gradients, flow-MCMC")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dims", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--quick", action="store_true", help="caps 2000 / 2000, 200 chains")
    args = parser.parse_args()
    if args.quick:
        args.cap, args.flow_cap, args.chains = 2000, 2000, 200
    torch.set_num_threads(1)
    print(
        f"Chains started in the 0.8 mode reaching ŵ_small = 0.2 ± {TOLERANCE} "
        f"({args.chains} chains, seed {args.seed}, float64, one thread)\n"
    )
    print(
        "| dim | method | crossed | gradients / chain | energy-only evals | flow passes "
        "| seconds | ŵ_small at the end |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for dim in args.dims:
        target = Mixture(dim)
        results = {}
        for name, (sampler, update, every) in rows(dim, args.seed).items():
            cap = args.flow_cap if update is not None or "flow" in name else args.cap
            found = run_until_crossing(
                sampler, target, args.chains, cap, every, args.seed, after_step=update
            )
            results[name] = found
            grads = f"{found.grads}" if found.crossed else f"> {found.grads}"
            print(
                f"| {dim} | {name} | {'yes' if found.crossed else 'no'} | {grads} "
                f"| {found.energies} | {found.flows} | {found.seconds:.1f} "
                f"| {found.final_small:.3f} |"
            )
        mala = results["MALA, h = 0.1"]
        for name in (
            "flow-MCMC, fixed off-centre proposal",
            "flow-MCMC, RealNVP trained along the way",
        ):
            flow_row = results[name]
            if flow_row.crossed:
                bound = "≥ " if not mala.crossed else ""
                ratio = mala.grads / flow_row.grads
                print(f"|  | {name}: MALA / flow-MCMC gradients | {bound}{ratio:.0f}× | | | | | |")


if __name__ == "__main__":
    main()
