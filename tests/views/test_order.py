"""Which samples each step sees: one permutation per (seed, epoch), drop_last, and the same
global batches at any process count (each rank takes its rows of every global batch)."""

from __future__ import annotations

import pytest
import torch

from selfclassifier.views.order import epoch_order, local_batches


def test_epoch_order_depends_only_on_seed_and_epoch():
    assert torch.equal(epoch_order(50, 1, 3), epoch_order(50, 1, 3))
    assert not torch.equal(epoch_order(50, 1, 3), epoch_order(50, 1, 4))
    batches = local_batches(50, 16, seed=1, epoch=3)
    assert len(batches) == 3 and all(len(b) == 16 for b in batches)
    assert len(set(torch.cat(batches).tolist())) == 48


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_batches_concatenate_to_the_one_process_batch(world):
    n, batch = 103, 16
    one = local_batches(n, batch, seed=3, epoch=1, rank=0, world_size=1)
    shards = [
        local_batches(n, batch, seed=3, epoch=1, rank=r, world_size=world) for r in range(world)
    ]
    assert len(one) == n // batch and all(len(s) == len(one) for s in shards)
    for step, full in enumerate(one):
        assert torch.equal(torch.cat([s[step] for s in shards]), full)
    seen = torch.cat(one)
    assert seen.unique().numel() == seen.numel()  # no sample twice in an epoch
    other_epoch = local_batches(n, batch, seed=3, epoch=2, rank=0, world_size=1)
    assert not torch.equal(torch.cat(other_epoch), seen)  # the set_epoch reshuffle
    with pytest.raises(ValueError, match="does not divide"):
        local_batches(n, 10, seed=3, epoch=1, rank=0, world_size=4)
