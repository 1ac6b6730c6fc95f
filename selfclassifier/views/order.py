"""Which samples each step sees, and the seeds of their views: pure functions of (seed,
epoch, step, index), so any process count and any resume point see the same data.
"""

from __future__ import annotations

import torch

from selfclassifier import dist


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The epoch's sample order: a permutation that depends only on (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def local_batches(
    n: int,
    batch_size: int,
    seed: int,
    epoch: int,
    rank: int | None = None,
    world_size: int | None = None,
) -> list[torch.Tensor]:
    """This rank's index batches for the epoch: global batches (drop_last), rank's slice.

    This plays the part of ``DistributedSampler(shuffle=True, drop_last=True)`` with
    ``set_epoch(epoch)`` and a per-rank ``BatchSampler``: one permutation per epoch that every
    rank derives from (seed, epoch) alone, cut into ``n // batch_size`` global batches (the
    same global batches DistributedSampler would give from that permutation), each rank
    taking 1/W of every batch without overlap. Two differences, both needed here: rank r takes
    the contiguous rows [r*b, (r+1)*b) rather than every W-th sample, so concatenating the
    ranks' batches in rank order (what the gathers do) is the single-process batch row for
    row; and the list can be resumed at any step of an epoch.

    Args:
        n: dataset size; batch_size: the GLOBAL batch, a multiple of ``world_size``.
        rank, world_size: default to this process's.

    Returns:
        ``n // batch_size`` index tensors of ``batch_size // world_size`` samples each.
    """
    r = dist.rank() if rank is None else rank
    w = dist.world_size() if world_size is None else world_size
    if batch_size % w:
        raise ValueError(f"batch size {batch_size} does not divide across {w} processes")
    b = batch_size // w
    order = epoch_order(n, seed, epoch)
    steps = n // batch_size
    return [order[s * batch_size + r * b : s * batch_size + (r + 1) * b] for s in range(steps)]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + index * 104_729) % (2**63 - 1)


def step_generator(seed: int, epoch: int, step: int, device) -> torch.Generator:
    """The batched stage's generator for one global step, the same on every rank (each rank
    keeps its rows of the draws)."""
    g = torch.Generator(device=device)
    g.manual_seed(sample_seed(seed, epoch, step))
    return g
