"""The authors' evaluation protocols (selfclassifier.evaluate.authors) on answers known by hand."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score
from torch import nn
from torch.utils.data import TensorDataset

from selfclassifier.config import AugmentConfig
from selfclassifier.evaluate import authors as evaluate_authors
from selfclassifier.evaluate.authors import (
    authors_train_transform,
    cluster_scores_authors,
    kmeans_authors,
    knn_authors,
    linear_probe_authors,
)
from selfclassifier.evaluate.metrics import cluster_metrics, hungarian_acc, many_to_one_acc
from selfclassifier.evaluate.protocols import kmeans_metrics, knn_top1
from tests.helpers import gaussian_blobs

# ----------------------------------------------------------------------------- kNN


def brute_force_knn(train, train_labels, test, k: int, tau: float) -> list[int]:
    """knn_eval.py's rule written out sample by sample, in float64."""
    train = train.double() / train.double().norm(dim=1, keepdim=True)
    test = test.double() / test.double().norm(dim=1, keepdim=True)
    preds = []
    for q in test:
        sims = [(float(q @ t), int(y)) for t, y in zip(train, train_labels, strict=True)]
        sims.sort(key=lambda s: -s[0])
        votes: dict[int, float] = {}
        for sim, y in sims[:k]:
            votes[y] = votes.get(y, 0.0) + math.exp(sim / tau)
        preds.append(max(votes, key=votes.get))
    return preds


def test_knn_authors_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(60, 5, generator=g), torch.randn(25, 5, generator=g)
    train_labels = torch.randint(0, 4, (60,), generator=g)
    test_labels = torch.randint(0, 4, (25,), generator=g)
    ks = (1, 3, 10, 200)  # 200 > 60 training samples: clipped to all of them
    got = knn_authors(train, train_labels, test, test_labels, ks=ks, chunk_size=7)
    assert list(got) == list(ks)
    for k in ks:
        preds = brute_force_knn(train, train_labels, test, min(k, 60), tau=0.1)
        expected = float(np.mean(np.array(preds) == test_labels.numpy()))
        assert got[k] == pytest.approx(expected, abs=1e-6), k


def test_knn_authors_defaults_are_their_script():
    feats, labels = gaussian_blobs(30, 8, 3, spread=6.0, seed=1)
    got = knn_authors(feats[::2], labels[::2], feats[1::2], labels[1::2])
    assert list(got) == [10, 20, 100, 200]
    # The same weighted vote as ours, at their temperature 0.1 instead of our 0.07.
    for k, top1 in got.items():
        assert top1 == knn_top1(feats[::2], labels[::2], feats[1::2], labels[1::2], k, 0.1)


def test_knn_authors_skips_unknown_labels():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.01]])
    test = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # The unlabelled training point would be the first query's exact match.
    assert knn_authors(train, [-1, 1, 0], test, [0, -1], ks=(1,)) == {1: 1.0}
    with pytest.raises(ValueError, match="positive"):
        knn_authors(train, [0, 1, 0], test, [0, 1], ks=(0,))


# ------------------------------------------------------------ heads and superclasses


def test_fine_level_matching_then_superclasses_by_hand():
    """cat, dog -> animal (0); oak -> plant (1).

    cluster 0: dog dog dog      fine Hungarian: dog -> 0, cat -> 1, oak -> 2
    cluster 1: dog cat cat      so cluster 1's dog is wrong at the fine level (ACC 7/8) but
    cluster 2: oak oak          right at the superclass level: cat and dog are both animals.
    """
    labels = [1, 1, 1, 1, 0, 0, 2, 2]
    preds = [0, 0, 0, 1, 1, 1, 2, 2]
    fine_to_super = [0, 0, 1]
    fine = cluster_scores_authors(labels, preds)
    assert fine["acc"] == pytest.approx(7 / 8) and fine["samples"] == 8
    sup = cluster_scores_authors(labels, preds, fine_to_super)
    assert sup["acc"] == 1.0
    # NMI, AMI, ARI stay against the fine labels.
    assert {k: sup[k] for k in ("nmi", "ami", "ari")} == {k: fine[k] for k in ("nmi", "ami", "ari")}
    # Ours matches clusters to superclasses directly: one cluster per superclass, 5 of 8.
    super_labels = np.array(fine_to_super)[labels]
    assert hungarian_acc(super_labels, preds) == pytest.approx(5 / 8)


