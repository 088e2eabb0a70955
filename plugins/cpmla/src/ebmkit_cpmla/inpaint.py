r"""`ebmkit eval inpaint`: fill a masked centre square through the CPMLA chain (method §3).

For images I with a mask M (1 = known, 0 = the hole): gradient descent on the chain's dual
start y₀ (x₀ = ∇G*(y₀), on the graph by implicit differentiation) through the T-step
`samplers.MirrorLangevin` chain with its noise held fixed (the generator re-seeded each
iteration, ``sample(..., differentiable=True)``), on ‖M ⊙ (x_T − I)‖²; then the known pixels
are pasted, u = M⊙I + (1 − M)⊙x_T. Writes before / after / original grids and prints JSON with
the masked-region MSE of u against I (CoopFlow's `test_impaint.py`, as the reference resolves
Eq. 13).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import ebmkit
import gin
from ebmkit_cpmla.mirror_langevin import MirrorLangevin, attach_implicit_gradient

__all__ = ["add_inpaint_task", "centre_mask", "inpaint"]


def centre_mask(shape: tuple[int, ...], size: int) -> Tensor:
    """M of `shape` (C, H, W): 1 outside, 0 inside the centred size × size square."""
    _, height, width = shape
    if not 0 < size <= min(height, width):
        raise ValueError(f"inpaint: --mask-size must be in 1..{min(height, width)}, got {size}")
    mask = torch.ones(shape)
    top, left = (height - size) // 2, (width - size) // 2
    mask[:, top : top + size, left : left + size] = 0.0
    return mask


def inpaint(
    sampler: MirrorLangevin,
    energy: Any,
    images: Tensor,
    mask: Tensor,
    *,
    n_steps: int,
    iterations: int = 17,
    lr: float = 0.03,
    seed: int = 0,
) -> dict[str, Any]:
    """Optimise y₀ through the chain; returns u, x_T, the masked input and the losses."""
    if not isinstance(sampler, MirrorLangevin):
        raise ValueError(
            f"inpaint optimises the start of a samplers.MirrorLangevin chain, but the run's "
            f"sampler is {type(sampler).__name__}; inpaint a CPMLA run"
        )
    mirror = sampler.mirror
    known = mask * images
    y0 = mirror.grad(known).detach().clone()
    losses = []
    for _ in range(iterations):
        y0.requires_grad_(True)
        with torch.enable_grad():
            x0 = attach_implicit_gradient(y0, mirror.inverse(y0.detach()).x.to(y0.dtype), mirror)
            generator = torch.Generator(device=images.device).manual_seed(seed)
            result = sampler.sample(
                energy, x0, n_steps, generator=generator, differentiable=True, adapt=False
            )
            loss = (mask * (result.x - images)).square().flatten(1).sum(1).sum()
            (gradient,) = torch.autograd.grad(loss, y0)
        losses.append(float(loss.detach()) / images.shape[0])
        y0 = (y0.detach() - lr * gradient).detach()
    with torch.no_grad():
        x0 = mirror.inverse(y0).x.to(images.dtype)
    generator = torch.Generator(device=images.device).manual_seed(seed)
    final = sampler.sample(energy, x0, n_steps, generator=generator, adapt=False).x.detach()
    filled = known + (1 - mask) * final
    hole = 1 - mask
    mse = float(((filled - images).square() * hole).sum() / (hole.sum() * images.shape[0]))
    return {"filled": filled, "x_T": final, "masked": known, "losses": losses, "mse": mse}


def _parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="a CPMLA run directory or checkpoint file")
    parser.add_argument("--mask-size", type=int, default=16)
    parser.add_argument("--chains", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=17)
    parser.add_argument("--lr", type=float, default=0.03)
    parser.add_argument("--steps", type=int, help="chain length T (default: the run's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNG grids")


def _run(args: argparse.Namespace) -> None:
    from torchvision.utils import save_image

    path = ebmkit.find_checkpoint(args.run)
    state = ebmkit.load_checkpoint(path)
    parts = ebmkit.build_parts(state, str(path), args.device)
    if not isinstance(parts.sampler, MirrorLangevin):
        raise SystemExit(
            f"ebmkit eval inpaint: {path}'s sampler is {type(parts.sampler).__name__}, not "
            f"samplers.MirrorLangevin; inpainting optimises a CPMLA chain's start"
        )
    selector = gin.query_parameter("experiment.trainer").scoped_selector
    dataset_reference = gin.query_parameter(f"{selector}.dataset")
    dataset = dataset_reference.scoped_configurable_fn()
    images = torch.stack([dataset[i][0] for i in range(args.chains)]).to(args.device)
    mirror_dtype = next(parts.sampler.mirror.parameters()).dtype
    images = images.to(mirror_dtype)
    mask = centre_mask(tuple(images.shape[1:]), args.mask_size).to(images)
    n_steps = args.steps or parts.n_steps or parts.sampler.n_steps
    found = inpaint(
        parts.sampler,
        parts.energy,
        images,
        mask,
        n_steps=n_steps,
        iterations=args.iterations,
        lr=args.lr,
        seed=args.seed,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    for name, value in (
        ("before", found["masked"]),
        ("after", found["filled"]),
        ("original", images),
    ):
        save_image((value.float().clamp(-1, 1) + 1) / 2, args.out / f"{name}.png", nrow=10)
    print(
        json.dumps(
            {
                "checkpoint": str(path),
                "mask_size": args.mask_size,
                "chains": args.chains,
                "iterations": args.iterations,
                "n_steps": n_steps,
                "lr": args.lr,
                "masked_mse": found["mse"],
                "loss_first": found["losses"][0] if found["losses"] else None,
                "loss_last": found["losses"][-1] if found["losses"] else None,
                "out": str(args.out),
            },
            indent=2,
        )
    )


def add_inpaint_task(tasks: Any) -> None:
    """Register `ebmkit eval inpaint`."""
    tasks.add(
        "inpaint",
        help="fill a masked centre square by optimising a CPMLA chain's start (CPMLA §3)",
        configure_parser=_parser,
        run=_run,
    )
