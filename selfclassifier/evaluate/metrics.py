"""Clustering metrics: compare predicted classes (cluster ids) with ground-truth labels.

Every function takes two 1-D integer sequences of the same length N (numpy arrays,
torch tensors or lists): ``labels`` (ground truth) and ``preds`` (cluster ids). Cluster
ids are arbitrary names, so every score here is invariant to renaming them.
Samples whose label is negative (unknown, e.g. an unlabelled image folder) are ignored
everywhere; if no labelled sample remains a ``ValueError`` is raised.

>>> hungarian_acc([0, 0, 1, 1], [5, 5, 3, 3])
1.0
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import (
    adjusted_mutual_info_score,
    adjusted_rand_score,
    normalized_mutual_info_score,
)

__all__ = [
    "cluster_metrics",
    "contingency",
    "format_table",
    "head_metrics",
    "hungarian_acc",
    "label_free_scores",
    "many_to_one_acc",
    "silhouettes",
    "size_entropy",
]


def _to_int_array(x: Any, name: str) -> np.ndarray:
    """Any 1-D integer sequence (numpy, torch, list) -> 1-D int64 numpy array."""
    if hasattr(x, "detach"):  # torch tensor, possibly on GPU; avoids importing torch here
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _labelled(labels: Any, preds: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate and drop samples with an unknown (negative) label.

    Returns:
        (labels, preds), both int64 of shape (M,), M >= 1 the number of labelled samples.
    """
    labels = _to_int_array(labels, "labels")
    preds = _to_int_array(preds, "preds")
    if labels.shape != preds.shape:
        raise ValueError(f"labels and preds differ in length: {len(labels)} vs {len(preds)}")
    known = labels >= 0
    if not known.any():
        raise ValueError(
            f"no labelled samples: all {len(labels)} labels are negative (unknown), "
            "so there is nothing to score against"
        )
    return labels[known], preds[known]


def _contingency(labels: np.ndarray, preds: np.ndarray) -> np.ndarray:
    """Contingency matrix of already-filtered labels/preds (see :func:`contingency`)."""
    label_values, label_idx = np.unique(labels, return_inverse=True)
    pred_values, pred_idx = np.unique(preds, return_inverse=True)
    # Ravelled bincount: one pass, no (N, C) one-hot, compact even for huge ids.
    flat = label_idx * len(pred_values) + pred_idx
    counts = np.bincount(flat, minlength=len(label_values) * len(pred_values))
    return counts.reshape(len(label_values), len(pred_values))


def contingency(labels: Any, preds: Any) -> np.ndarray:
    """Counts of (label, pred) pairs over the labelled samples.

    Rows follow the sorted distinct label values, columns the sorted distinct pred
    values (``np.unique``), so the matrix stays compact for sparse ids such as
    8000-class heads of which only a few classes are used.

    Returns:
        int64 array of shape (n_label_values, n_pred_values).

    >>> contingency([0, 0, 1, -1], [7, 3, 3, 3]).tolist()
    [[1, 1], [1, 0]]
    """
    return _contingency(*_labelled(labels, preds))


def hungarian_acc(labels: Any, preds: Any) -> float:
    """Accuracy under the best one-to-one mapping of clusters to labels.

    The mapping maximises the number of correctly assigned samples (Hungarian
    algorithm on the contingency matrix). With more clusters than labels, clusters
    left unmatched count as wrong; with fewer, some labels are never predicted.

    >>> hungarian_acc([0, 0, 1, 1], [1, 1, 0, 2])
    0.75
    """
    labels, preds = _labelled(labels, preds)
    counts = _contingency(labels, preds)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / len(labels))


def many_to_one_acc(labels: Any, preds: Any) -> float:
    """Accuracy when each cluster is mapped to its majority label.

    Several clusters may share a label, so over-clustering is not penalised; it is
    the right score for heads with more classes than the dataset (e.g. 8000 on
    ImageNet-1k) and is always >= :func:`hungarian_acc`.

    >>> many_to_one_acc([0, 0, 1, 1], [1, 1, 0, 2])
    1.0
    """
    labels, preds = _labelled(labels, preds)
    return float(_contingency(labels, preds).max(axis=0).sum() / len(labels))