def test_superclass_scoring_drops_classes_without_a_superclass():
    # Class 3 (say, trout) has no superclass: its samples are left out of every score.
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3, -1])
    preds = np.array([0, 0, 0, 1, 2, 2, 2, 2, 1])
    fine_to_super = [0, 0, 1, -1]
    scores = cluster_scores_authors(labels, preds, fine_to_super)
    kept = (labels >= 0) & (labels < 3)
    assert scores["samples"] == 6
    expected_nmi = normalized_mutual_info_score(labels[kept], preds[kept])
    assert scores["nmi"] == pytest.approx(expected_nmi)
    # Fine matching 0 -> cluster 0, 1 -> cluster 1, 2 -> cluster 2: the class-1 sample in
    # cluster 0 is predicted class 0, the same superclass; all six are right.
    assert scores["acc"] == 1.0
    with pytest.raises(ValueError, match="without a superclass"):
        cluster_scores_authors([3, 3], [0, 1], fine_to_super)


def test_over_clustering_leftovers_take_their_majority_label():
    labels = [0, 0, 0, 0, 1, 1]
    preds = [5, 5, 6, 6, 7, 7]  # three clusters, two labels: one cluster is left over
    scores = cluster_scores_authors(labels, preds)
    assert scores["acc"] == 1.0
    assert hungarian_acc(labels, preds) == pytest.approx(4 / 6)  # ours: the leftover is wrong
    assert many_to_one_acc(labels, preds) == 1.0
    # A leftover cluster with mixed labels joins its majority, which may still be wrong.
    scores = cluster_scores_authors([0, 0, 1, 1, 0, 0, 1], [5, 5, 7, 7, 6, 6, 6])
    assert scores["acc"] == pytest.approx(6 / 7)


def test_without_over_clustering_authors_scores_equal_ours():
    g = np.random.default_rng(0)
    labels = g.integers(0, 6, 300)
    preds = np.where(g.random(300) < 0.7, (labels + 2) % 6, g.integers(0, 5, 300))
    theirs = cluster_scores_authors(labels, preds)
    assert theirs.pop("samples") == 300
    assert theirs == pytest.approx(cluster_metrics(labels, preds))
    # Renaming clusters changes nothing.
    renamed = cluster_scores_authors(labels, (preds * 7 + 3) % 1000)
    assert renamed == pytest.approx({**theirs, "samples": 300})


# ----------------------------------------------------------------------- k-means


def test_kmeans_authors_fits_the_train_side():
    # Train clusters split along y; the test points differ along x only, so the train-fit
    # centroids put them all in one cluster (ACC 1/2) where clustering the test set itself
    # would split them perfectly.
    train = torch.tensor([[0.0, 0.0], [0.5, 0.0], [0.0, 10.0], [0.5, 10.0]])
    test = torch.tensor([[-5.0, 1.0], [-5.0, 2.0], [5.0, 1.0], [5.0, 2.0]])
    labels = [0, 0, 1, 1]
    scores = kmeans_authors(train, test, labels, k=2, n_init=2)
    assert scores["acc"] == 0.5 and scores["k"] == 2 and scores["samples"] == 4
    assert kmeans_metrics(test, labels, k=2, n_init=2)["acc"] == 1.0


@pytest.mark.filterwarnings("ignore:Number of distinct clusters")  # L2-normalised: one point
def test_kmeans_authors_keeps_the_feature_norm():
    # Same directions, different lengths: raw features separate them, L2-normalised do not.
    feats = torch.tensor([[1.0, 0.0], [1.1, 0.0], [10.0, 0.0], [10.1, 0.0]])
    labels = [0, 0, 1, 1]
    assert kmeans_authors(feats, feats, labels, k=2, n_init=2)["acc"] == 1.0
    assert kmeans_metrics(feats, labels, k=2, n_init=2)["acc"] == 0.5


# ------------------------------------------------------------------ linear probe


def test_linear_probe_authors_learns_separable_gaussian_blobs():
    feats, labels = gaussian_blobs(20, 512, 3, spread=0.1, seed=1)
    train = TensorDataset(feats[::2], labels[::2])
    probe = functools.partial(
        linear_probe_authors, nn.Identity(), train, feats[1::2], labels[1::2], 3
    )
    untrained = probe(epochs=1, lr=1e-12)
    assert untrained["top1"] < 0.5  # the random initialisation alone gets it wrong
    # LARC moves a tensor by lr * trust = 0.08% of its norm per step: 50 full-batch steps.
    scores = probe(epochs=50, batch_size=1000)
    assert set(scores) == {"top1", "best_top1", "train_top1"}
    assert scores["top1"] == scores["best_top1"] == scores["train_top1"] == 1.0


