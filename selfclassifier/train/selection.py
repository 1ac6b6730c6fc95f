"""Scoring candidate heads without labels, once training ends.

Each head's loss with the trained weights frozen (BatchNorm in eval mode), averaged over
``train.selection_passes`` passes over the data with augmentations no training step saw
(those of the epochs after the last). Lower is better: among heads of equal size the
lowest-loss one is the unsupervised pick (candidate heads and lowest-loss selection as in
SCAN, Van Gansbeke et al. 2020); :mod:`selfclassifier.heads` applies the rule.
"""

from __future__ import annotations

import torch
from torch import nn

from selfclassifier import dist
from selfclassifier.config import Config
from selfclassifier.heads import select_heads
from selfclassifier.loss import head_losses


@torch.no_grad()
def selection_losses(
    net: nn.Module,
    source,
    cfg: Config,
    num_classes: list[int],
    device: torch.device,
    amp_dtype: torch.dtype | None,
) -> list[float] | None:
    """Each head's loss on fresh views (see the module docstring), or None when no class
    count repeats in ``num_classes`` (nothing to choose) or the passes are disabled.

    ``net`` is the multi-crop forward, ``source`` the run's view source. Every rank runs
    this: the loss's column softmax spans the global batch. The RNG streams are left as
    they were, so scoring never changes what a resumed run does next."""
    passes = cfg.train.selection_passes
    if passes == 0 or len(set(num_classes)) == len(num_classes):
        return None
    net.eval()
    total = torch.zeros(len(num_classes), device=device)
    steps = 0
    with torch.random.fork_rng(devices=[]):
        for extra in range(passes):
            for views in source.epoch(cfg.train.epochs + extra):
                with torch.autocast(
                    device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
                ):
                    logits, _, _ = net(views, None)
                total += head_losses(
                    logits, cfg.loss.row_tau, cfg.loss.col_tau, cfg.loss.eps,
                    cfg.augment.global_crops,
                )  # fmt: skip
                steps += 1
    return [float(v) for v in dist.all_reduce_mean(total / max(steps, 1))]


def selection_summary(num_classes: list[int], losses: list[float]) -> tuple[dict, str]:
    """(the metrics.jsonl record, the log line) of a scored selection."""
    selected = select_heads(num_classes, losses)
    record = {"selection_loss": [round(v, 6) for v in losses], "selected": selected}
    picks = ", ".join(
        f"{c} classes: head {h}"
        for h, (c, pick) in enumerate(zip(num_classes, selected, strict=True))
        if pick and num_classes.count(c) > 1
    )
    return record, f"head selection (lowest loss, no labels): {picks}"
