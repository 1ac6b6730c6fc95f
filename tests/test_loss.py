"""The loss: the paper's equations in float64 loops, invariances, precision, per-head losses."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from selfclassifier.loss import SelfClassifierLoss, head_losses, self_classifier_loss, view_pairs


def naive_loss(logits, row_tau, col_tau, eps, num_global=2):
    """Loop transcription of the paper's equations in float64 numpy, one number at a time."""
    total, terms = 0.0, 0
    for head in logits:
        views = [v.detach().double().numpy() for v in head]
        n, c = views[0].shape
        for i in range(len(views)):
            for j in range(len(views)):
                if i == j or (i >= num_global and j >= num_global):
                    continue
                s_i, s_j = views[i], views[j]
                # target: softmax over the batch (column), then L1 over classes (row)
                col = np.exp(s_i / col_tau - (s_i / col_tau).max(axis=0, keepdims=True))
                col = col / col.sum(axis=0, keepdims=True)
                target = col / col.sum(axis=1, keepdims=True)
                # prediction: softmax over classes (row), then L1 over the batch, times N/C
                row = np.exp(s_j / row_tau - (s_j / row_tau).max(axis=1, keepdims=True))
                row = row / row.sum(axis=1, keepdims=True)
                pred = row / row.sum(axis=0, keepdims=True) * n / c
                ce = 0.0
                for a in range(n):
                    for y in range(c):
                        ce -= target[a, y] * math.log(pred[a, y] + eps)
                total += ce / n
                terms += 1
    return total / terms


def random_logits(heads, views, n, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return [[scale * torch.randn(n, c, generator=g) for _ in range(views)] for c in heads]


@pytest.mark.parametrize(
    "heads,views,n",
    [([5], 2, 8), ([3, 7], 2, 6), ([4], 4, 5), ([6, 2, 9], 5, 7), ([10], 3, 16)],
)
@pytest.mark.parametrize("taus", [(0.1, 0.05), (1.0, 0.5), (0.3, 0.3)])
def test_matches_naive_float64(heads, views, n, taus):
    logits = random_logits(heads, views, n, seed=len(heads) * 10 + views)
    got = self_classifier_loss([[v.double() for v in h] for h in logits], *taus, eps=1e-12)
    want = naive_loss(logits, *taus, eps=1e-12)
    assert abs(got.item() - want) < 1e-6 * max(1.0, abs(want))


def test_float32_agrees_and_is_float32_under_autocast():
    logits = random_logits([8, 16], 4, 12)
    want = naive_loss(logits, 0.1, 0.05, 1e-12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = SelfClassifierLoss()([[v.bfloat16() for v in h] for h in logits])
    assert got.dtype == torch.float32
    # bf16 inputs lose precision before the loss; the loss itself runs in float32
    assert abs(got.item() - want) < 5e-2 * abs(want)
    got32 = SelfClassifierLoss()(logits)
    assert abs(got32.item() - want) < 1e-5 * abs(want)


def test_view_pairs_skip_local_local():
    pairs = view_pairs(4, num_global=2)
    assert (2, 3) not in pairs and (3, 2) not in pairs
    assert (0, 1) in pairs and (1, 0) in pairs and (2, 0) in pairs and (0, 3) in pairs
    assert len(pairs) == 4 * 3 - 2


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000), n=st.integers(2, 12), c=st.integers(2, 9), views=st.integers(2, 4)
)
def test_permuting_samples_leaves_loss_unchanged(seed, n, c, views):
    logits = random_logits([c], views, n, seed)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))
    permuted = [[v[perm] for v in h] for h in logits]
    a, b = self_classifier_loss(logits), self_classifier_loss(permuted)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 12), c=st.integers(2, 9))
def test_permuting_classes_leaves_loss_unchanged(seed, n, c):
    logits = random_logits([c, c + 1], 3, n, seed)
    g = torch.Generator().manual_seed(seed + 2)
    perms = [torch.randperm(h[0].shape[1], generator=g) for h in logits]
    permuted = [[v[:, p] for v in h] for h, p in zip(logits, perms, strict=True)]
    a, b = self_classifier_loss(logits), self_classifier_loss(permuted)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_degenerate_assignment_scores_worse_than_balanced():
    n, c = 12, 4
    labels = torch.arange(n) % c
    balanced = 10.0 * torch.nn.functional.one_hot(labels, c).float()
    collapsed = torch.zeros(n, c)
    collapsed[:, 0] = 10.0
    loss = SelfClassifierLoss()
    assert loss([[balanced, balanced]]) < loss([[collapsed, collapsed]])
    # a uniform (undecided) assignment is also worse than a confident balanced one
    assert loss([[balanced, balanced]]) < loss([[torch.zeros(n, c), torch.zeros(n, c)]])


def test_uniform_logits_give_log_c():
    for c in (2, 5, 10):
        z = torch.zeros(6, c)
        assert abs(self_classifier_loss([[z, z]]).item() - math.log(c)) < 1e-6


def test_gradients_flow_to_every_view():
    logits = [[torch.randn(6, 5, requires_grad=True) for _ in range(4)]]
    self_classifier_loss(logits).backward()
    for v in logits[0]:
        assert v.grad is not None and torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0


def test_input_checks():
    with pytest.raises(ValueError):
        self_classifier_loss([[torch.zeros(4, 3)]])
    with pytest.raises(ValueError):
        SelfClassifierLoss(row_tau=0.0)


@pytest.mark.parametrize("views", [2, 4])
def test_head_losses_are_each_heads_loss_and_average_to_the_loss(views):
    torch.manual_seed(0)
    logits = [[torch.randn(16, c) for _ in range(views)] for c in (3, 3, 5)]
    per_head = head_losses(logits, 0.1, 0.05)
    assert per_head.shape == (3,)
    for h, head in enumerate(logits):
        torch.testing.assert_close(per_head[h], self_classifier_loss([head], 0.1, 0.05))
    torch.testing.assert_close(per_head.mean(), self_classifier_loss(logits, 0.1, 0.05))
