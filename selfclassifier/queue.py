"""Nearest-neighbour queue of view-0 embeddings (Self-Classifier's NN augmentation).

Once the queue is full, the first view's embedding is replaced by its nearest neighbour in the
queue before the heads see it, which pulls together different images of one class. Each entry
keeps the dataset index of its image, and the look-up takes the top two neighbours so that an
image never gets back its own (stale) embedding from an earlier epoch, as in the authors'
``utils.NNQueue.get_nn``. The current batch is enqueued after the look-up. Labels, when the
data has them, ride along only to measure how often the neighbour shares the query's class
(the authors' "NN accuracy" monitor); training never reads them.
"""

from __future__ import annotations

import torch
from torch import nn

from selfclassifier import dist

UNKNOWN = -1  # the index or label of an entry that has none (an older checkpoint's queue)


class NNQueue(nn.Module):
    """FIFO of L2-normalised embeddings with their dataset indices and labels, held as
    buffers, so it travels with ``state_dict``.

    >>> q = NNQueue(size=4, dim=2)
    >>> q.push(torch.eye(2), indices=torch.tensor([0, 1])); q.full
    False
    >>> q.push(torch.tensor([[0.8, 0.6], [0.0, -1.0]]), indices=torch.tensor([2, 3])); q.full
    True
    >>> emb, _ = q.nearest(torch.tensor([[1.0, 0.0]]), indices=torch.tensor([0]))
    >>> emb.tolist()  # its own entry (index 0) is skipped for the next nearest
    [[0.800000011920929, 0.6000000238418579]]
    """

    def __init__(self, size: int, dim: int):
        super().__init__()
        if size < 2:
            raise ValueError(
                f"queue size must be >= 2 (the look-up takes two neighbours), got {size}"
            )
        self.register_buffer("items", torch.zeros(size, dim))
        self.register_buffer("indices", torch.full((size,), UNKNOWN, dtype=torch.long))
        self.register_buffer("labels", torch.full((size,), UNKNOWN, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        # A host copy of ``count``: the fill level is known from the pushes, so asking
        # ``full`` or looking up neighbours never waits for the device.
        self._filled = 0
        self._register_load_state_dict_pre_hook(_fill_missing_entries)
        self.register_load_state_dict_post_hook(_sync_filled)

    @property
    def full(self) -> bool:
        return self._filled >= self.items.shape[0]

    @torch.no_grad()
    def push(
        self,
        embeddings: torch.Tensor,
        indices: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> None:
        """Enqueue (B, D) embeddings with their dataset indices and labels (B,) (unknown: -1),
        overwriting the oldest once full."""
        size = self.items.shape[0]
        b = embeddings.shape[0]
        unknown = torch.full((b,), UNKNOWN, dtype=torch.long, device=self.items.device)
        columns = [
            (self.items, embeddings.detach().to(self.items.dtype)),
            (self.indices, unknown if indices is None else indices.to(self.indices)),
            (self.labels, unknown if labels is None else labels.to(self.labels)),
        ]
        keep = min(b, size)
        slots = (self.ptr + torch.arange(keep, device=self.items.device)) % size
        for buffer, values in columns:
            buffer[slots] = values[b - keep :]
        self.ptr.copy_((self.ptr + keep) % size)
        self.count.copy_(torch.clamp(self.count + keep, max=size))
        self._filled = min(self._filled + keep, size)

    @torch.no_grad()
    def push_global(
        self,
        embeddings: torch.Tensor,
        indices: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> None:
        """Enqueue every rank's rows in rank order, so all ranks hold the same queue."""
        b = embeddings.shape[0]
        unknown = torch.full((b,), UNKNOWN, dtype=torch.long, device=embeddings.device)
        self.push(
            dist.gather(embeddings.detach().contiguous()),
            dist.gather((unknown if indices is None else indices.long()).contiguous()),
            dist.gather((unknown if labels is None else labels.long()).contiguous()),
        )

    @torch.no_grad()
    def nearest(
        self, embeddings: torch.Tensor, indices: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(nearest entry (B, D), its label (B,)) by cosine similarity for each row of (B, D)
        ``embeddings``; with ``indices``, an entry holding the query's own image is passed
        over for the second nearest (the authors' top-2 rule)."""
        stored = self.items[: self._filled]
        sim = embeddings.to(stored.dtype) @ stored.T
        top = sim.topk(min(2, stored.shape[0]), dim=1).indices
        pick = top[:, 0]
        if indices is not None and top.shape[1] == 2:
            own = self.indices[pick] == indices.to(self.indices)
            pick = torch.where(own, top[:, 1], pick)
        return stored[pick].to(embeddings.dtype), self.labels[pick]


def _fill_missing_entries(state_dict, prefix, *args) -> None:
    """A queue saved before indices and labels were kept: its entries' are unknown."""
    items = state_dict.get(prefix + "items")
    if items is None:
        return
    for name in ("indices", "labels"):
        state_dict.setdefault(
            prefix + name, torch.full((items.shape[0],), UNKNOWN, dtype=torch.long)
        )


def _sync_filled(module: NNQueue, incompatible_keys) -> None:
    module._filled = int(module.count)  # one host read per checkpoint load
