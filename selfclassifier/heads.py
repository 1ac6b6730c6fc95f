"""Which head to use: the label-free pick among candidate heads of equal size.

A run with several heads of one class count (candidate heads) scores each with its loss on
views no training step saw (``train/selection.py``); the lowest-loss head of each size is
the unsupervised choice, and the one predict, evaluate, report and ``load()`` use by default.
"""

from __future__ import annotations

import math


def select_heads(classes: list[int], losses: list[float]) -> list[bool]:
    """Per head, whether it has the lowest loss among the heads with its number of classes
    (the first on a tie): the unsupervised choice among candidate heads.

    >>> select_heads([10, 10, 20, 10], [0.3, 0.2, 0.9, 0.2])
    [False, True, True, False]
    """
    best: dict[int, int] = {}
    for h, (c, loss) in enumerate(zip(classes, losses, strict=True)):
        if c not in best or loss < losses[best[c]]:
            best[c] = h
    return [best[c] == h for h, c in enumerate(classes)]


def mark_selection(heads: list[dict], classes: list[int], losses: list[float]) -> list[dict]:
    """Add ``selection_loss`` and ``selected`` (:func:`select_heads`) to per-head score dicts."""
    for head, loss, pick in zip(heads, losses, select_heads(classes, losses), strict=True):
        head["selection_loss"], head["selected"] = loss, pick
    return heads


def default_head(classes: list[int], losses: list[float] | None) -> int:
    """The head tools use when none is named: the first head or, when candidate heads of its
    size were scored, the selected (lowest-loss) one among them.

    >>> default_head([10, 10, 20], [0.3, 0.2, 0.9]), default_head([10, 20], None)
    (1, 0)
    """
    if not losses:
        return 0
    selected = select_heads(classes, losses)
    return next(h for h, c in enumerate(classes) if c == classes[0] and selected[h])


def selection_losses_of(ckpt: dict, num_heads: int) -> list[float]:
    """The per-head losses a finished run scored its heads with (``Trainer.selection_losses``),
    or [] when it did not (no candidate heads, an older or converted checkpoint) or the entry
    is not one finite number per head."""
    state = ckpt.get("state")
    values = state.get("selection_loss") if isinstance(state, dict) else None
    if not isinstance(values, list) or len(values) != num_heads:
        return []
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        return []
    return [float(v) for v in values]
