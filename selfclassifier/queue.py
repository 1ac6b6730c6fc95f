"""Nearest-neighbour queue of view-1 embeddings (Self-Classifier v2, like NNCLR's support set).

Once the queue is full, the first view's embedding is replaced by its nearest neighbour in
the queue before the heads see it, which pulls together different images of one class. The
current batch is enqueued only after the look-up, so a sample never finds itself.
"""

from __future__ import annotations

import torch
from torch import nn

from selfclassifier import dist


class NNQueue(nn.Module):
    """FIFO of L2-normalised embeddings held as buffers, so it travels with ``state_dict``.

    >>> q = NNQueue(size=4, dim=2)
    >>> q.push(torch.eye(2)); q.full
    False
    >>> q.push(torch.eye(2)); q.full
    True
    >>> q.nearest(torch.tensor([[0.9, 0.1]])).tolist()
    [[1.0, 0.0]]
    """

    def __init__(self, size: int, dim: int):
        super().__init__()
        if size < 1:
            raise ValueError(f"queue size must be >= 1, got {size}")
        self.register_buffer("items", torch.zeros(size, dim))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        # A host copy of ``count``: the fill level is known from the pushes, so asking
        # ``full`` or looking up neighbours never waits for the device.
        self._filled = 0
        self.register_load_state_dict_post_hook(_sync_filled)

    @property
    def full(self) -> bool:
        return self._filled >= self.items.shape[0]

    @torch.no_grad()
    def push(self, embeddings: torch.Tensor) -> None:
        """Enqueue (B, D) embeddings, overwriting the oldest once full."""
        embeddings = embeddings.detach().to(self.items.dtype)
        size = self.items.shape[0]
        if embeddings.shape[0] >= size:
            embeddings = embeddings[-size:]
        b = embeddings.shape[0]
        idx = (self.ptr + torch.arange(b, device=self.items.device)) % size
        self.items[idx] = embeddings
        self.ptr.copy_((self.ptr + b) % size)
        self.count.copy_(torch.clamp(self.count + b, max=size))
        self._filled = min(self._filled + b, size)

    @torch.no_grad()
    def push_global(self, embeddings: torch.Tensor) -> None:
        """Enqueue every rank's embeddings in rank order, so all ranks hold the same queue."""
        self.push(dist.gather(embeddings.detach().contiguous()))

    @torch.no_grad()
    def nearest(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Nearest queue entry (cosine similarity) for each row of (B, D) ``embeddings``."""
        stored = self.items[: self._filled]
        sim = embeddings.to(stored.dtype) @ stored.T
        return stored[sim.argmax(dim=1)].to(embeddings.dtype)


def _sync_filled(module: NNQueue, incompatible_keys) -> None:
    module._filled = int(module.count)  # one host read per checkpoint load