class RecordingLARS(evaluate_authors.LARS):
    """LARS that records its settings and each step's learning rate."""

    steps: list[dict] = []

    def step(self, closure=None):
        group = self.param_groups[0]
        RecordingLARS.steps.append({k: v for k, v in group.items() if k != "params"})
        if len(RecordingLARS.steps) == 1:
            RecordingLARS.steps[0]["initial"] = [p.detach().clone() for p in group["params"]]
        return super().step(closure)


def test_linear_probe_authors_recipe(monkeypatch):
    """Their optimiser, schedule and initialisation (lincls_eval.py and lincls_eval.sh)."""
    monkeypatch.setattr(evaluate_authors, "LARS", RecordingLARS)
    RecordingLARS.steps = []
    feats, labels = gaussian_blobs(8, 64, 50, spread=1.0, seed=0)
    linear_probe_authors(
        nn.Identity(), TensorDataset(feats, labels), feats, labels, 50, epochs=4, batch_size=400
    )
    steps = RecordingLARS.steps
    assert len(steps) == 4  # one batch per epoch
    # Cosine per epoch from 0.8, no warm-up, not scaled by the batch size.
    expected = [0.8 * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)]
    assert [s["lr"] for s in steps] == pytest.approx(expected)
    assert steps[0]["momentum"] == 0.9 and steps[0]["weight_decay"] == 0.0
    assert steps[0]["trust_coefficient"] == 0.001 and not steps[0]["lars_exclude"]
    weight, bias = steps[0]["initial"]
    assert weight.shape == (50, 64) and float(weight.std()) == pytest.approx(0.01, rel=0.05)
    assert abs(float(weight.mean())) < 1e-3 and torch.equal(bias, torch.zeros(50))


def test_linear_probe_authors_keeps_the_encoder_frozen_and_rng_untouched():
    encoder = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))
    encoder.train()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    feats, labels = gaussian_blobs(20, 4, 2, spread=1.0, seed=3)
    data = TensorDataset(feats, labels)
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    runs = [
        linear_probe_authors(encoder, data, encoder.eval()(feats).detach(), labels, 2, epochs=2,
                             batch_size=8, seed=5)
        for _ in range(2)
    ]  # fmt: skip
    torch.testing.assert_close(torch.rand(3), expected_draw)
    assert runs[0] == runs[1]
    for key, value in encoder.state_dict().items():  # BN statistics included
        assert torch.equal(value, before[key]), key


def test_linear_probe_authors_skips_unknown_training_labels():
    feats, labels = gaussian_blobs(10, 4, 2, spread=0.5, seed=0)
    labels[::3] = -1
    scores = linear_probe_authors(
        nn.Identity(), TensorDataset(feats, labels), feats, labels, 2, epochs=1, batch_size=4
    )
    assert 0.0 <= scores["top1"] <= 1.0
    with pytest.raises(ValueError, match="no labelled training"):
        data = TensorDataset(feats, torch.full((20,), -1))
        linear_probe_authors(nn.Identity(), data, feats, labels, 2, epochs=1)


def test_authors_train_transform_crops_and_flips():
    aug = AugmentConfig(global_size=6, mean=[0.5], std=[0.5])
    transform = authors_train_transform(aug, 1)
    ramp = torch.arange(12, dtype=torch.uint8).repeat(12, 1).mul(20).unsqueeze(0)  # (1, 12, 12)
    torch.manual_seed(0)
    crops = [transform(ramp) for _ in range(20)]
    assert all(c.shape == (1, 6, 6) and c.dtype == torch.float32 for c in crops)
    assert all(-1.0 <= float(c.min()) and float(c.max()) <= 1.0 for c in crops)
    # Left-to-right ramps after a flip run right-to-left: both directions appear.
    slopes = {bool(c[0, :, -1].mean() > c[0, :, 0].mean()) for c in crops}
    assert slopes == {True, False}
    assert len({tuple(c.flatten().tolist()) for c in crops}) > 10  # random crops
