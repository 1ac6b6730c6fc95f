"""Known answers for the feature-level evaluation protocols."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from selfclassifier.evaluate.protocols import (
    kmeans_metrics,
    knn_predict,
    knn_top1,
    linear_probe,
    load_superclass_mapping,
    relabel,
)
from tests.helpers import gaussian_blobs

# ----------------------------------------------------------------------------- kNN


def test_knn_identical_train_and_test_is_perfect():
    feats = torch.randn(50, 16, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 5, (50,), generator=torch.Generator().manual_seed(1))
    # Each point is its own exact match (similarity 1), which dominates exp(sim / T).
    assert knn_top1(feats, labels, feats, labels, k=20, temperature=0.07) == 1.0


def test_knn_weighting_beats_majority():
    # Three class-0 neighbours at ~60 degrees, one class-1 neighbour almost on top of
    # the query: a majority vote says 0, the similarity-weighted vote says 1.
    train = torch.tensor([[0.5, 0.87, 0.0], [0.5, 0.0, 0.87], [0.5, -0.87, 0.0], [1.0, 0.05, 0]])
    labels = torch.tensor([0, 0, 0, 1])
    query = torch.tensor([[1.0, 0.0, 0.0]])
    assert knn_predict(train, labels, query, k=4, temperature=0.07).item() == 1
    # A huge temperature flattens the weights into a plain majority vote.
    assert knn_predict(train, labels, query, k=4, temperature=1e4).item() == 0


def test_knn_clips_k_and_chunks():
    feats, labels = gaussian_blobs(10, 8, 3, spread=0.5, seed=0)
    whole = knn_predict(feats, labels, feats, k=1000)
    chunked = knn_predict(feats, labels, feats, k=1000, chunk_size=7)
    torch.testing.assert_close(whole, chunked)
    assert whole.dtype == torch.long and whole.shape == (30,)


def test_knn_ignores_unknown_labels():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.01]])
    test = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # The unlabelled training point would otherwise be the query's exact match.
    preds = knn_predict(train, torch.tensor([-1, 1, 0]), test, k=1)
    assert preds.tolist() == [0, 1]
    assert knn_top1(train, [-1, 1, 0], test, [0, -1], k=1) == 1.0


def test_knn_test_label_unseen_in_training_is_wrong_not_an_error():
    feats = torch.eye(3)
    assert knn_top1(feats, [0, 1, 1], feats, [0, 1, 5], k=1) == pytest.approx(2 / 3)


# --------------------------------------------------------------------- linear probe


def test_linear_probe_separable_blobs():
    feats, labels = gaussian_blobs(100, 32, 5, spread=1.0, seed=0)
    test_feats, test_labels = gaussian_blobs(40, 32, 5, spread=1.0, seed=0)
    out = linear_probe(feats, labels, test_feats, test_labels, seed=0)
    assert set(out) == {"top1", "train_top1"}
    assert out["top1"] >= 0.99 and out["train_top1"] >= 0.99


def test_linear_probe_deterministic():
    feats, labels = gaussian_blobs(30, 16, 4, spread=4.0, seed=1)
    for batch_size in (None, 32):
        runs = [
            linear_probe(feats, labels, feats, labels, epochs=20, batch_size=batch_size, seed=3)
            for _ in range(2)
        ]
        assert runs[0] == runs[1]


def test_linear_probe_minibatch_recipe():
    feats, labels = gaussian_blobs(50, 16, 3, spread=1.0, seed=2)
    out = linear_probe(feats, labels, feats, labels, epochs=30, lr=1e-2, batch_size=32)
    assert out["top1"] >= 0.99


def test_linear_probe_does_not_touch_global_rng():
    feats, labels = gaussian_blobs(10, 4, 2, spread=1.0, seed=0)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    linear_probe(feats, labels, feats, labels, epochs=5, batch_size=8)
    torch.testing.assert_close(torch.rand(3), expected)


# -------------------------------------------------------------------------- k-means


def test_kmeans_separated_blobs():
    feats, labels = gaussian_blobs(30, 8, 4, spread=0.3, seed=0)
    scores = kmeans_metrics(feats, labels.numpy(), k=4, seed=0, n_init=2)
    assert scores == pytest.approx({"nmi": 1.0, "ami": 1.0, "ari": 1.0, "acc": 1.0})


# --------------------------------------------------------------------- superclasses


CLASSES = ["cat", "dog", "oak", "pine", "trout"]


def write(tmp_path, text: str):
    path = tmp_path / "super.tsv"
    path.write_text(text, encoding="utf-8")
    return path


def test_superclass_mapping_parses(tmp_path):
    path = write(
        tmp_path,
        "# fine\tsuper\n\ncat\tmammal\noak\ttree\ndog\tmammal\npine\ttree\n"
        "trout\tfish\ncat\tmammal\n",
    )
    fine_to_super, names = load_superclass_mapping(path, CLASSES)
    assert names == ["fish", "mammal", "tree"]
    assert fine_to_super.tolist() == [1, 1, 2, 2, 0]
    assert fine_to_super.dtype == np.int64


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cat\tmammal\ndog mammal\n", r"super\.tsv:2: expected 'fine_label_name<TAB>"),
        ("cat\tmammal\t\textra\n", r"super\.tsv:1: expected"),
        ("cat\t\n", r"super\.tsv:1: expected"),
        ("cat\tmammal\n\nwolf\tmammal\n", r"super\.tsv:3: 'wolf' is not one of"),
        ("cat\tmammal\ncat\tfish\n", r"super\.tsv:2: 'cat' mapped to 'fish'"),
        ("cat\tmammal\ndog\tmammal\n", r"3 class\(es\) have no superclass: 'oak', 'pine'"),
    ],
)
def test_superclass_mapping_errors(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        load_superclass_mapping(write(tmp_path, text), CLASSES)


def test_superclass_mapping_may_cover_part_of_the_classes(tmp_path):
    path = write(tmp_path, "cat\tmammal\noak\ttree\ndog\tmammal\n")
    fine_to_super, names = load_superclass_mapping(path, CLASSES, allow_missing=True)
    assert names == ["mammal", "tree"] and fine_to_super.tolist() == [0, 0, 1, -1, -1]
    # Classes without a superclass are unknown to the superclass scores.
    assert relabel([0, 2, 3, 4, -1], fine_to_super).tolist() == [0, 1, -1, -1, -1]
    with pytest.raises(ValueError, match="no class of the data has a superclass"):
        load_superclass_mapping(write(tmp_path, "# nothing\n"), CLASSES, allow_missing=True)


def test_superclass_missing_lists_only_a_few(tmp_path):
    many = [f"class{i}" for i in range(20)]
    with pytest.raises(ValueError, match=r"20 class\(es\).*'class4', \.\.\.$"):
        load_superclass_mapping(write(tmp_path, "# empty\n"), many)


def test_relabel_keeps_unknown():
    fine_to_super = np.array([1, 1, 2, 2, 0])
    out = relabel(torch.tensor([0, 4, -1, 3, 2]), fine_to_super)
    assert out.tolist() == [1, 0, -1, 2, 2]
    with pytest.raises(ValueError, match="out of range"):
        relabel([5], fine_to_super)