def cluster_metrics(labels: Any, preds: Any) -> dict[str, float]:
    """NMI, AMI, ARI and Hungarian accuracy, the paper's unsupervised-classification scores.

    NMI uses the arithmetic mean normalisation (sklearn's default).

    Returns:
        ``{"nmi", "ami", "ari", "acc"}``, python floats.

    >>> cluster_metrics([0, 0, 1, 1], [1, 1, 0, 0])
    {'nmi': 1.0, 'ami': 1.0, 'ari': 1.0, 'acc': 1.0}
    """
    labels, preds = _labelled(labels, preds)
    counts = _contingency(labels, preds)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return {
        "nmi": float(normalized_mutual_info_score(labels, preds, average_method="arithmetic")),
        "ami": float(adjusted_mutual_info_score(labels, preds)),
        "ari": float(adjusted_rand_score(labels, preds)),
        "acc": float(counts[rows, cols].sum() / len(labels)),
    }


def head_metrics(labels: Any, preds: Any, num_classes: int) -> dict[str, float | int]:
    """All scores for one classifier head with ``num_classes`` outputs.

    Returns:
        ``{"classes", "nmi", "ami", "ari", "acc", "active_classes"}`` plus
        ``"acc_many_to_one"`` when the head has more classes than there are distinct
        labels (only then can one-to-one accuracy not reach 1 by construction).
        ``active_classes`` counts the distinct predictions on labelled samples: far
        below ``num_classes`` means the head collapsed onto few classes.

    >>> m = head_metrics([0, 0, 1, 1], [4, 5, 6, 6], num_classes=10)
    >>> m["acc"], m["acc_many_to_one"], m["active_classes"]
    (0.75, 1.0, 3)
    """
    labels, preds = _labelled(labels, preds)
    out: dict[str, float | int] = {"classes": int(num_classes)}
    out.update(cluster_metrics(labels, preds))
    if num_classes > len(np.unique(labels)):
        out["acc_many_to_one"] = many_to_one_acc(labels, preds)
    out["active_classes"] = len(np.unique(preds))
    return out


# ----------------------------------------------------------------------------- without labels
# How many classes are there? These scores read only the predictions and the embeddings, so
# they work on unlabelled folders, and they compare heads of different sizes.

SILHOUETTE_SAMPLES = 2000  # O(n^2) distances: 2000 images take well under a second
SILHOUETTE_SEED = 0


def size_entropy(preds: Any, num_classes: int) -> float:
    """Entropy of the class sizes divided by log(num_classes): how close the head comes to
    the uniform class prior the loss asks for.

    1.0: every class (empty ones included) has the same size; 0.0: one class holds every
    image. A 40-class head that splits 10 real classes evenly also scores 1.0: balance says
    that a head uses its classes, not that there are that many.

    >>> size_entropy([0, 1, 2, 3], 4), size_entropy([0, 0, 1, 1], 4), size_entropy([2, 2], 4)
    (1.0, 0.5, 0.0)
    """
    preds = _to_int_array(preds, "preds")
    if num_classes < 2 or not preds.size:
        return 1.0
    p = np.bincount(preds, minlength=num_classes) / preds.size
    p = p[p > 0]
    return max(float(-(p * np.log(p)).sum() / np.log(num_classes)), 0.0) + 0.0  # no -0.0


