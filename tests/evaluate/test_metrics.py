"""Known answers and invariances of the clustering metrics."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import silhouette_score

from selfclassifier.evaluate.metrics import (
    LABEL_FREE_NOTE,
    SELECTED_NOTE,
    cluster_metrics,
    contingency,
    format_table,
    head_metrics,
    hungarian_acc,
    label_free_scores,
    many_to_one_acc,
    silhouettes,
    size_entropy,
)

FEW = settings(max_examples=30, deadline=None)


@st.composite
def labels_and_preds(draw, max_labels: int = 5, max_clusters: int = 5, max_n: int = 30):
    """Random (labels, preds) int arrays of equal length, each id range small."""
    n = draw(st.integers(1, max_n))
    n_labels = draw(st.integers(1, max_labels))
    n_clusters = draw(st.integers(1, max_clusters))
    labels = draw(st.lists(st.integers(0, n_labels - 1), min_size=n, max_size=n))
    preds = draw(st.lists(st.integers(0, n_clusters - 1), min_size=n, max_size=n))
    return np.array(labels), np.array(preds)


def brute_force_acc(labels: np.ndarray, preds: np.ndarray) -> float:
    """Best one-to-one mapping by trying every permutation of a zero-padded square."""
    counts = contingency(labels, preds)
    size = max(counts.shape)
    square = np.zeros((size, size), dtype=np.int64)
    square[: counts.shape[0], : counts.shape[1]] = counts
    best = max(square[perm, range(size)].sum() for perm in itertools.permutations(range(size)))
    return best / len(labels)


def test_perfect_prediction_scores_one():
    labels = np.array([0, 0, 1, 1, 2, 2, 2])
    scores = cluster_metrics(labels, labels)
    assert scores == pytest.approx({"nmi": 1.0, "ami": 1.0, "ari": 1.0, "acc": 1.0})
    assert all(type(v) is float for v in scores.values())


def test_renamed_clusters_score_one():
    labels = np.array([0, 0, 1, 1, 2, 2])
    preds = np.array([7, 7, 3, 3, 9, 9])
    assert cluster_metrics(labels, preds) == pytest.approx(
        {"nmi": 1.0, "ami": 1.0, "ari": 1.0, "acc": 1.0}
    )


@FEW
@given(data=labels_and_preds(), seed=st.integers(0, 2**16))
def test_cluster_permutation_invariance(data, seed):
    labels, preds = data
    renamed = np.random.default_rng(seed).permutation(10)[preds]
    assert cluster_metrics(labels, renamed) == pytest.approx(cluster_metrics(labels, preds))


@FEW
@given(data=labels_and_preds())
def test_hungarian_matches_brute_force(data):
    labels, preds = data
    assert hungarian_acc(labels, preds) == pytest.approx(brute_force_acc(labels, preds))


@FEW
@given(data=labels_and_preds(max_clusters=8))
def test_many_to_one_bounds_hungarian(data):
    labels, preds = data
    assert many_to_one_acc(labels, preds) >= hungarian_acc(labels, preds) - 1e-12


def test_over_clustering():
    # Every class split evenly across two clusters: majority mapping is perfect, a
    # one-to-one mapping can only claim half of each class.
    labels = np.repeat([0, 1, 2], 10)
    preds = labels * 2 + np.tile([0, 1], 15)
    assert many_to_one_acc(labels, preds) == 1.0
    assert hungarian_acc(labels, preds) == pytest.approx(0.5)


def test_fewer_clusters_than_labels():
    labels = np.array([0, 0, 1, 1, 2, 2])
    preds = np.array([0, 0, 0, 0, 1, 1])
    assert hungarian_acc(labels, preds) == pytest.approx(4 / 6)
    assert many_to_one_acc(labels, preds) == pytest.approx(4 / 6)


def test_contingency_is_compact():
    counts = contingency(np.array([5, 5, 9]), np.array([1000, 3, 3]))
    np.testing.assert_array_equal(counts, [[1, 1], [1, 0]])


def test_unknown_labels_ignored():
    labels = np.array([0, 0, 1, 1, -1, -1, -5])
    preds = np.array([1, 1, 0, 0, 0, 1, 2])
    assert cluster_metrics(labels, preds) == pytest.approx(
        {"nmi": 1.0, "ami": 1.0, "ari": 1.0, "acc": 1.0}
    )
    assert many_to_one_acc(labels, preds) == 1.0
    assert contingency(labels, preds).sum() == 4
    # Unlabelled samples' predictions do not count as active classes either.
    assert head_metrics(labels, preds, num_classes=3)["active_classes"] == 2


def test_all_unknown_raises():
    with pytest.raises(ValueError, match="no labelled samples"):
        hungarian_acc(np.array([-1, -1]), np.array([0, 1]))


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="differ in length"):
        cluster_metrics(np.array([0, 1]), np.array([0]))


def test_accepts_torch_tensors():
    labels = torch.tensor([0, 0, 1, 1])
    preds = torch.tensor([1, 1, 0, 2])
    assert hungarian_acc(labels, preds) == 0.75
    assert many_to_one_acc(labels, preds) == 1.0


def test_head_metrics_keys():
    labels = np.array([0, 0, 1, 1])
    preds = np.array([4, 5, 6, 6])
    over = head_metrics(labels, preds, num_classes=10)
    assert over["classes"] == 10
    assert over["active_classes"] == 3
    assert over["acc"] == pytest.approx(0.75)
    assert over["acc_many_to_one"] == 1.0
    exact = head_metrics(labels, np.array([0, 0, 1, 1]), num_classes=2)
    assert "acc_many_to_one" not in exact
    assert set(exact) == {"classes", "nmi", "ami", "ari", "acc", "active_classes"}


# ----------------------------------------------------------------------------- without labels


def test_size_entropy_known_answers():
    assert size_entropy(np.arange(40) % 10, 10) == pytest.approx(1.0)
    assert size_entropy(np.zeros(7, dtype=int), 10) == 0.0
    # 2 of 4 classes used equally: log 2 / log 4; empty classes count against balance
    assert size_entropy(np.array([0, 0, 3, 3]), 4) == pytest.approx(0.5)
    assert size_entropy(np.array([0, 1]), 1 << 10) == pytest.approx(0.1)
    assert size_entropy(np.array([0, 0]), 1) == 1.0  # one class is trivially balanced


@FEW
@given(data=labels_and_preds(max_clusters=6, max_n=40), seed=st.integers(0, 2**16))
def test_silhouette_matches_sklearn_cosine(data, seed):
    _, preds = data
    x = np.random.default_rng(seed).normal(size=(len(preds), 5))
    (ours,) = silhouettes(x, [preds])
    if not 2 <= len(np.unique(preds)) < len(preds):
        assert ours is None  # undefined: one class, or every image its own class
    else:
        assert ours == pytest.approx(silhouette_score(x, preds, metric="cosine"), abs=1e-9)


def test_silhouette_prefers_the_true_number_of_groups():
    """Ten tight groups on the sphere: cutting them in two or merging pairs both score less."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(10, 16))
    truth = np.repeat(np.arange(10), 60)
    x = centres[truth] + 0.15 * rng.normal(size=(600, 16))
    halves = truth * 2 + (x[:, 0] > centres[truth, 0])  # each group cut in two
    merged = truth // 2
    under, exact, over = silhouettes(x, [merged, truth, halves])
    assert exact > 0.7 and exact > under and exact > over


