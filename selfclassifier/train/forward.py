"""The network step that data parallelism wraps: views -> per-head logits of every view,
with view 0's embedding swapped for its nearest neighbour in the queue once it is full.
"""

from __future__ import annotations

import torch
from torch import nn

from selfclassifier.queue import NNQueue


class MultiCropForward(nn.Module):
    """What DDP wraps: views -> (logits[head][view], view 0's embedding before the NN swap,
    the NN's labels or None).

    ``heads_fp32``: the heads run in float32 outside autocast (the authors' fp32 run; their
    logits feed a column softmax at tau 0.05), while backbone and projection may run in bf16.
    """

    def __init__(self, model: nn.Module, heads_fp32: bool = True):
        super().__init__()
        self.model = model
        self.heads_fp32 = heads_fp32

    def forward(
        self,
        views: list[torch.Tensor],
        queue: NNQueue | None = None,
        indices: torch.Tensor | None = None,
    ):
        if views[0].dim() == 2:  # cached backbone features (frozen-backbone mode)
            embeddings = list(self.model.project(torch.cat(views)).chunk(len(views)))
        else:
            embeddings = self.model.embed_views(views)
        first, nn_labels = embeddings[0], None
        if queue is not None and queue.full:
            # The nearest neighbour carries no gradient: view 0's branch then only trains the
            # heads, while the other views pull the backbone towards the neighbour's class.
            nearest, nn_labels = queue.nearest(first.detach(), indices)
            embeddings = [nearest] + list(embeddings[1:])
        with torch.autocast(first.device.type, enabled=not self.heads_fp32):
            if self.heads_fp32:  # only lower precisions are raised (a float64 model stays)
                embeddings = [e.float() if e.element_size() < 4 else e for e in embeddings]
            per_view = [self.model.classify(e) for e in embeddings]
        logits = [[pv[h] for pv in per_view] for h in range(len(self.model.heads))]
        return logits, first, nn_labels
