"""How far does one STANLEY step move an image chain: the authors' code form vs the paper's eq. 6?

Issue 9. The two image configs differ only in the update (both: ShortRunConvNet n_f = 64,
chains of K = 100 steps from U(−1, 1), Γ per pixel from the gradient's norm over the
channels, th = 1e-4):

- code  (gin/stanley_flowers.gin, legacy_code = True):  x' = x − ∇E + γ⊙(0.01·ξ)
- paper (gin/stanley_flowers_paper.gin, eq. 6):          x' = x − ½γ⊙∇E + γ^½⊙ξ
  with γ = ε·th / max(th, r), r = ‖∇E‖ over the channels of a pixel.

For a fresh network and for one trained briefly (contrastive rounds on scikit-learn's digits,
upscaled to 3×32×32, chains of the code's update, Adam lr 1e-4: the recipe of
gin/base/images.gin, with a small batch to stay CPU-sized), the code's chain runs K steps
from U(−1, 1); at steps t of that chain, one step of each update is taken from the same x
with the same ξ, through the plugin's kernel. For each step the table gives the per-sample
RMS per element (‖·‖/√(3·32·32)), median over the chains, of the drift, the noise and the
whole move x' − x, the median γ, and the temperature T = noise²/(2·drift step) the update
runs at (the code: (γ·0.01)²/2 at the median γ; eq. 6: 1 whatever ε and th). The paper rows
named "own chain" follow eq. 6's own chain instead. A first table gives the gradient size
r_rms = sqrt(mean over pixels of r²) at U(−1, 1) and the ε that matches the drifts there.

    .venv/bin/python benchmarks/stanley_image_displacement.py --threads 1 [--quick]

Derivation (printed too): with every r above th, γ = ε·th/r, so eq. 6's drift ½γ·∇E has
norm ½ε·th at every pixel; its RMS per element is ½ε·th/√3. The code's drift ∇E has RMS per
element r_rms/√3. They are equal when ε·th = 2·r_rms.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import attrs
import torch
from torch import Tensor

import ebmkit
from ebmkit.config import build_configured
from ebmkit.energies.shortrun import ShortRunConvNet
from ebmkit_stanley import Stanley, gradient_magnitude

ROOT = Path(__file__).resolve().parents[1]
CODE_CONFIG = ROOT / "gin" / "stanley_flowers.gin"
PAPER_CONFIG = ROOT / "gin" / "stanley_flowers_paper.gin"
LAST = ebmkit.StepContext(last=True)  # a lone step that skips the gradient at x'


def config_sampler(path: Path) -> Stanley:
    """The `samplers.Stanley` that `path` binds (the sampler `ebmkit run path` uses)."""
    sampler = build_configured(path, "samplers.Stanley")
    assert isinstance(sampler, Stanley)
    return sampler


def rms(v: Tensor) -> Tensor:
    """Per-sample RMS per element, shape (B,)."""
    return v.flatten(1).square().mean(1).sqrt()


def pixel_rms(grad: Tensor) -> Tensor:
    """r_rms per sample: sqrt(mean over pixels of ‖∇E‖² over the channels)."""
    return gradient_magnitude(grad, "channel")[:, 0].flatten(1).square().mean(1).sqrt()


def drift_of(sampler: Stanley, grad: Tensor) -> Tensor:
    """The deterministic part of one move: −∇E (code form) or −½Γ∇E (eq. 6)."""
    if sampler.legacy_code:
        return -grad
    return -0.5 * sampler.step_sizes(grad) * grad


def one_step(sampler: Stanley, energy: torch.nn.Module, x: Tensor, seed: int) -> dict:
    """One move of `sampler` from x through the kernel; its parts, medians over the chains.

    The drift is also compared with the code's drift at the same x, −∇E(x): the ratio of
    their RMS and their cosine, per chain.
    """
    state = sampler.init(x, energy)
    grad, gamma = state.grad, state.extras["gamma"]
    generator = torch.Generator().manual_seed(seed)  # the same ξ for every update
    moved, _ = sampler.step(state, energy, generator=generator, context=LAST)
    drift = drift_of(sampler, grad)
    noise = moved.x - x - drift
    if sampler.legacy_code:  # T = σ²/(2h) with h = 1 and σ = γ·noise_scale
        temperature = (gamma.median().item() * sampler.noise_scale) ** 2 / 2
    else:  # h = γ/2, σ = γ^½: T = 1
        temperature = 1.0
    cosine = torch.nn.functional.cosine_similarity(drift.flatten(1), -grad.flatten(1))
    return {
        "gamma": gamma.median().item(),
        "drift": rms(drift).median().item(),
        "noise": rms(noise).median().item(),
        "total": rms(moved.x - x).median().item(),
        "ratio": (rms(drift) / rms(grad)).median().item(),
        "cosine": cosine.median().item(),
        "T": temperature,
    }


def chain_points(
    sampler: Stanley, energy: torch.nn.Module, x0: Tensor, points: list[int], seed: int
) -> dict[int, Tensor]:
    """The states of `sampler`'s chain from x0 after t steps, for t in `points`."""
    generator = torch.Generator().manual_seed(seed)
    states, x = {}, x0
    done = 0
    for t in sorted(points):
        if t > done:
            x = sampler.sample(energy, x, t - done, generator=generator).x.detach()
            done = t
        states[t] = x
    return states


