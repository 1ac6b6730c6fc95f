"""``selfclassifier evaluate``: every requested protocol on a loaded run, and its table.

:mod:`selfclassifier.evaluate.protocols` holds the protocols as pure functions of feature
tensors; :mod:`selfclassifier.evaluate.probes` decides which data they see (the evaluation
data, kNN's memory / queries), :mod:`selfclassifier.evaluate.scores` builds their records, and
:class:`selfclassifier.inference.LoadedRun` runs the model to get the features. Defaults come
from the checkpoint's recorded config, so ``selfclassifier evaluate CKPT --knn --linear
--kmeans`` works right after ``selfclassifier train`` with no other argument.

Two sets of protocols (``--protocol ours|authors|both``): ours (the default; fast, on cached
features: :mod:`selfclassifier.evaluate.protocols`) and the authors' (their evaluation scripts,
rewritten in :mod:`selfclassifier.evaluate.authors`), which write ``knn_authors``,
``linear_authors``, ``kmeans_authors``, ``heads_authors`` and ``superclasses_authors``. Every
record says which protocol produced it: ``"protocol": "ours"`` or ``"authors"`` (with
``"reference"``, the authors' file), and ``"heads_protocol"`` for the ``heads`` list. k-means
of the authors needs the memory / queries too: it is fit on the memory and scored on the
queries.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, Subset

from selfclassifier.config import ConfigError
from selfclassifier.data.folders import ImageFileDataset
from selfclassifier.evaluate import authors
from selfclassifier.evaluate.metrics import format_table
from selfclassifier.evaluate.probes import (
    FEATURE_KINDS,
    PixelRun,
    ProbeSource,
    data_spec,
    features_of,
    holdout_indices,
    open_data,
    probe_outputs,
    probe_source,
    require_labels,
)
from selfclassifier.evaluate.protocols import kmeans_metrics, linear_probe
from selfclassifier.evaluate.scores import (
    KNN_K,
    head_scores,
    head_scores_authors,
    knn_record,
    knn_record_authors,
    scored,
    superclass_mapping,
    superclass_scores,
    superclass_scores_authors,
)
from selfclassifier.inference import LoadedRun, Outputs, _Transformed, match_channels
from selfclassifier.views import eval_side

__all__ = [
    "PROTOCOLS",
    "EvalOptions",
    "evaluate_run",
    "format_results",
    "linear_record_authors",
    "protocols_of",
]

#: ``--protocol``: ours only, the authors' only (:mod:`selfclassifier.evaluate.authors`), or both
PROTOCOLS = ("ours", "authors", "both")


@dataclass
class EvalOptions:
    """What ``selfclassifier evaluate`` was asked for (see the module docstring)."""

    data: str | None = None
    split: str | None = None
    train_data: str | None = None
    knn: bool = False
    linear: bool = False
    kmeans: bool = False
    superclasses: str | None = None
    features: str = "backbone"
    k: int = KNN_K
    batch_size: int = 256
    workers: int | None = None
    #: one of PROTOCOLS
    protocol: str = "ours"
    #: the authors' linear probe only (ours is L-BFGS on cached features)
    linear_epochs: int = authors.LINEAR["epochs"]
    linear_batch_size: int = authors.LINEAR["batch_size"]


def evaluate_run(
    run: LoadedRun | PixelRun, opts: EvalOptions, log: Callable[[str], None] = print
) -> dict:
    """Every requested protocol on a loaded model; the JSON document ``evaluate`` writes.

    Returns ``{"checkpoint", "data", "features", "heads": [...], "heads_protocol"}`` plus,
    when asked for, with ``opts.protocol`` ours: "knn", "linear", "kmeans", "superclasses";
    authors: "heads_authors", "knn_authors", "linear_authors", "kmeans_authors",
    "superclasses_authors"; both: all of them. Each record holds its ``"protocol"``.
    """
    if opts.features not in FEATURE_KINDS:
        raise ConfigError(f"--features {opts.features!r}: choose {', '.join(FEATURE_KINDS)}")
    ours, theirs = protocols_of(opts.protocol)
    if theirs and opts.linear and not isinstance(run, LoadedRun):
        raise ConfigError(
            "--protocol authors --linear: the authors' linear probe trains on image crops "
            "through a model's backbone; give a CHECKPOINT"
        )
    spec, split = data_spec(run.cfg, opts.data, opts.split)
    recorded = opts.data is None
    ds = open_data(spec, split, run.mode, recorded)
    require_labels(ds, spec, "data")
    if opts.superclasses is not None:  # a bad mapping fails before the model runs
        # The authors score the classes a mapping covers (BREEDS covers part of ImageNet).
        fine_to_super, super_names = superclass_mapping(opts.superclasses, ds, theirs)
    workers = run.cfg.data.workers if opts.workers is None else opts.workers
    extract_ds = functools.partial(
        run.extract,
        batch_size=opts.batch_size,
        workers=workers,
        keep_pixels=opts.features == "pixels",
    )
    side = eval_side(run.cfg.augment) if isinstance(run, LoadedRun) else None
    at = f", {side} px input" if side else ""
    log(f"running the model over {spec} ({split}, {len(ds)} images{at}) on {run.device}")
    out = extract_ds(ds)
    feats = functools.partial(
        features_of, kind=opts.features, aug=run.cfg.augment, channels=run.channels
    )
    result: dict = {
        "checkpoint": str(run.path),
        "data": {"path": spec, "split": split, "samples": len(out)}
        | ({"input_size": side} if side else {}),
        "features": opts.features,
        "heads": run.mark_selection(head_scores(out)),
    }
    if not result["heads"]:
        del result["heads"]  # no model
    else:
        result["heads_protocol"] = "ours"
        if theirs:
            result["heads_authors"] = head_scores_authors(out)
    k = len(torch.unique(out.labels[out.labels >= 0]))  # k-means: as many clusters as labels
    if opts.knn or opts.linear or (opts.kmeans and theirs):
        source = probe_source(spec, split, opts.train_data, run.mode, recorded)
        memory, queries = probe_outputs(source, out, extract_ds)
        where = {
            "memory": source.memory_name,
            "memory_samples": len(memory),
            "queries": source.queries_name,
            "query_samples": len(queries),
        }
        if opts.knn and ours:
            record = knn_record(
                feats(memory), memory.labels, feats(queries), queries.labels, opts.k
            )
            result["knn"] = {**record, **where}
        if opts.knn and theirs:
            record = knn_record_authors(
                feats(memory), memory.labels, feats(queries), queries.labels
            )
            result["knn_authors"] = {**record, **where}
        if opts.linear and ours:
            probe = scored(
                linear_probe, feats(memory), memory.labels, feats(queries), queries.labels
            )
            result["linear"] = {**probe, "protocol": "ours", **where}
        if opts.linear and theirs:
            record = linear_record_authors(run, opts, source, ds, out, memory, queries, log)
            result["linear_authors"] = {**record, **where}
        if opts.kmeans and theirs:
            scores = scored(
                authors.kmeans_authors, feats(memory), feats(queries), queries.labels, k
            )
            result["kmeans_authors"] = {
                "protocol": "authors",
                "reference": authors.REFERENCES["kmeans"],
                **scores,
                **where,
            }
    if opts.kmeans and ours:
        scores = scored(kmeans_metrics, feats(out), out.labels, k)
        result["kmeans"] = {"k": k, **scores, "protocol": "ours"}
    if opts.superclasses is not None:
        args = (out, fine_to_super, super_names, opts.superclasses)
        if ours:
            result["superclasses"] = superclass_scores(*args)
        if theirs:
            result["superclasses_authors"] = superclass_scores_authors(*args)
    return result


def protocols_of(protocol: str) -> tuple[bool, bool]:
    """``--protocol`` -> (run ours, run the authors')."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"--protocol {protocol!r}: choose {', '.join(PROTOCOLS)}")
    return protocol != "authors", protocol != "ours"


def linear_record_authors(
    run: LoadedRun,
    opts: EvalOptions,
    source: ProbeSource,
    eval_ds: Dataset,
    eval_out: Outputs,
    memory: Outputs,
    queries: Outputs,
    log: Callable[[str], None] = print,
) -> dict:
    """The authors' linear probe (:func:`linear_probe_authors`): trained on augmented crops
    of the memory's images through the frozen backbone, scored on the queries' backbone
    features (centre crops, as extracted); backbone features whatever ``--features`` says."""
    base = eval_ds if source.memory is None else source.memory
    memory_ds = match_channels(base, run.channels)
    if source.holdout:  # the same indices probe_outputs took the memory outputs from
        memory_ds = Subset(memory_ds, holdout_indices(eval_out.labels)[0].tolist())
    known = torch.nonzero(memory.labels >= 0).flatten().tolist()
    train = _Transformed(
        Subset(memory_ds, known), authors.authors_train_transform(run.cfg.augment, run.channels)
    )
    from_files = isinstance(base, ImageFileDataset)
    workers = run.cfg.data.workers if opts.workers is None else opts.workers
    num_classes = int(torch.cat([memory.labels, queries.labels]).max()) + 1
    log(
        f"authors' linear probe: {opts.linear_epochs} epochs over {len(known)} images, "
        f"batch {opts.linear_batch_size}, on {run.device}"
    )
    scores = scored(
        authors.linear_probe_authors,
        run.model.backbone,
        train,
        queries.features,
        queries.labels,
        num_classes,
        epochs=opts.linear_epochs,
        batch_size=opts.linear_batch_size,
        device=run.device,
        workers=workers if from_files else 0,
        log=log,
    )
    return {
        "protocol": "authors",
        "reference": authors.REFERENCES["linear"],
        **scores,
        "features": "backbone",
        "epochs": opts.linear_epochs,
        "batch_size": opts.linear_batch_size,
        "lr": authors.LINEAR["lr"],
    }


def format_results(result: dict) -> str:
    """The evaluate JSON as the table ``selfclassifier evaluate`` prints."""
    d, kind = result["data"], result["features"]
    lines = [
        f"data: {d['path']} ({d['split']}, {d['samples']} images)",
    ]
    if "heads" in result:
        lines.append(format_table(result["heads"]))
    if "knn" in result:
        r = result["knn"]
        lines.append(
            f"kNN (k={r['k']}, {kind} features): top-1 {r['top1']:.4f}   "
            f"memory {r['memory']}: {r['memory_samples']}, "
            f"queries {r['queries']}: {r['query_samples']}"
        )
    if "linear" in result:
        r = result["linear"]
        lines.append(
            f"linear probe ({kind} features): top-1 {r['top1']:.4f} (train {r['train_top1']:.4f})"
        )
    if "kmeans" in result:
        r = result["kmeans"]
        scores = "  ".join(f"{m} {r[m]:.4f}" for m in ("nmi", "ami", "ari", "acc"))
        lines.append(f"k-means (k={r['k']}, {kind} features): {scores}")
    if "superclasses" in result:
        r = result["superclasses"]
        lines.append(f"superclasses ({r['classes']}, from {r['mapping']}):")
        lines.append(format_table(r["heads"]))
    lines += _format_authors(result)
    return "\n".join(lines)


def _format_authors(result: dict) -> list[str]:
    """The lines of the authors' protocols, each saying so."""
    kind, lines = result["features"], []
    if "heads_authors" in result:
        r = result["heads_authors"]
        lines.append(f"heads, authors' scoring (cls_eval.py), {r['samples']} images:")
        lines.append(format_table(r["heads"]))
    if "knn_authors" in result:
        r = result["knn_authors"]
        by_k = "  ".join(f"k={k} {v:.4f}" for k, v in r["top1_by_k"].items())
        lines.append(f"kNN, authors' protocol (T={r['temperature']}, {kind} features): {by_k}")
    if "linear_authors" in result:
        r = result["linear_authors"]
        lines.append(
            f"linear probe, authors' recipe ({r['epochs']} epochs, backbone features): "
            f"top-1 {r['top1']:.4f} (best epoch {r['best_top1']:.4f}, "
            f"train crops {r['train_top1']:.4f})"
        )
    if "kmeans_authors" in result:
        r = result["kmeans_authors"]
        scores = "  ".join(f"{m} {r[m]:.4f}" for m in ("nmi", "ami", "ari", "acc"))
        lines.append(
            f"k-means, authors' protocol (k={r['k']}, fit on the memory, {kind} features): {scores}"
        )
    if "superclasses_authors" in result:
        r = result["superclasses_authors"]
        lines.append(
            f"superclasses, authors' scoring ({r['classes']}, from {r['mapping']}; "
            f"{r['fine_classes']} fine classes, {r['samples']} images; nmi/ami/ari vs fine):"
        )
        lines.append(format_table(r["heads"]))
    return lines
