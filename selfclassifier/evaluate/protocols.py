"""Evaluation protocols on frozen features: kNN, linear probe, k-means, superclasses.

Everything here is a pure function of cached feature tensors (float, shape (N, D))
and integer labels (shape (N,)); extracting the features from a model is the
caller's job. Labels < 0 mean "unknown": such training samples are dropped and such
test samples are not scored, matching :mod:`selfclassifier.evaluate.metrics`.

>>> feats = torch.eye(4)
>>> labels = torch.tensor([0, 0, 1, 1])
>>> knn_top1(feats, labels, feats, labels, k=1)
1.0
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from torch import nn

from selfclassifier.evaluate.metrics import cluster_metrics

__all__ = [
    "kmeans_metrics",
    "knn_predict",
    "knn_top1",
    "linear_probe",
    "load_superclass_mapping",
    "relabel",
]


def _as_labels(x: Any, device: torch.device | None = None) -> torch.Tensor:
    """Any 1-D integer sequence -> int64 tensor (on ``device`` if given)."""
    t = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x)
    if t.dim() != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(t.shape)}")
    return t.to(device=device, dtype=torch.long)


def _check_pair(feats: torch.Tensor, labels: torch.Tensor, name: str) -> None:
    if feats.dim() != 2:
        raise ValueError(f"{name} features must be (N, D), got shape {tuple(feats.shape)}")
    if len(feats) != len(labels):
        raise ValueError(f"{name}: {len(feats)} feature rows but {len(labels)} labels")


def _accuracy(preds: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy over samples with a known (>= 0) label."""
    known = labels >= 0
    if not bool(known.any()):
        raise ValueError("no labelled samples: all test labels are negative (unknown)")
    return float((preds[known] == labels[known]).float().mean())


# --------------------------------------------------------------------------- kNN


@torch.no_grad()
def knn_predict(
    train_feats: torch.Tensor,
    train_labels: Any,
    test_feats: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> torch.LongTensor:
    """Weighted k-nearest-neighbour classification (DINO / InstDisc protocol).

    Features are L2-normalised; each test sample takes its ``k`` most cosine-similar
    training samples, and neighbour i votes for its label with weight
    ``exp(sim_i / temperature)``, so close neighbours outvote a far majority.

    Args:
        train_feats: (N, D) float.
        train_labels: (N,) int; samples with label < 0 are dropped.
        test_feats: (M, D) float.
        k: neighbours; clipped to the number of labelled training samples.
        temperature: vote sharpness; large values approach a plain majority vote.
        num_classes: defaults to ``max(train_labels) + 1``.
        chunk_size: test rows per similarity block; bounds memory to chunk_size x N.

    Returns:
        (M,) int64 predicted labels, on ``test_feats``' device.

    >>> train = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> knn_predict(train, torch.tensor([3, 5]), torch.tensor([[0.1, 1.0]]), k=2).tolist()
    [5]
    """
    device = test_feats.device
    train_labels = _as_labels(train_labels, device)
    _check_pair(train_feats, train_labels, "train")
    known = train_labels >= 0
    train_feats, train_labels = train_feats.to(device)[known], train_labels[known]
    if len(train_labels) == 0:
        raise ValueError("knn_predict: no labelled training samples (all labels < 0)")
    if num_classes is None:
        num_classes = int(train_labels.max()) + 1
    k = max(1, min(int(k), len(train_labels)))

    train_n = F.normalize(train_feats.float(), dim=1)
    preds = [
        _knn_chunk(train_n, train_labels, chunk, k, temperature, num_classes)
        for chunk in F.normalize(test_feats.float(), dim=1).split(chunk_size)
    ]
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long, device=device)


def _knn_chunk(
    train_n: torch.Tensor,
    train_labels: torch.Tensor,
    test_n: torch.Tensor,
    k: int,
    temperature: float,
    num_classes: int,
) -> torch.Tensor:
    """Predictions for one block of L2-normalised test rows, shape (B,)."""
    sims, idx = (test_n @ train_n.T).topk(k, dim=1)  # (B, k)
    # Subtracting each row's best similarity rescales that row's votes by a constant
    # (argmax unchanged) and keeps exp() finite for tiny temperatures.
    weights = ((sims - sims[:, :1]) / temperature).exp()
    votes = torch.zeros(len(test_n), num_classes, device=test_n.device)
    votes.scatter_add_(1, train_labels[idx], weights)
    return votes.argmax(dim=1)


