"""Score records of the protocols: each head's clusters, kNN, superclasses, ours and the
authors' (:mod:`selfclassifier.evaluate.authors`), as the dicts ``evaluate`` writes."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from selfclassifier.data.decode import DataError
from selfclassifier.evaluate import authors
from selfclassifier.evaluate.metrics import head_metrics, label_free_scores
from selfclassifier.evaluate.protocols import knn_top1, load_superclass_mapping, relabel
from selfclassifier.inference import Outputs

__all__ = [
    "KNN_K",
    "KNN_TEMPERATURE",
    "head_scores",
    "head_scores_authors",
    "knn_record",
    "knn_record_authors",
    "scored",
    "superclass_mapping",
    "superclass_scores",
    "superclass_scores_authors",
]

KNN_K = 20
KNN_TEMPERATURE = 0.07  # DINO's and the paper's kNN protocol


def head_scores(out: Outputs, labels: torch.Tensor | None = None) -> list[dict]:
    """:func:`head_metrics` of every head's argmax against ``labels`` (default: out.labels),
    plus the label-free ``size_entropy`` and ``silhouette`` (:func:`label_free_scores`)."""
    labels = out.labels if labels is None else labels
    classes = [p.shape[1] for p in out.probs]
    preds = [p.argmax(1).numpy() for p in out.probs]
    heads = [head_metrics(labels.numpy(), p, c) for p, c in zip(preds, classes, strict=True)]
    for head, extra in zip(heads, label_free_scores(out.embeddings, preds, classes), strict=True):
        head.update((k, v) for k, v in extra.items() if k not in head)  # labelled active_classes
    return heads


def knn_record(
    memory: torch.Tensor,
    memory_labels: torch.Tensor,
    queries: torch.Tensor,
    query_labels: torch.Tensor,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
) -> dict:
    """``{"k", "temperature", "top1", "protocol": "ours"}`` of weighted kNN on (N, D) features."""
    top1 = knn_top1(memory, memory_labels, queries, query_labels, k, temperature)
    return {"k": k, "temperature": temperature, "top1": top1, "protocol": "ours"}


def knn_record_authors(
    memory: torch.Tensor,
    memory_labels: torch.Tensor,
    queries: torch.Tensor,
    query_labels: torch.Tensor,
    ks: tuple[int, ...] = authors.KNN_KS,
) -> dict:
    """The authors' kNN (:func:`knn_authors`): ``top1_by_k``, top-1 per k keyed by str(k)."""
    by_k = scored(authors.knn_authors, memory, memory_labels, queries, query_labels, ks)
    return {
        "protocol": "authors",
        "reference": authors.REFERENCES["knn"],
        "k": list(ks),
        "temperature": authors.KNN_TEMPERATURE,
        "top1_by_k": {str(k): top1 for k, top1 in by_k.items()},
    }


def scored(protocol, *args, **kwargs):
    """A protocol's ValueError (say, no labelled query) as a one-line DataError."""
    try:
        return protocol(*args, **kwargs)
    except ValueError as e:
        raise DataError(f"{protocol.__name__}: {e}") from None


def superclass_mapping(
    path: str, ds: Dataset, allow_missing: bool = False
) -> tuple[np.ndarray, list[str]]:
    """:func:`load_superclass_mapping` for the class names of ``ds``, one-line DataErrors.

    ``allow_missing`` (with the authors' protocol): classes the file does not list get -1 and
    are left out of the superclass scores."""
    class_names = getattr(ds, "classes", None)
    if not class_names:
        raise DataError("--superclasses needs class names, and the evaluation data has none")
    try:
        return load_superclass_mapping(path, class_names, allow_missing)
    except OSError as e:
        raise DataError(f"--superclasses: cannot read '{path}' ({e.strerror or e})") from None
    except ValueError as e:
        raise DataError(f"--superclasses: {e}") from None


def superclass_scores(
    out: Outputs, fine_to_super: np.ndarray, names: list[str], mapping: str = ""
) -> dict:
    """Our protocol: each head's clusters matched to the superclass labels
    ``fine_to_super[label]`` directly, scored as :func:`head_scores` (samples of classes
    without a superclass, -1, are not scored)."""
    labels = torch.from_numpy(relabel(out.labels, fine_to_super))
    return {
        "mapping": str(mapping),
        "classes": len(names),
        "names": names,
        "heads": head_scores(out, labels),
        "protocol": "ours",
    }


def head_scores_authors(out: Outputs, fine_to_super: np.ndarray | None = None) -> dict:
    """Every head scored as the authors' ``cls_eval.py`` (:func:`cluster_scores_authors`):
    ``{"protocol", "reference", "samples", "heads": [{"classes", "nmi", "ami", "ari",
    "acc"}...]}``."""
    heads = []
    for p in out.probs:
        scores = scored(authors.cluster_scores_authors, out.labels, p.argmax(1), fine_to_super)
        samples = scores.pop("samples")
        heads.append({"classes": int(p.shape[1]), **scores})
    return {
        "protocol": "authors",
        "reference": authors.REFERENCES["clusters"],
        "samples": samples if heads else 0,
        "heads": heads,
    }


def superclass_scores_authors(
    out: Outputs, fine_to_super: np.ndarray, names: list[str], mapping: str = ""
) -> dict:
    """The authors' superclass protocol: only the samples of classes the mapping covers,
    clusters matched to their *fine* labels, the matched labels mapped to superclasses for
    ACC; NMI, AMI and ARI against the fine labels (:func:`cluster_scores_authors`)."""
    return {
        "mapping": str(mapping),
        "classes": len(names),
        "names": names,
        "fine_classes": int((fine_to_super >= 0).sum()),
        "metrics": "nmi, ami, ari: against the fine labels; acc: against the superclasses, "
        "clusters matched at the fine level",
        **head_scores_authors(out, fine_to_super),
    }