def _normalise(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must have shape (N, D), got {x.shape}")
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def silhouettes(
    embeddings: Any,
    preds_per_head: list[Any],
    max_samples: int = SILHOUETTE_SAMPLES,
    seed: int = SILHOUETTE_SEED,
) -> list[float | None]:
    """Mean silhouette of each head's partition, cosine distance on L2-normalised embeddings.

    For an image i in class A: a = mean distance to the other members of A, b = the smallest
    mean distance to the members of another class, s = (b - a) / max(a, b) (0 when A has one
    member). The mean of s over images lies in [-1, 1] whatever the number of classes, so
    heads of different sizes can be compared: too few classes make a large, too many make b
    small (a real class cut in two has its halves close together). All heads are scored on
    the same ``max_samples`` images (a fixed random subset, ``seed``), the distances computed
    once. None when a head puts the sample into fewer than 2 classes or into singletons only.

    Why this score and not the selection loss divided by log(C): the loss exists only for
    checkpoints whose candidate heads were scored, and its scale moves with the batch-to-class
    ratio N/C of its Bayes normalisation, not only with C; the silhouette needs nothing but the
    embeddings every checkpoint has. Its known bias: it prefers compact, well separated
    groups, so real classes that touch pull it towards fewer classes.

    >>> x = [[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]]
    >>> [round(s, 3) for s in silhouettes(x, [[0, 0, 1, 1]])]
    [0.993]
    """
    x = _normalise(embeddings)
    n = len(x)
    if n > max_samples:
        keep = np.sort(np.random.default_rng(seed).choice(n, max_samples, replace=False))
        x = x[keep]
    else:
        keep = slice(None)
    dist = np.clip(1.0 - x @ x.T, 0.0, 2.0)
    np.fill_diagonal(dist, 0.0)
    return [_silhouette(dist, _to_int_array(p, "preds")[keep]) for p in preds_per_head]


def _silhouette(dist: np.ndarray, preds: np.ndarray) -> float | None:
    """sklearn's silhouette_score(metric='precomputed') as one matrix product."""
    if len(preds) != len(dist):
        raise ValueError(f"preds have {len(preds)} samples, embeddings {len(dist)}")
    _, cls = np.unique(preds, return_inverse=True)
    sizes = np.bincount(cls)
    if len(sizes) < 2 or len(sizes) == len(preds):
        return None
    sums = dist @ np.eye(len(sizes))[cls]  # (n, K): summed distance to each class
    rows = np.arange(len(preds))
    own = sizes[cls]
    a = sums[rows, cls] / np.maximum(own - 1, 1)
    mean_to = sums / sizes
    mean_to[rows, cls] = np.inf
    b = mean_to.min(axis=1)
    s = np.where(own > 1, (b - a) / np.maximum(np.maximum(a, b), 1e-12), 0.0)
    return float(s.mean())


def label_free_scores(
    embeddings: Any, preds_per_head: list[Any], classes_per_head: list[int]
) -> list[dict[str, float | int | None]]:
    """Per head: ``active_classes`` (distinct predictions), :func:`size_entropy` and
    :func:`silhouettes`; none of them reads a label.

    >>> x = [[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]]
    >>> label_free_scores(x, [[0, 0, 1, 1]], [4])
    [{'active_classes': 2, 'size_entropy': 0.5, 'silhouette': 0.993...}]
    """
    scores = silhouettes(embeddings, preds_per_head)
    return [
        {
            "active_classes": len(np.unique(_to_int_array(p, "preds"))),
            "size_entropy": size_entropy(p, c),
            "silhouette": s,
        }
        for p, c, s in zip(preds_per_head, classes_per_head, scores, strict=True)
    ]


SELECTED_NOTE = "* lowest loss among the heads with as many classes (chosen without labels)"
LABEL_FREE_NOTE = (
    "active_classes, size_entropy (1 = equal class sizes), silhouette (cosine, embeddings): "
    "no labels used; silhouette compares heads of any size"
)
_WIDTH = {"acc_many_to_one": 15, "selection_loss": 14, "active_classes": 14, "size_entropy": 12}


def format_table(heads: list[dict]) -> str:
    """Per-head scores (as from :func:`head_metrics`) as a fixed-width text table; heads with
    a ``selection_loss`` get a ``selection_loss`` column and a ``*`` on the selected ones, and
    heads with :func:`label_free_scores` get their three columns (before selection_loss)."""
    cols = ["classes", "nmi", "ami", "ari", "acc", "acc_many_to_one"]
    label_free = any("silhouette" in h for h in heads)
    if label_free:
        cols += ["active_classes", "size_entropy", "silhouette"]
    if any("selection_loss" in h for h in heads):
        cols.append("selection_loss")
    lines = ["head   " + "  ".join(f"{c:>{_WIDTH.get(c, 7)}}" for c in cols)]
    for i, h in enumerate(heads):
        cells = []
        for c in cols:
            v = h.get(c)
            w = _WIDTH.get(c, 7)
            cells.append(
                f"{'-':>{w}}"
                if v is None
                else (f"{v:>{w}d}" if isinstance(v, int) else f"{v:>{w}.4f}")
            )
        mark = "*" if h.get("selected") else " "
        lines.append(f"{i:>4}{mark}  " + "  ".join(cells))
    if label_free:
        lines.append(LABEL_FREE_NOTE)
    if any(h.get("selected") for h in heads):
        lines.append(SELECTED_NOTE)
    return "\n".join(lines)