def knn_top1(
    train_feats: torch.Tensor,
    train_labels: Any,
    test_feats: torch.Tensor,
    test_labels: Any,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Top-1 accuracy in [0, 1] of :func:`knn_predict` (test labels < 0 not scored).

    >>> f = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> knn_top1(f, [0, 1], f, [0, 1], k=1)
    1.0
    """
    test_labels = _as_labels(test_labels, test_feats.device)
    _check_pair(test_feats, test_labels, "test")
    train_t = _as_labels(train_labels)
    # Size the vote table for test labels the training set never shows, so they are
    # simply wrong instead of indexing out of range.
    all_labels = torch.cat([train_t.cpu(), test_labels.cpu()])
    num_classes = int(all_labels.max()) + 1 if len(all_labels) else None
    preds = knn_predict(train_feats, train_t, test_feats, k, temperature, num_classes)
    return _accuracy(preds, test_labels)


# ------------------------------------------------------------------ linear probe


def linear_probe(
    train_feats: torch.Tensor,
    train_labels: Any,
    test_feats: torch.Tensor,
    test_labels: Any,
    epochs: int = 100,
    lr: float | None = None,
    weight_decay: float = 1e-4,
    batch_size: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Train a linear classifier on frozen features and report its accuracy.

    Features are standardised with the training mean/std, then an ``nn.Linear`` is
    fit by softmax regression. Two recipes:

    - ``batch_size=None`` (default): full-batch L-BFGS (strong-Wolfe line search) on
      cross-entropy + ``weight_decay / 2 * ||W||^2``; ``epochs`` caps the L-BFGS
      iterations. Convex, so it converges to the same optimum every time; the right
      choice whenever the features fit in memory (seconds for 10^4 x 10^3 on a CPU).
    - ``batch_size=int``: AdamW with cosine decay over ``epochs`` mini-batch epochs
      (``weight_decay`` decoupled), for feature sets too large for one batch.

    ``lr`` defaults to 1.0 for L-BFGS (its natural step, scaled by the line search)
    and 1e-3 for AdamW. Training samples with label < 0 are dropped; test samples
    with label < 0 are not scored. Deterministic for a fixed ``seed`` on one device.

    Args:
        train_feats: (N, D) float; train_labels: (N,) int.
        test_feats: (M, D) float; test_labels: (M,) int.

    Returns:
        ``{"top1": test accuracy, "train_top1": training accuracy}``, floats in [0, 1].

    >>> x = torch.tensor([[-2.0], [-1.0], [1.0], [2.0]])
    >>> linear_probe(x, [0, 0, 1, 1], x, [0, 0, 1, 1])
    {'top1': 1.0, 'train_top1': 1.0}
    """
    device = train_feats.device
    y_train = _as_labels(train_labels, device)
    y_test = _as_labels(test_labels, device)
    _check_pair(train_feats, y_train, "train")
    _check_pair(test_feats, y_test, "test")
    known = y_train >= 0
    x_train, y_train = train_feats.float()[known], y_train[known]
    if len(y_train) == 0:
        raise ValueError("linear_probe: no labelled training samples (all labels < 0)")
    x_test = test_feats.to(device).float()
    num_classes = int(max(y_train.max(), y_test.max())) + 1

    # Standardising makes one learning rate / L2 strength fit any backbone's scale.
    mean, std = x_train.mean(dim=0), x_train.std(dim=0).clamp_min(1e-6)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std

    generator = torch.Generator().manual_seed(seed)
    model = _seeded_linear(x_train.shape[1], num_classes, generator).to(device)
    if batch_size is None:
        _fit_lbfgs(model, x_train, y_train, epochs, 1.0 if lr is None else lr, weight_decay)
    else:
        lr = 1e-3 if lr is None else lr
        _fit_adamw(model, x_train, y_train, epochs, lr, weight_decay, batch_size, generator)

    with torch.no_grad():
        return {
            "top1": _accuracy(model(x_test).argmax(dim=1), y_test),
            "train_top1": _accuracy(model(x_train).argmax(dim=1), y_train),
        }


def _seeded_linear(in_dim: int, out_dim: int, generator: torch.Generator) -> nn.Linear:
    """nn.Linear initialised from ``generator`` only, untouched by the global RNG."""
    # skip_init: nn.Linear's own init would draw from (and advance) the global RNG.
    model = nn.utils.skip_init(nn.Linear, in_dim, out_dim)
    bound = 1.0 / math.sqrt(in_dim)  # PyTorch's default init range
    with torch.no_grad():
        model.weight.copy_(torch.rand(out_dim, in_dim, generator=generator) * 2 * bound - bound)
        model.bias.zero_()
    return model


def _fit_lbfgs(
    model: nn.Linear,
    x: torch.Tensor,
    y: torch.Tensor,
    max_iter: int,
    lr: float,
    weight_decay: float,
) -> None:
    """Full-batch L-BFGS on mean cross-entropy + L2 on the weight (not the bias)."""
    optimizer = torch.optim.LBFGS(
        model.parameters(), lr=lr, max_iter=max_iter, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y) + 0.5 * weight_decay * model.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)


