"""The authors' evaluation protocols, next to ours in :mod:`selfclassifier.evaluate.protocols`.

Rewritten (not copied) from the evaluation scripts of elad-amrani/self-classifier, the code
behind the paper's tables; each function names the file it follows and how it differs from
our protocol of the same name. ``selfclassifier evaluate --protocol authors|both`` runs them and
writes their results under ``*_authors`` keys of eval.json, each with ``"protocol": "authors"``.

- :func:`knn_authors` (``src/knn_eval.py``): our weighted kNN at temperature 0.1 instead of
  0.07, for k in 10, 20, 100, 200 instead of 20 alone.
- :func:`linear_probe_authors` (``src/lincls_eval.py``, ``scripts/lincls_eval.sh``): an SGD +
  LARC classifier trained for 100 epochs on random-resized, flipped crops through the frozen
  backbone, instead of our L-BFGS fit on cached, standardised centre-crop features.
- :func:`kmeans_authors` (``src/kmeans_eval.py``): k-means fit on the *train* side's raw
  (not L2-normalised) features and scored on the test side, where ours clusters and scores the
  evaluation data itself on L2-normalised features.
- :func:`cluster_scores_authors` (``src/cls_eval.py``): heads scored with Hungarian matching
  at the *fine* level, leftover clusters of an over-clustering head mapped to their majority
  label; with a superclass mapping, the data is first narrowed to the classes the mapping
  covers, the matched fine labels are mapped to superclasses for ACC, and NMI / AMI / ARI stay
  against the fine labels. Ours matches clusters to superclasses directly.

Labels < 0 mean "unknown", as everywhere in the package: such training samples are dropped
and such test samples are not scored.

>>> f = torch.eye(3)
>>> knn_authors(f, [0, 1, 2], f, [0, 1, 2], ks=(1,))
{1: 1.0}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import (
    adjusted_mutual_info_score,
    adjusted_rand_score,
    normalized_mutual_info_score,
)
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from selfclassifier.config import AugmentConfig
from selfclassifier.evaluate.protocols import _accuracy, _as_labels, _check_pair
from selfclassifier.optim import LARS
from selfclassifier.views import normalization

__all__ = [
    "KNN_KS",
    "KNN_TEMPERATURE",
    "LINEAR",
    "REFERENCES",
    "authors_train_transform",
    "cluster_scores_authors",
    "kmeans_authors",
    "knn_authors",
    "linear_probe_authors",
]

REPO = "elad-amrani/self-classifier"
#: where each protocol comes from, recorded in eval.json next to its numbers
REFERENCES = {
    "knn": f"{REPO} src/knn_eval.py, scripts/knn_eval.sh",
    "linear": f"{REPO} src/lincls_eval.py, scripts/lincls_eval.sh",
    "kmeans": f"{REPO} src/kmeans_eval.py, scripts/kmeans_baselines/*.sh",
    "clusters": f"{REPO} src/cls_eval.py, scripts/unsupervised_cls_eval/*.sh",
}
KNN_KS = (10, 20, 100, 200)  # knn_eval.py --nb-knn default
KNN_TEMPERATURE = 0.1  # knn_eval.py --tau default; knn_eval.sh passes --tau 0.1
#: lincls_eval.sh: --epochs 100 --lr 0.8 --sgd --lars --cos --wd 0.0 -b 1024 on 4 nodes
LINEAR = {
    "epochs": 100,
    "lr": 0.8,
    # -b is "the total batch size of all GPUs on the current node" (lincls_eval.py's help):
    # 1024 per node on the script's 4 nodes, i.e. 256 per GPU and 4096 per step.
    "batch_size": 4096,
    "momentum": 0.9,
    "weight_decay": 0.0,
    "trust_coefficient": 0.001,  # apex LARC(trust_coefficient=0.001, clip=False)
    "init_std": 0.01,  # fc.weight ~ N(0, 0.01), fc.bias = 0
}


# --------------------------------------------------------------------------- kNN


@torch.no_grad()
def knn_authors(
    train_feats: torch.Tensor,
    train_labels: Any,
    test_feats: torch.Tensor,
    test_labels: Any,
    ks: Sequence[int] = KNN_KS,
    temperature: float = KNN_TEMPERATURE,
    chunk_size: int = 256,
) -> dict[int, float]:
    """Top-1 accuracy of weighted kNN for every k in ``ks`` (``src/knn_eval.py``).

    Both sides are L2-normalised; each test sample takes its k most cosine-similar training
    samples and neighbour i votes for its label with weight ``exp(sim_i / temperature)``.
    The similarities are computed once for the largest k. Differences from the authors'
    script, none of which changes a prediction: fp32 instead of their ``--use-half`` fp16, and
    each row's votes are rescaled by ``exp(-best_sim / temperature)`` (a per-row constant that
    keeps ``exp`` finite at any temperature). k is clipped to the labelled training samples.

    Args:
        train_feats: (N, D) float; train_labels: (N,) int, < 0 dropped.
        test_feats: (M, D) float; test_labels: (M,) int, < 0 not scored.

    Returns:
        ``{k: top-1 in [0, 1]}`` in the order of ``ks``.

    >>> train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    >>> query = torch.tensor([[0.2, 1.0]])
    >>> knn_authors(train, [0, 0, 1], query, [1], ks=(1, 3))  # the near neighbour outvotes two
    {1: 1.0, 3: 1.0}
    >>> knn_authors(train, [0, 0, 1], query, [1], ks=(1, 3), temperature=10.0)  # ~ majority
    {1: 1.0, 3: 0.0}
    """
    device = test_feats.device
    y_train = _as_labels(train_labels, device)
    y_test = _as_labels(test_labels, device)
    _check_pair(train_feats, y_train, "train")
    _check_pair(test_feats, y_test, "test")
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive neighbour counts, got {list(ks)}")
    known = y_train >= 0
    memory, y_train = F.normalize(train_feats.to(device).float()[known], dim=1), y_train[known]
    if len(y_train) == 0:
        raise ValueError("knn_authors: no labelled training samples (all labels < 0)")
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    widest = min(max(ks), len(y_train))
    preds: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for queries in F.normalize(test_feats.float(), dim=1).split(chunk_size):
        sims, idx = (queries @ memory.T).topk(widest, dim=1)  # sorted, most similar first
        weights = ((sims - sims[:, :1]) / temperature).exp()
        neighbour_labels = y_train[idx]
        for k in ks:
            kk = min(k, widest)
            votes = torch.zeros(len(queries), num_classes, device=device)
            votes.scatter_add_(1, neighbour_labels[:, :kk], weights[:, :kk])
            preds[k].append(votes.argmax(dim=1))
    empty = torch.empty(0, dtype=torch.long, device=device)
    return {k: _accuracy(torch.cat(p) if p else empty, y_test) for k, p in preds.items()}


# ------------------------------------------------------------------ linear probe


def authors_train_transform(aug: AugmentConfig, channels: int) -> v2.Compose:
    """The linear probe's training augmentation (``src/lincls_eval.py``): ``RandomResizedCrop``
    at the model's input size with torchvision's defaults (scale 0.08-1, ratio 3/4-4/3), a
    horizontal flip with p 0.5, then the model's normalisation. Centre crops
    (:func:`selfclassifier.views.eval_transform`) are what the probe is evaluated on."""
    mean, std = normalization(aug, channels)
    return v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(aug.global_size, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ]
    )


def linear_probe_authors(
    encoder: nn.Module,
    train_data: Dataset,
    test_feats: torch.Tensor,
    test_labels: Any,
    num_classes: int,
    *,
    epochs: int = LINEAR["epochs"],
    lr: float = LINEAR["lr"],
    batch_size: int = LINEAR["batch_size"],
    momentum: float = LINEAR["momentum"],
    weight_decay: float = LINEAR["weight_decay"],
    trust_coefficient: float = LINEAR["trust_coefficient"],
    device: torch.device | str | None = None,
    workers: int = 0,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """The authors' linear evaluation (``src/lincls_eval.py`` run by ``scripts/lincls_eval.sh``).

    A linear layer on a frozen ``encoder`` (the backbone: no gradient reaches it and it stays
    in eval mode, so BatchNorm neither uses batch statistics nor updates its running ones, as
    their ``set_bn_eval``), initialised ``weight ~ N(0, 0.01)``, ``bias = 0``, trained on
    cross-entropy by SGD (momentum 0.9, weight decay 0) under LARC (trust 0.001, no clipping,
    on weight and bias alike: :class:`selfclassifier.optim.LARS`). The learning rate is not
    scaled by the batch size; it follows a per-epoch cosine, ``lr * 0.5 * (1 + cos(pi * e /
    epochs))`` for epoch e = 0, 1, ..., no warm-up. Every epoch reads ``train_data`` afresh,
    so its transform (:func:`authors_train_transform`) draws new crops; after every epoch the
    classifier is scored on ``test_feats``, the encoder's features of the centre-cropped test
    images (the frozen encoder makes caching them exact), as their script validates each epoch.

    The recipe is made for ImageNet's ~31,000 steps (100 epochs of 4096): LARC moves each
    tensor by ``lr * trust`` (0.08%) of its norm per step, and the zero bias first takes one
    plain SGD step (LARC leaves zero-norm tensors unscaled, as apex does) that momentum carries
    for ~10 steps. On a few thousand images it needs a smaller batch (more steps) to converge.

    Args:
        encoder: images (B, ...) -> features (B, D).
        train_data: ``(image tensor, label)`` items, augmented on read; labels < 0 skipped.
        test_feats: (M, D) float; test_labels: (M,) int, < 0 not scored.
        num_classes: outputs of the linear layer.
        batch_size: their effective global batch, 4096 (see :data:`LINEAR`); the last batch
            of an epoch may be smaller (their loader does not drop it).
        device: where the encoder and the classifier run; default the encoder's.
        seed: fixes the initialisation, the order and the crops; the global RNG is untouched.

    Returns:
        ``{"top1"}``: test top-1 after the last epoch; ``"best_top1"``: the best epoch's (their
        ``model_best.pth.tar`` is picked by it, i.e. on the test set); ``"train_top1"``: top-1
        over the last epoch's augmented training crops, as their training log.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    if device is None:
        device = next((p.device for p in encoder.parameters()), torch.device("cpu"))
    device = torch.device(device)
    y_test = _as_labels(test_labels, device)
    _check_pair(test_feats, y_test, "test")
    x_test = test_feats.to(device).float()

    generator = torch.Generator().manual_seed(seed)
    classifier = nn.utils.skip_init(nn.Linear, x_test.shape[1], num_classes).to(device)
    with torch.no_grad():
        weight = torch.randn(classifier.weight.shape, generator=generator) * LINEAR["init_std"]
        classifier.weight.copy_(weight)
        classifier.bias.zero_()
    optimizer = LARS(
        classifier.parameters(),
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        trust_coefficient=trust_coefficient,
    )
    loader = DataLoader(
        train_data, batch_size=batch_size, shuffle=True, num_workers=workers, generator=generator
    )
    was_training = encoder.training
    encoder.eval()
    scores = {"top1": 0.0, "best_top1": 0.0, "train_top1": 0.0}
    try:
        # The crops come from the global RNG; fork it so a fixed seed fixes them and the
        # caller's random state is left as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for epoch in range(epochs):
                for group in optimizer.param_groups:
                    group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
                scores["train_top1"] = _train_epoch(encoder, classifier, loader, optimizer, device)
                with torch.no_grad():
                    scores["top1"] = _accuracy(classifier(x_test).argmax(dim=1), y_test)
                scores["best_top1"] = max(scores["best_top1"], scores["top1"])
                if log is not None:
                    log(
                        f"authors' linear probe epoch {epoch + 1}/{epochs}: "
                        f"test top-1 {scores['top1']:.4f}"
                    )
    finally:
        encoder.train(was_training)
    return scores