def train_briefly(
    energy: torch.nn.Module, sampler: Stanley, rounds: int, batch: int, steps: int, seed: int
) -> float:
    """Contrastive rounds on upscaled digits (the images.gin recipe); returns seconds."""
    start = time.perf_counter()
    data = ebmkit.create(
        "dataset", "Digits", image_size=28, padding=2, channels=3, dequantize_std=0.03
    )
    optimizer = torch.optim.Adam(energy.parameters(), lr=1e-4, betas=(0.9, 0.999))
    generator = torch.Generator().manual_seed(seed)
    for _ in range(rounds):
        index = torch.randint(len(data), (batch,), generator=generator)
        x_data = torch.stack([data[int(i)][0] for i in index])
        x0 = torch.rand((batch, 3, 32, 32), generator=generator) * 2 - 1
        x_model = sampler.sample(energy, x0, steps, generator=generator).x.detach()
        loss = energy(x_data).mean() - energy(x_model).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def fmt(value: float) -> str:
    return f"{value:.2e}" if value < 0.01 or value >= 1000 else f"{value:.3f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chains", type=int, default=8, help="chains measured per network")
    parser.add_argument("--fresh-seeds", type=int, default=5, help="fresh networks for r_rms")
    parser.add_argument("--rounds", type=int, default=25, help="training rounds")
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="tiny network and chains (smoke)")
    options = parser.parse_args(argv)
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    n_f = 8 if options.quick else 64
    rounds = 2 if options.quick else options.rounds
    code, paper = config_sampler(CODE_CONFIG), config_sampler(PAPER_CONFIG)
    steps = 5 if options.quick else code.n_steps
    points = sorted({0, steps // 2, steps - 1})
    shape = (options.chains, 3, 32, 32)
    started = time.perf_counter()

    print(
        f"code : {CODE_CONFIG.relative_to(ROOT)}: legacy_code={code.legacy_code}, "
        f"th={code.th}, noise_scale={code.noise_scale}, reduce={code.reduce!r}"
    )
    print(
        f"paper: {PAPER_CONFIG.relative_to(ROOT)}: legacy_code={paper.legacy_code}, "
        f"ε={paper.step_size}, th={paper.th}, reduce={paper.reduce!r}"
    )
    print(
        f"ShortRunConvNet(n_f={n_f}), {options.chains} chains of {steps} steps, "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)\n"
    )

    # 1. r_rms at U(−1, 1) on fresh networks, and the ε that matches the drifts there.
    found, above = [], []
    for seed in range(options.fresh_seeds):
        torch.manual_seed(seed)
        net = ShortRunConvNet(n_f=n_f)
        x0 = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1
        grad = code.init(x0, net).grad
        found.append(pixel_rms(grad).median().item())
        above.append((gradient_magnitude(grad, "channel") > paper.th).float().mean().item())
    r_rms = statistics.mean(found)
    spread = statistics.stdev(found) if len(found) > 1 else 0.0
    print("fresh networks at U(−1, 1): r_rms = sqrt(mean over pixels of ‖∇E‖²_channels)")
    print(
        f"  seeds 0–{options.fresh_seeds - 1}: {', '.join(fmt(v) for v in found)}; "
        f"mean {fmt(r_rms)} ± {fmt(spread)}; pixels with r > th = {paper.th:g}: "
        f"{min(above):.1%} to {max(above):.1%}"
    )
    print(
        f"  matched drift: ε·th = 2·r_rms = {fmt(2 * r_rms)}; with th = {paper.th}: "
        f"ε = {2 * r_rms / paper.th:.2f} (the config: ε = {paper.step_size})"
    )
    print(
        "derivation: where r > th, γ = ε·th/r, so eq. 6's drift ½γ∇E has norm ½ε·th at "
        "every pixel\n  (RMS per element ½ε·th/√3) whatever the gradient; the code's drift ∇E "
        "has RMS per element r_rms/√3.\n  Equal when ε·th = 2·r_rms. eq. 6's noise γ^½ is then "
        "sqrt(2·r_rms/r) per element, ≈ √2 where r = r_rms,\n  on any network. Per element "
        "noise / drift = 2√3 / sqrt(ε·th·r): below 1 only if ε·th > 12/r "
        f"(here {fmt(12 / r_rms)},\n  a drift of {fmt(6 / r_rms)} per pixel); a smaller ε·th "
        "makes the noise dominate more. eq. 6 is Langevin at T = 1\n  (h = γ/2, noise² = 2h) "
        f"for every ε, th; the code runs at T = (γ·{code.noise_scale:g})²/2 ≤ "
        f"{fmt(code.step_size**2 * code.noise_scale**2 / 2)}.\n"
    )

    # 2. The per-step displacement along the chains, fresh and briefly trained.
    torch.manual_seed(options.seed)
    fresh = ShortRunConvNet(n_f=n_f)
    trained = ShortRunConvNet(n_f=n_f)
    trained.load_state_dict(fresh.state_dict())
    seconds = train_briefly(trained, code, rounds, options.train_batch, steps, options.seed)
    print(
        f"trained: {rounds} contrastive rounds (digits 3×32×32, batch {options.train_batch},"
        f" {steps} steps of the code's update, Adam lr 1e-4), {seconds:.0f} s\n"
    )

    elementwise_step = paper.step_size / math.sqrt(3)  # the same drift RMS, elementwise
    candidates = [
        (f"paper ε={paper.step_size:g} (the config)", paper),
        ("paper ε=1", attrs.evolve(paper, step_size=1.0)),
        (
            f"paper ε={elementwise_step:.2f} elementwise",
            attrs.evolve(paper, step_size=elementwise_step, reduce="elementwise"),
        ),
    ]
    header = (
        f"| network | t | update (th = {paper.th:g}) | median γ | drift | noise | x' − x "
        "| drift / code's | cos(drift, code's) | T |"
    )
    print(header)
    print("|" + "---|" * (header.count(" | ") + 1))
    x0 = torch.rand(shape, generator=torch.Generator().manual_seed(options.seed + 1)) * 2 - 1
    where = []
    for name, net in (("fresh", fresh), ("trained", trained)):
        for parameter in net.parameters():
            parameter.requires_grad_(False)
        code_chain = chain_points(code, net, x0, [*points, steps], options.seed + 2)
        paper_chain = chain_points(paper, net, x0, [*points, steps], options.seed + 2)
        for t in points:
            rows = [("code (channel)", code, code_chain[t])]
            rows += [(label, sampler, code_chain[t]) for label, sampler in candidates]
            if t > 0:
                own = f"paper ε={paper.step_size:g}, on its own chain"
                rows.append((own, paper, paper_chain[t]))
            for label, sampler, x in rows:
                part = one_step(sampler, net, x, 1000 + t)
                print(
                    f"| {name} | {t} | {label} | {fmt(part['gamma'])} | {fmt(part['drift'])} "
                    f"| {fmt(part['noise'])} | {fmt(part['total'])} "
                    f"| {part['ratio']:.2f} | {part['cosine']:.2f} "
                    f"| {fmt(part['T'])} |"
                )
        for label, chain in (("code", code_chain), (f"paper ε={paper.step_size:g}", paper_chain)):
            end = chain[steps]
            outside = (end.abs() > 1).float().mean().item()
            where.append(f"| {name} | {label} | {fmt(rms(end).median().item())} | {outside:.0%} |")
    print(f"\nwhere the chains are after {steps} steps (from U(−1, 1): RMS |x| 0.577)\n")
    print("| network | chain | RMS x | pixels outside [−1, 1] |\n|---|---|---|---|")
    print("\n".join(where))
    print(f"\nwall {time.perf_counter() - started:.0f} s")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")


if __name__ == "__main__":
    main()
