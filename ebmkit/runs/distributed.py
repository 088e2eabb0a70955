r"""Data-parallel state: torch.distributed from torchrun's environment, and the few collectives
a run needs (gradients averaged, modules broadcast from rank 0, flags and objects agreed).

Without torchrun's variables (a plain `ebmkit run`) nothing is initialised and every helper
is the identity of a single process: `rank()` is 0, `world_size()` is 1, `all_reduce_mean`
returns its input, `any_rank(flag)` is `flag`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "all_reduce_gradients",
    "all_objects",
    "all_reduce_mean",
    "barrier",
    "any_rank",
    "broadcast_module",
    "broadcast_object",
    "gather_objects",
    "gather_tensors",
    "init_from_environment",
    "is_distributed",
    "is_main",
    "max_over_ranks",
    "rank",
    "shutdown",
    "world_size",
]

TIMEOUT = timedelta(minutes=10)
"""How long a collective waits for a rank before failing (instead of hanging forever)."""


def init_from_environment() -> bool:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR/PORT or
    rendezvous); gloo on CPU, NCCL with CUDA (each rank on cuda:LOCAL_RANK). Returns whether
    this call initialised it (False: no torchrun variables, or already initialised)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ or dist.is_initialized():
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, timeout=TIMEOUT)
    return True


def shutdown() -> None:
    """Leave the process group (when one is initialised)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """Whether this process is one rank of an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """How many processes train together (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Whether this process writes the run's files (rank 0, or the only process)."""
    return rank() == 0


def _device() -> torch.device:
    """Where collectives put their buffers: the rank's GPU under NCCL, else the CPU."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_mean(values: Tensor) -> Tensor:
    """The mean of `values` over all ranks (a new tensor; `values` itself without a group)."""
    if not is_distributed():
        return values
    reduced = values.detach().to(_device(), copy=True)
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return (reduced / world_size()).to(values.device)


def all_reduce_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """Replace every present gradient by its mean over ranks, in one flat all-reduce.

    The graph, hence which parameters have a gradient, must be the same on every rank.
    """
    if not is_distributed():
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([grad.detach().reshape(-1).to(_device()) for grad in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size()
    offset = 0
    for grad in grads:
        count = grad.numel()
        grad.copy_(flat[offset : offset + count].view_as(grad))
        offset += count


def broadcast_module(module: nn.Module, buffers_only: bool = False) -> None:
    """Copy rank 0's parameters and buffers (only the buffers if asked) to every rank."""
    if not is_distributed():
        return
    tensors = [] if buffers_only else list(module.parameters())
    tensors += list(module.buffers())
    with torch.no_grad():
        for tensor in tensors:
            if tensor.device.type == _device().type:
                dist.broadcast(tensor.data, src=0)
            else:
                moved = tensor.data.to(_device())
                dist.broadcast(moved, src=0)
                tensor.data.copy_(moved)


def barrier() -> None:
    """Wait until every rank gets here."""
    if is_distributed():
        dist.barrier()


def any_rank(flag: bool) -> bool:
    """Whether `flag` is true on at least one rank (every rank gets the same answer)."""
    if not is_distributed():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def max_over_ranks(value: int) -> int:
    """The largest of every rank's integer `value` (the same answer on every rank)."""
    if not is_distributed():
        return value
    reduced = torch.tensor([value], dtype=torch.int64, device=_device())
    dist.all_reduce(reduced, op=dist.ReduceOp.MAX)
    return int(reduced.item())


def gather_tensors(values: Tensor) -> Tensor:
    """Every rank's `values` (same shape on each) concatenated along dim 0, rank order."""
    if not is_distributed():
        return values
    local = values.detach().contiguous().to(_device())
    parts = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(parts, local)
    return torch.cat(parts).to(values.device)


def gather_objects(value: Any) -> list[Any] | None:
    """Every rank's picklable `value`, in rank order, on rank 0 (None on the others)."""
    if not is_distributed():
        return [value]
    gathered: list[Any] | None = [None] * world_size() if is_main() else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


def all_objects(value: Any) -> list[Any]:
    """Every rank's picklable `value`, in rank order, on every rank."""
    if not is_distributed():
        return [value]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_object(value: Any) -> Any:
    """Rank 0's picklable `value` on every rank (what the other ranks pass is ignored)."""
    if not is_distributed():
        return value
    box = [value if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