def _train_epoch(
    encoder: nn.Module,
    classifier: nn.Linear,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
) -> float:
    """One pass over ``loader``; the top-1 over its labelled training crops."""
    correct = seen = 0
    for images, labels in loader:
        labels = torch.as_tensor(labels).to(device)
        known = labels >= 0
        if not bool(known.any()):
            continue
        with torch.no_grad():
            feats = encoder(images.to(device)[known]).float()
        logits = classifier(feats)
        loss = F.cross_entropy(logits, labels[known])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        correct += int((logits.argmax(dim=1) == labels[known]).sum())
        seen += int(known.sum())
    if seen == 0:
        raise ValueError("linear_probe_authors: no labelled training samples (all labels < 0)")
    return correct / seen


# ----------------------------------------------------------------------- k-means


def kmeans_authors(
    train_feats: Any, test_feats: Any, test_labels: Any, k: int, seed: int = 0, n_init: int = 10
) -> dict:
    """k-means fit on the train side, scored on the test side (``src/kmeans_eval.py``).

    Their recipe: backbone features as they come (no L2 normalisation, float64), sklearn
    ``KMeans(n_clusters=k)`` with the defaults of the scikit-learn they pinned (0.24.1:
    k-means++, ``n_init=10``, ``max_iter=300``, ``tol=1e-4``) fit on the training images,
    then ``predict`` on the validation images, scored as :func:`cluster_scores_authors`.
    Differences: ``random_state=seed`` (theirs unseeded); they fit on the 10% ImageNet subset
    of SimCLR (their ``--label-subset`` default), we on the whole train side given; their
    over-clustering branch for ACC (reached only with k above the number of classes, never in
    their scripts, ``--kk 1000``) is replaced by cls_eval.py's.

    Args:
        train_feats: (N, D) float, labels not needed; test_feats: (M, D) float.
        test_labels: (M,) int, < 0 not scored.

    Returns:
        ``{"k", "nmi", "ami", "ari", "acc", "samples"}``.

    >>> train = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    >>> kmeans_authors(train, train, [0, 0, 1, 1], k=2)["acc"]
    1.0
    """
    x_train = _as_float64(train_feats, "train")
    x_test = _as_float64(test_feats, "test")
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(
            f"train and test features differ in width: {x_train.shape[1]} vs {x_test.shape[1]}"
        )
    if len(x_train) < k:
        raise ValueError(
            f"k-means with k={k} needs at least {k} training samples, got {len(x_train)}"
        )
    model = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(x_train)
    return {"k": int(k), **cluster_scores_authors(test_labels, model.predict(x_test))}


