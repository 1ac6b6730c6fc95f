"""Distributed helpers with single-process fallbacks.

Everything that touches ``torch.distributed`` lives here, so the loss, the queue and the
training loop run unchanged in one CPU process: with no process group, ``rank()`` is 0,
``world_size()`` is 1 and every gather is the identity.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    """True when torchrun (or another launcher using its variables) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def init_from_env(device_type: str) -> None:
    """Join the process group torchrun describes: NCCL on CUDA, gloo on CPU."""
    if is_distributed() or not launched_by_torchrun():
        return
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend)


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward hands each rank the summed gradient of its own rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rows = x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # Every rank's local loss depends on every rank's rows (through the column
        # normalisation), so the gradient for my rows is the sum over all ranks' losses.
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = rank() * ctx.rows
        return grad[start : start + ctx.rows]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (n, ...) from all ranks into (world_size * n, ...), rank order.

    The backward pass is gradient-correct: rank r receives d(sum_k loss_k)/d(rows of r).
    DDP then averages parameter gradients over ranks, so the result equals the gradient of
    the mean of the ranks' losses, i.e. the single-process loss on the concatenated batch.
    All ranks must pass the same number of rows (use ``drop_last``). Identity with one process.
    """
    if world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def gather(x: torch.Tensor) -> torch.Tensor:
    """all_gather without gradient, concatenated along dim 0 (identity with one process)."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def local_rows(global_x: torch.Tensor, rows: int) -> torch.Tensor:
    """This rank's ``rows`` rows of a tensor gathered with :func:`gather_with_grad`."""
    start = rank() * rows
    return global_x[start : start + rows]


@torch.no_grad()
def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    if world_size() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x / world_size()


def broadcast_object(obj):
    """Send a picklable object from rank 0 to all ranks (identity with one process)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