def _fit_adamw(
    model: nn.Linear,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    generator: torch.Generator,
) -> None:
    """Mini-batch AdamW, cosine-annealed to zero over all steps."""
    steps_per_epoch = math.ceil(len(x) / batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=generator).to(x.device)
            for batch in order.split(batch_size):
                loss = F.cross_entropy(model(x[batch]), y[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()


# ----------------------------------------------------------------------- k-means


def kmeans_metrics(feats: Any, labels: Any, k: int, seed: int = 0, n_init: int = 10) -> dict:
    """k-means baseline: cluster L2-normalised features, score against the labels.

    All samples are clustered; only those with label >= 0 are scored.

    Args:
        feats: (N, D) float tensor or array. labels: (N,) int.
        k: number of clusters (usually the number of classes).

    Returns:
        :func:`selfclassifier.evaluate.metrics.cluster_metrics` dict: nmi, ami, ari, acc.

    >>> feats = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    >>> kmeans_metrics(feats, [0, 0, 1, 1], k=2)["acc"]
    1.0
    """
    x = torch.as_tensor(feats).detach().float().cpu()
    if x.dim() != 2:
        raise ValueError(f"features must be (N, D), got shape {tuple(x.shape)}")
    # Cosine geometry, as for kNN: the embedding's norm carries no class information.
    x = F.normalize(x, dim=1).numpy()
    preds = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(x)
    return cluster_metrics(labels, preds)


# ----------------------------------------------------------------- superclasses


def load_superclass_mapping(
    path: str | Path, class_names: list[str], allow_missing: bool = False
) -> tuple[np.ndarray, list[str]]:
    """Read a fine-class -> superclass mapping, e.g. ImageNet classes -> BREEDS groups.

    File format: one ``fine_label_name<TAB>superclass_name`` per line; blank lines
    and lines starting with ``#`` are ignored; surrounding whitespace is stripped.

    Args:
        path: the mapping file.
        class_names: fine class names in label order (label i is ``class_names[i]``).
        allow_missing: classes the file does not list get superclass -1 (not scored), as
            the BREEDS subsets cover part of ImageNet; otherwise every class must be listed.

    Returns:
        ``(fine_to_super, super_names)``: int64 array of shape (len(class_names),)
        with the superclass id of every fine label, and the sorted superclass names
        that those ids index.

    Raises:
        ValueError: malformed line, unknown fine name, conflicting duplicate, a class of
            ``class_names`` with no superclass (unless ``allow_missing``), or no class with one.

    >>> import tempfile, os
    >>> with tempfile.NamedTemporaryFile("w", suffix=".tsv", delete=False) as f:
    ...     _ = f.write("# fine -> super\\ncat\\tanimal\\noak\\tplant\\ndog\\tanimal\\n")
    >>> fine_to_super, supers = load_superclass_mapping(f.name, ["cat", "dog", "oak"])
    >>> fine_to_super.tolist(), supers
    ([0, 0, 1], ['animal', 'plant'])
    >>> os.remove(f.name)
    """
    mapping = _parse_mapping(Path(path), set(class_names))
    missing = [name for name in class_names if name not in mapping]
    if missing and not allow_missing:
        shown = ", ".join(repr(n) for n in missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise ValueError(f"{path}: {len(missing)} class(es) have no superclass: {shown}")
    if not mapping:
        raise ValueError(f"{path}: no class of the data has a superclass")
    super_names = sorted(set(mapping.values()))
    super_id = {name: i for i, name in enumerate(super_names)}
    fine_to_super = np.array(
        [super_id[mapping[name]] if name in mapping else -1 for name in class_names],
        dtype=np.int64,
    )
    return fine_to_super, super_names


def _parse_mapping(path: Path, known: set[str]) -> dict[str, str]:
    """Lines of ``fine<TAB>super`` -> {fine: super}, with one-line errors naming the line."""
    mapping: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            fields = [field.strip() for field in line.split("\t")]
            if len(fields) != 2 or not all(fields):
                raise ValueError(
                    f"{path}:{lineno}: expected 'fine_label_name<TAB>superclass_name', got {line!r}"
                )
            fine, sup = fields
            if fine not in known:
                raise ValueError(f"{path}:{lineno}: {fine!r} is not one of the dataset's classes")
            if mapping.get(fine, sup) != sup:
                raise ValueError(
                    f"{path}:{lineno}: {fine!r} mapped to {sup!r} but earlier to {mapping[fine]!r}"
                )
            mapping[fine] = sup
    return mapping


def relabel(labels: Any, fine_to_super: Any) -> np.ndarray:
    """Map fine labels to superclass labels; unknown labels (< 0) and labels of fine classes
    without a superclass (-1 in ``fine_to_super``) become -1.

    Args:
        labels: (N,) int fine labels. fine_to_super: (C,) int, from
            :func:`load_superclass_mapping`.

    Returns:
        (N,) int64 superclass labels.

    >>> relabel([0, 2, -1], np.array([1, 0, 1])).tolist()
    [1, 1, -1]
    """
    labels = _as_labels(labels).cpu().numpy()
    fine_to_super = np.asarray(fine_to_super, dtype=np.int64)
    if labels.size and labels.max() >= len(fine_to_super):
        raise ValueError(
            f"label {labels.max()} out of range for a mapping of {len(fine_to_super)} classes"
        )
    return np.where(labels >= 0, fine_to_super[labels.clip(min=0)], -1)