def _as_float64(feats: Any, name: str) -> np.ndarray:
    x = feats.detach().cpu().double().numpy() if torch.is_tensor(feats) else np.asarray(feats)
    if x.ndim != 2:
        raise ValueError(f"{name} features must be (N, D), got shape {x.shape}")
    return x.astype(np.float64, copy=False)


# ------------------------------------------------------ heads and superclasses


def cluster_scores_authors(labels: Any, preds: Any, fine_to_super: Any = None) -> dict:
    """NMI, AMI, ARI and ACC as ``src/cls_eval.py`` scores a head (its ``compute_metrics``).

    ACC: clusters are matched one-to-one to the *fine* labels (Hungarian, maximising the
    samples matched); when the predictions use more distinct clusters than there are distinct
    labels, each cluster left without a label takes its majority label (many clusters may then
    share one). Each sample's prediction becomes its cluster's label, and ACC is the fraction
    predicted right. With ``fine_to_super``, samples of fine classes it does not cover are
    dropped first, and ACC compares the *superclasses* of the matched and the true fine labels.
    NMI (arithmetic normalisation), AMI and ARI are always against the fine labels.

    Differences from their code, only where matchings tie: they run the assignment on a square
    matrix over all label and cluster ids up to the largest, we on the labels and clusters
    present, so among equally good matchings the two may pick different ones. Theirs can thus
    match a cluster, at no loss, to a fine id absent from the data; with a superclass mapping
    such an id maps to itself (their mapping starts as ``arange(1000)``) and may collide with
    a superclass id. Ours matches clusters to present (hence covered) fine labels only.

    Args:
        labels: (N,) int fine labels, < 0 not scored. preds: (N,) int cluster ids.
        fine_to_super: (C,) int superclass of each fine label, -1 where none.

    Returns:
        ``{"nmi", "ami", "ari", "acc", "samples"}``; samples = how many were scored.

    >>> # clusters 7 and 8 are both mostly fine class 0; 8 is left over and joins 0.
    >>> cluster_scores_authors([0, 0, 0, 1, 1], [7, 7, 8, 9, 9])["acc"]
    1.0
    >>> # fine classes 0, 1 -> superclass 0; 2 -> 1. Cluster 5 matches fine class 1.
    >>> cluster_scores_authors([0, 1, 1, 2], [5, 5, 5, 6], fine_to_super=[0, 0, 1])["acc"]
    1.0
    """
    y = _as_labels(labels).cpu().numpy()
    p = _as_labels(preds).cpu().numpy()
    if len(y) != len(p):
        raise ValueError(f"labels and preds differ in length: {len(y)} vs {len(p)}")
    keep = y >= 0
    if fine_to_super is not None:
        f2s = np.asarray(fine_to_super, dtype=np.int64)
        if keep.any() and y[keep].max() >= len(f2s):
            raise ValueError(f"label {y[keep].max()} out of range for {len(f2s)} fine classes")
        keep &= np.where(keep, f2s[y.clip(min=0)], -1) >= 0
    y, p = y[keep], p[keep]
    if len(y) == 0:
        raise ValueError("no labelled samples to score (all unknown or without a superclass)")
    mapped = _fine_matching(y, p)  # always a fine label present here, so one with a superclass
    correct = mapped == y if fine_to_super is None else f2s[mapped] == f2s[y]
    return {
        "nmi": float(normalized_mutual_info_score(y, p, average_method="arithmetic")),
        "ami": float(adjusted_mutual_info_score(y, p)),
        "ari": float(adjusted_rand_score(y, p)),
        "acc": float(correct.mean()),
        "samples": int(len(y)),
    }


def _fine_matching(labels: np.ndarray, preds: np.ndarray) -> np.ndarray:
    """(N,) the label each sample's cluster is matched to (see :func:`cluster_scores_authors`)."""
    label_values, label_idx = np.unique(labels, return_inverse=True)
    cluster_values, cluster_idx = np.unique(preds, return_inverse=True)
    counts = np.zeros((len(label_values), len(cluster_values)), dtype=np.int64)
    np.add.at(counts, (label_idx, cluster_idx), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    label_of_cluster = np.full(len(cluster_values), -1, dtype=np.int64)
    label_of_cluster[cols] = label_values[rows]
    # Over-clustering: only then can clusters be left unmatched; each takes its majority label.
    left = label_of_cluster < 0
    label_of_cluster[left] = label_values[counts[:, left].argmax(axis=0)]
    return label_of_cluster[cluster_idx]
