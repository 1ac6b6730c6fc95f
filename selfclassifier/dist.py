"""Distributed helpers with single-process fallbacks.

Everything that touches ``torch.distributed`` lives here, so the loss, the queue and the
training loop run unchanged in one CPU process: with no process group, ``rank()`` is 0,
``world_size()`` is 1 and every collective is the identity.

Gradient convention. Under data parallelism rank k computes ``loss_k``, the mean over its own
rows, and DDP averages parameter gradients over the W ranks, so training follows the gradient
of ``mean_k loss_k``, which is the single-process loss on the concatenated global batch. Every
differentiable collective here therefore hands rank r the gradient of ``sum_k loss_k`` with
respect to r's inputs (DDP's 1/W does the rest).
"""

from __future__ import annotations

import itertools
import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from selfclassifier.errors import ConfigError


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """This process's index on its node (torchrun's ``LOCAL_RANK``): the GPU it drives."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    """True when torchrun (or a launcher setting its variables) started several processes."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def resolve_device(
    name: str | torch.device = "auto", setting: str = "train.device"
) -> torch.device:
    """The device ``name`` asks for, for training and for the tools that load a run alike.

    'auto' is CUDA when available, else the CPU. Under torchrun (several processes) 'auto'
    and 'cuda' mean cuda:LOCAL_RANK, one GPU per process, and naming one GPU is refused:
    every process would drive it. A name that is no device, CUDA without a CUDA device, or a
    GPU index the machine lacks is a one-line ConfigError naming ``setting``, where the value
    came from (``train.device``, or ``--device`` for predict, evaluate, report and load).
    """
    name = str(name)
    shown = f"{setting} {name}" if setting.startswith("-") else f"{setting}={name}"
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"{setting} {name!r} is not a device; use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"{shown}: no CUDA device is available; use --device cpu")
        if launched_by_torchrun():
            if device.index is not None:
                raise ConfigError(
                    f"{shown} would put every process on one GPU; use --device cuda (or auto): "
                    "process LOCAL_RANK then drives cuda:LOCAL_RANK"
                )
            device = torch.device("cuda", local_rank())
        if (device.index or 0) >= count:
            raise ConfigError(f"{shown}: this machine has cuda:0..cuda:{count - 1}")
    return device


def init_from_env(device_type: str, timeout_s: float = 1800) -> None:
    """Join the process group torchrun describes: NCCL on CUDA, gloo on CPU.

    One process per GPU: on CUDA the process binds ``cuda:LOCAL_RANK`` before joining, so
    NCCL and ``all_gather_object`` use the right device. No-op without torchrun variables.
    """
    if is_distributed() or not launched_by_torchrun():
        return
    if device_type == "cuda":
        torch.cuda.set_device(local_rank())
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


# ----------------------------------------------------------------------------- collectives


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
        # Every rank's loss depends on every rank's rows (through the column normalisation),
        # so the gradient for my rows sums the contributions of all ranks' losses.
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = rank() * ctx.rows
        return grad[start : start + ctx.rows]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """The global batch: ``x`` (n, ...) of every rank concatenated in rank order, (W * n, ...).

    This is "gather the global batch, normalise columns, keep my rows": the loss normalises
    columns of the result and keeps :func:`local_rows`. The backward is gradient-correct: rank r
    receives d(sum_k loss_k)/d(x of rank r), so after DDP's averaging the parameter gradient is
    that of the single-process loss on the concatenated batch. All ranks must pass the same
    number of rows (the global batch is split evenly). Identity with one process.
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


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; every rank's output feeds its own loss, so the backward sums too."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_reduce_sum_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Differentiable sum of ``x`` over ranks (identity with one process)."""
    if world_size() == 1:
        return x
    return _AllReduceSum.apply(x)


@torch.no_grad()
def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over ranks, without gradient (identity with one process)."""
    if world_size() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


@torch.no_grad()
def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    return all_reduce_sum(x) / world_size()


def any_rank(*flags: bool, device: torch.device | str = "cpu") -> tuple[bool, ...]:
    """For each flag, whether it is true on at least one rank (one collective).

    Decisions that change the control flow (skip a step, stop) must be taken by all ranks
    together, or the others wait forever in the next collective.
    """
    if world_size() == 1:
        return tuple(bool(f) for f in flags)
    t = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in t.tolist())


def gather_object(obj) -> list:
    """Every rank's picklable ``obj``, in rank order (``[obj]`` with one process)."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    """Send a picklable object from rank 0 to all ranks (identity with one process)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ----------------------------------------------------------------------------- modules


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics come from the global batch, on any device.

    ``torch.nn.SyncBatchNorm`` only runs on accelerators; this one runs wherever
    ``torch.distributed`` does (gloo on CPU), with two differentiable all-reduces per call:
    the sum (and count) for the mean, then the centred sum of squares for the variance (two
    passes, so no cancellation). Without a process group, or in eval mode, it is BatchNorm.
    Normalises over every dim but 1, so it stands in for BatchNorm1d/2d/3d.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        # Sums accumulate in float64, as BatchNorm's own CPU kernel does.
        count = x.new_tensor([x.numel() / x.shape[1]], dtype=torch.float64)
        totals = all_reduce_sum_with_grad(torch.cat([xf.sum(dims, dtype=torch.float64), count]))
        n = totals[-1].detach()
        mean = (totals[:-1] / n).float()
        centred = xf - mean.view(shape)
        squares = centred.square().sum(dims, dtype=torch.float64)
        var = (all_reduce_sum_with_grad(squares) / n).float()
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), float(n))
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, n: float) -> None:
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * (n / max(n - 1.0, 1.0))  # BatchNorm keeps the unbiased variance
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)


def _to_sync_bn(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
        module, SyncBatchNorm | nn.SyncBatchNorm
    ):
        new = SyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine,
            module.track_running_stats,
        )  # fmt: skip
        # The very same parameter and buffer objects, so an optimiser built before the
        # conversion still updates them (as torch's convert_sync_batchnorm does).
        for name, tensor in itertools.chain(
            module.named_parameters(recurse=False), module.named_buffers(recurse=False)
        ):
            setattr(new, name, tensor)
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, _to_sync_bn(child))
    return module


def convert_sync_batchnorm(module: nn.Module, device_type: str) -> nn.Module:
    """Replace BatchNorm layers (in place) by ones that see the global batch.

    torch's fused ``nn.SyncBatchNorm`` on CUDA, :class:`SyncBatchNorm` elsewhere. State-dict
    keys do not change, so checkpoints load into either.
    """
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _to_sync_bn(module)


def data_parallel(net: nn.Module, device: torch.device, sync_bn: bool = True) -> nn.Module:
    """Wrap ``net`` for multi-process training: SyncBatchNorm (optional), then DDP.

    Identity with one process. BatchNorm layers are converted in place, so modules that
    ``net`` holds (the model that gets checkpointed) see the change too.
    """
    if world_size() == 1:
        return net
    if sync_bn:
        net = convert_sync_batchnorm(net, device.type)
    ids = [device.index if device.index is not None else local_rank()]
    return nn.parallel.DistributedDataParallel(
        net, device_ids=ids if device.type == "cuda" else None
    )