def test_silhouette_subsample_is_fixed_and_shared():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(size=(500, 8))).float()  # torch input is accepted
    preds = [rng.integers(0, 3, 500), rng.integers(0, 7, 500)]
    a = silhouettes(x, preds, max_samples=100, seed=3)
    assert a == silhouettes(x, preds, max_samples=100, seed=3)
    assert a != silhouettes(x, preds, max_samples=100, seed=4)
    keep = np.sort(np.random.default_rng(3).choice(500, 100, replace=False))
    expected = [silhouette_score(x.numpy()[keep], p[keep], metric="cosine") for p in preds]
    assert a == pytest.approx(expected)


def test_silhouette_is_invariant_to_renaming_and_scaling():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 4))
    preds = rng.integers(0, 4, 50)
    (base,) = silhouettes(x, [preds])
    (renamed,) = silhouettes(3.0 * x, [np.array([7, 2, 9, 0])[preds]])
    assert renamed == pytest.approx(base)


def test_label_free_scores_keys():
    x = np.eye(4)[[0, 0, 1, 1, 2, 2]]
    scores = label_free_scores(x, [[0, 0, 1, 1, 2, 2], [5, 5, 5, 5, 5, 5]], [3, 8])
    assert scores[0] == {"active_classes": 3, "size_entropy": pytest.approx(1.0), "silhouette": 1.0}
    assert scores[1] == {"active_classes": 1, "size_entropy": 0.0, "silhouette": None}


def test_table_shows_label_free_columns_when_present():
    head = {"classes": 4, "nmi": 0.5, "ami": 0.5, "ari": 0.4, "acc": 0.6}
    free = {"active_classes": 3, "size_entropy": 0.75, "silhouette": None}
    plain = format_table([head])
    assert "silhouette" not in plain and LABEL_FREE_NOTE not in plain
    lines = format_table([{**head, **free, "selection_loss": 0.5, "selected": True}]).splitlines()
    assert lines[0].split()[-4:] == [
        "active_classes",
        "size_entropy",
        "silhouette",
        "selection_loss",
    ]
    assert lines[1].split()[-4:] == ["3", "0.7500", "-", "0.5000"]
    assert lines[2] == LABEL_FREE_NOTE


def test_table_marks_selected_heads_only_when_scored():
    plain = [{"classes": 4, "nmi": 0.5, "ami": 0.5, "ari": 0.4, "acc": 0.6}]
    assert "*" not in format_table(plain) and "selection_loss" not in format_table(plain)
    scored = [
        {**plain[0], "selection_loss": 1.25, "selected": False},
        {**plain[0], "selection_loss": 1.0, "selected": True},
    ]
    lines = format_table(scored).splitlines()
    assert lines[0].split()[-1] == "selection_loss"
    assert lines[1].split()[0] == "0" and lines[2].split()[0] == "1*"
    assert lines[2].split()[-1] == "1.0000" and lines[-1] == SELECTED_NOTE
