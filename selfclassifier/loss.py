r"""The Self-Classifier loss (Amrani, Karlinsky, Bronstein, ECCV 2022, eq. 4-6).

For one head with C classes and a batch of N samples, let S_v (N x C) be the logits of
view v. Predictions come from view j, targets from view i:

    pred_j   = (N / C) * colnorm_L1( softmax_row(S_j / tau_row) )     # p(y|x) with uniform p(y)
    target_i = rownorm_L1( softmax_col(S_i / tau_col) )                # p(x|y) -> p(y|x)
    l(i, j)  = -(1/N) sum_n sum_y target_i[n, y] * log(pred_j[n, y] + eps)

The loss averages l(i, j) over ordered pairs i != j, skipping pairs where both views are
local crops (index >= num_global), and over heads. Column operations (the softmax over the
batch and the column L1 normalisation) run over the GLOBAL batch: under data parallelism
each rank gathers every rank's logits (:func:`selfclassifier.dist.gather_with_grad`),
normalises, and keeps its own rows for the cross-entropy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from selfclassifier import dist

Logits = Sequence[Sequence[torch.Tensor]]  # [head][view] -> (N, C_head)


def view_pairs(num_views: int, num_global: int = 2) -> list[tuple[int, int]]:
    """Ordered (target view i, prediction view j) pairs the loss averages over."""
    return [
        (i, j)
        for i in range(num_views)
        for j in range(num_views)
        if i != j and not (i >= num_global and j >= num_global)
    ]


def _gather_views(logits: Logits) -> tuple[list[list[torch.Tensor]], int]:
    """Gather every view's logits over ranks, all heads in one collective per view."""
    sizes = [head[0].shape[1] for head in logits]
    rows = logits[0][0].shape[0]
    num_views = len(logits[0])
    gathered = []
    for v in range(num_views):
        joint = torch.cat([head[v] for head in logits], dim=1)
        gathered.append(dist.gather_with_grad(joint).split(sizes, dim=1))
    per_head = [[gathered[v][h] for v in range(num_views)] for h in range(len(logits))]
    return per_head, rows


def _targets(s: torch.Tensor, col_tau: float) -> torch.Tensor:
    """rownorm_L1(softmax_col(S / col_tau)) for the global (N, C) logits.

    Row-normalising exp(log_softmax_col) is a row softmax of it: exact even where column
    probabilities underflow.
    """
    return F.softmax(F.log_softmax(s / col_tau, dim=0), dim=1)


def _log_predictions(s: torch.Tensor, row_tau: float, eps: float) -> torch.Tensor:
    """log((N / C) * colnorm_L1(softmax_row(S / row_tau)) + eps), computed in log space.

    Normalising in log space avoids dividing by a column sum that underflows (F.normalize
    would clamp it to 1e-12 and distort the prediction).
    """
    n, c = s.shape
    log_row = F.log_softmax(s / row_tau, dim=1)
    log_pred = log_row - torch.logsumexp(log_row, dim=0, keepdim=True) + math.log(n / c)
    if eps > 0:
        log_pred = torch.logaddexp(log_pred, torch.full_like(log_pred, math.log(eps)))
    return log_pred


def self_classifier_loss(
    logits: Logits,
    row_tau: float = 0.1,
    col_tau: float = 0.05,
    eps: float = 1e-12,
    num_global: int = 2,
) -> torch.Tensor:
    """Self-Classifier loss of one step.

    Args:
        logits: ``logits[h][v]`` is the (N, C_h) logit matrix of head h for view v; views
            ``0 .. num_global-1`` are global crops, the rest local. N is this rank's batch.
        row_tau: temperature of the row (class) softmax that makes predictions.
        col_tau: temperature of the column (batch) softmax that makes targets.
        eps: added inside the log of the predictions.
        num_global: how many leading views are global crops.

    Returns:
        Scalar float32 loss: the mean over this rank's samples; under DDP the mean of the
        ranks' losses is the single-process loss of the concatenated batch.

    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <...>
    >>> views = [torch.randn(8, 4), torch.randn(8, 4)]
    >>> loss = self_classifier_loss([views])
    >>> loss.shape, bool(loss > 0)
    (torch.Size([]), True)
    """
    terms = _pair_terms(logits, row_tau, col_tau, eps, num_global)
    total = terms[0][0].new_zeros(())
    for head in terms:  # one running sum, in the order earlier releases used: same rounding
        for term in head:
            total = total - term
    return total / (len(terms[0]) * len(terms))


def head_losses(
    logits: Logits,
    row_tau: float = 0.1,
    col_tau: float = 0.05,
    eps: float = 1e-12,
    num_global: int = 2,
) -> torch.Tensor:
    """Each head's Self-Classifier loss, shape (H,): :func:`self_classifier_loss` is their
    mean. Arguments as there."""
    terms = _pair_terms(logits, row_tau, col_tau, eps, num_global)
    return -torch.stack([torch.stack(head).sum() for head in terms]) / len(terms[0])


def _pair_terms(
    logits: Logits, row_tau: float, col_tau: float, eps: float, num_global: int
) -> list[list[torch.Tensor]]:
    """``terms[h][p]``: head h's mean over this rank's samples of sum_y target_i * log pred_j
    for the p-th view pair (i, j) of :func:`view_pairs`; at least float32, outside autocast."""
    if len(logits) == 0 or len(logits[0]) < 2:
        raise ValueError("self_classifier_loss needs at least one head and two views")
    with torch.autocast(device_type=logits[0][0].device.type, enabled=False):
        # half precisions are raised to float32; float64 (tests, analysis) stays
        logits = [[v.float() if v.element_size() < 4 else v for v in head] for head in logits]
        global_logits, rows = _gather_views(logits)
        pairs = view_pairs(len(logits[0]), num_global)
        terms = []
        for views in global_logits:
            targets = [dist.local_rows(_targets(s, col_tau), rows) for s in views]
            log_preds = [dist.local_rows(_log_predictions(s, row_tau, eps), rows) for s in views]
            terms.append([(targets[i] * log_preds[j]).sum(dim=1).mean() for i, j in pairs])
        return terms


class SelfClassifierLoss(nn.Module):
    """``nn.Module`` wrapper of :func:`self_classifier_loss` holding the hyper-parameters.

    >>> loss_fn = SelfClassifierLoss(row_tau=0.1, col_tau=0.05)
    >>> loss_fn([[torch.zeros(4, 3), torch.zeros(4, 3)]]).item()  # uniform logits
    1.0986...
    """

    def __init__(
        self, row_tau: float = 0.1, col_tau: float = 0.05, eps: float = 1e-12, num_global: int = 2
    ):
        super().__init__()
        if row_tau <= 0 or col_tau <= 0:
            raise ValueError(f"temperatures must be > 0, got row_tau={row_tau}, col_tau={col_tau}")
        self.row_tau, self.col_tau, self.eps, self.num_global = row_tau, col_tau, eps, num_global

    def forward(self, logits: Logits) -> torch.Tensor:
        return self_classifier_loss(logits, self.row_tau, self.col_tau, self.eps, self.num_global)

    def extra_repr(self) -> str:
        return f"row_tau={self.row_tau}, col_tau={self.col_tau}, eps={self.eps}"
