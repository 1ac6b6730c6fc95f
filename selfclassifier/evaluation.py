"""Evaluating a trained model: which data, running the model over it, every protocol, the gallery.

:mod:`selfclassifier.evaluate` holds the protocols as pure functions of feature tensors; this
module decides which data they see and runs the model to get the features. Defaults come from
the checkpoint's recorded config, so ``selfclassifier evaluate CKPT --knn --linear --kmeans``
works right after ``selfclassifier train`` with no other argument.

The heads, k-means and superclasses are scored on the *evaluation data*: ``--data`` (all of
it, or ``--split``), else the data and split the checkpoint was trained on. kNN and the linear
probe need a labelled memory / training side and queries; they are, in order of precedence:

1. with ``train_data``: all of ``train_data`` is the memory, the evaluation data the queries;
2. when the evaluation dataset has its own split (digits, Fashion-MNIST, IDX folders, image
   folders with train/ and test/ or val/): its train split is the memory, its test split the
   queries. Digits' split is fixed: 1,347 train / 450 test (``data.load_digits_dataset``);
3. otherwise (a labelled folder without splits): a fixed hold-out of the evaluation data,
   75% memory / 25% queries, stratified by label, seed 0 (:func:`holdout_indices`).

Labels of the memory are the only labels these protocols learn from; the network never saw
any label, whichever images it was trained on.

Two sets of protocols (``--protocol ours|authors|both``): ours (the default; fast, on cached
features: :mod:`selfclassifier.evaluate`) and the authors' (their evaluation scripts, rewritten
in :mod:`selfclassifier.evaluate_authors`), which write ``knn_authors``, ``linear_authors``,
``kmeans_authors``, ``heads_authors`` and ``superclasses_authors``. Every record says which
protocol produced it: ``"protocol": "ours"`` or ``"authors"`` (with ``"reference"``, the
authors' file), and ``"heads_protocol"`` for the ``heads`` list. k-means of the authors needs
the memory / queries above too: it is fit on the memory and scored on the queries.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from selfclassifier import evaluate_authors as authors
from selfclassifier.augment import normalization
from selfclassifier.checkpoint import model_from_checkpoint, selection_losses_of
from selfclassifier.config import AugmentConfig, Config, ConfigError
from selfclassifier.data import (
    DataError,
    ImageFileDataset,
    TensorImageDataset,
    build_dataset,
    has_splits,
    is_labelled,
)
from selfclassifier.evaluate import (
    kmeans_metrics,
    knn_top1,
    linear_probe,
    load_superclass_mapping,
    relabel,
)
from selfclassifier.inference import Outputs, _Transformed, eval_loader, run_model
from selfclassifier.metrics import (
    default_head,
    format_table,
    head_metrics,
    label_free_scores,
    mark_selection,
)
from selfclassifier.model import SelfClassifier

__all__ = [
    "FEATURE_KINDS",
    "PROTOCOLS",
    "EvalOptions",
    "LoadedRun",
    "PixelRun",
    "ProbeSource",
    "evaluate_run",
    "extract",
    "format_results",
    "head_scores",
    "head_scores_authors",
    "holdout_indices",
    "knn_record",
    "knn_record_authors",
    "linear_record_authors",
    "load_run",
    "probe_outputs",
    "probe_source",
    "protocols_of",
    "resolve_device",
    "superclass_mapping",
    "superclass_scores",
    "superclass_scores_authors",
    "write_run_report",
]

FEATURE_KINDS = ("backbone", "embedding", "pixels")
KNN_K = 20
KNN_TEMPERATURE = 0.07  # DINO's and the paper's kNN protocol
#: ``--protocol``: ours only, the authors' only (:mod:`selfclassifier.evaluate_authors`), or both
PROTOCOLS = ("ours", "authors", "both")
HOLDOUT_FRACTION = 0.25
HOLDOUT_SEED = 0


# ----------------------------------------------------------------------------- the model


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> CUDA when available else CPU; a CUDA request without CUDA is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"--device {name}: no CUDA device is available; use --device cpu")
        if (device.index or 0) >= count:
            raise ConfigError(f"--device {name}: this machine has cuda:0..cuda:{count - 1}")
    return device


@dataclass
class LoadedRun:
    """A trained model ready for inference, with what its checkpoint recorded."""

    model: SelfClassifier
    cfg: Config
    channels: int
    path: Path
    device: torch.device
    #: each head's loss after training (empty unless candidate heads were scored)
    selection_loss: list[float] = field(default_factory=list)

    @property
    def default_head(self) -> int:
        """The head to show when none is named (see :func:`metrics.default_head`)."""
        return default_head(self.model.num_classes, self.selection_loss)

    def mark_selection(self, heads: list[dict]) -> list[dict]:
        """Add ``selection_loss`` / ``selected`` to per-head score dicts, when scored."""
        if self.selection_loss:
            mark_selection(heads, self.model.num_classes, self.selection_loss)
        return heads

    @property
    def mode(self) -> str:
        """How to decode image files for this model: 'L' (1 channel) or 'RGB'."""
        return "L" if self.channels == 1 else "RGB"

    def extract(
        self, ds: Dataset, batch_size: int = 256, workers: int = 0, keep_pixels: bool = False
    ) -> Outputs:
        return extract(
            self.model,
            ds,
            self.cfg.augment,
            self.channels,
            self.device,
            batch_size=batch_size,
            workers=workers,
            row_tau=self.cfg.loss.row_tau,
            keep_pixels=keep_pixels,
        )


def load_run(checkpoint: str | os.PathLike, device: str = "auto") -> LoadedRun:
    """Rebuild the model of a checkpoint on ``device``, in eval mode."""
    dev = resolve_device(device)
    model, cfg, ckpt = model_from_checkpoint(checkpoint)
    channels = int(ckpt.get("data", {}).get("channels", 3))
    selection = selection_losses_of(ckpt, len(model.heads))
    return LoadedRun(model.to(dev).eval(), cfg, channels, Path(checkpoint), dev, selection)


@dataclass
class PixelRun:
    """Stands in for a model when there is no checkpoint: the raw-pixel baselines.

    ``extract`` returns each image's pixels at its native resolution, scaled to 0..1 (no
    model, no heads), so ``evaluate --features pixels`` without a CHECKPOINT scores k-means,
    kNN and the linear probe on exactly the data files. Only in-memory datasets (digits, IDX
    folders) qualify: image files differ in size, and a checkpoint fixes theirs.
    """

    cfg: Config
    channels: int
    path: str = "none (raw pixels)"
    device: torch.device = torch.device("cpu")

    mode = LoadedRun.mode

    @classmethod
    def for_data(cls, spec: str, split: str) -> PixelRun:
        ds = build_dataset(spec, split)
        if not isinstance(ds, TensorImageDataset):
            raise DataError(
                f"--data {spec!r}: pixel baselines without a CHECKPOINT need same-size images "
                "(digits, fashion_mnist or an IDX folder); for an image folder pass a "
                "checkpoint, whose input size the images are resized to"
            )
        cfg = Config()
        cfg.data.path, cfg.data.split = spec, split
        c = ds.num_channels
        cfg.augment.mean, cfg.augment.std = [0.0] * c, [1.0] * c  # pixels stay in 0..1
        return cls(cfg, c)

    def mark_selection(self, heads: list[dict]) -> list[dict]:
        return heads  # no heads

    def extract(self, ds: Dataset, keep_pixels: bool = True, **_) -> Outputs:
        ds = match_channels(ds, self.channels)
        n = len(ds)
        return Outputs(
            features=torch.empty(n, 0),
            embeddings=torch.empty(n, 0),
            probs=[],
            labels=ds.targets.long(),
            pixels=ds.images.reshape(n, -1).float() / 255.0,
        )


def match_channels(ds: Dataset, channels: int) -> Dataset:
    """An in-memory dataset with ``channels`` channels (1 <-> 3); files are decoded to the
    right mode instead (see :attr:`LoadedRun.mode`)."""
    if not isinstance(ds, TensorImageDataset) or ds.num_channels == channels:
        return ds
    images = ds.images
    if channels == 3 and images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1).contiguous()
    elif channels == 1 and images.shape[1] == 3:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)  # ITU-R 601 luma, as PIL
        images = (images.float() * weights).sum(1, keepdim=True).round().to(torch.uint8)
    else:
        raise DataError(
            f"dataset {ds.name!r} has {ds.num_channels} channels but the model takes {channels}"
        )
    return TensorImageDataset(images, ds.targets, ds.classes, name=ds.name)


def extract(
    model: SelfClassifier,
    ds: Dataset,
    aug: AugmentConfig,
    channels: int,
    device: torch.device,
    *,
    batch_size: int = 256,
    workers: int = 0,
    row_tau: float = 0.1,
    keep_pixels: bool = False,
) -> Outputs:
    """Run ``model`` over ``ds`` with the deterministic evaluation transform."""
    loader = eval_loader(match_channels(ds, channels), aug, channels, batch_size, workers)
    return run_model(model, loader, device, row_tau, keep_pixels)


def features_of(out: Outputs, kind: str, aug: AugmentConfig, channels: int) -> torch.Tensor:
    """The (N, D) representation ``kind`` names: backbone features, the L2-normalised
    embedding, or the input pixels in 0..1 (the evaluation transform's normalisation undone)."""
    if kind == "backbone":
        return out.features
    if kind == "embedding":
        return out.embeddings
    if kind == "pixels":
        if out.pixels is None:
            raise ValueError("pixels were not kept; extract with keep_pixels=True")
        mean, std = (torch.tensor(v).view(1, channels, 1) for v in normalization(aug, channels))
        return (out.pixels.view(len(out), channels, -1) * std + mean).flatten(1)
    raise ValueError(f"unknown feature kind {kind!r}; choose one of {', '.join(FEATURE_KINDS)}")


# ----------------------------------------------------------------------------- which data


def data_spec(cfg: Config, data: str | None, split: str | None) -> tuple[str, str]:
    """(dataset spec, split): ``data`` (split 'all' unless given) or the recorded training data."""
    if data is None:
        return cfg.data.path, split or cfg.data.split
    return data, split or "all"


def open_data(spec: str, split: str, mode: str, recorded: bool = False) -> Dataset:
    """``build_dataset``; when the spec came from the checkpoint, a failure says to pass --data."""
    try:
        return build_dataset(spec, split, mode=mode)
    except DataError as e:
        if not recorded:
            raise
        raise DataError(
            f"{e} (this is the data the checkpoint was trained on; pass --data PATH)"
        ) from None


def require_labels(ds: Dataset, spec: str, what: str) -> None:
    if not is_labelled(ds):
        raise DataError(
            f"{what} '{spec}' has no labels, so there is nothing to score against; a folder is "
            "labelled when every image sits in a class subfolder (root/CLASS/*.jpg). For "
            "unlabelled images use 'selfclassifier predict' or 'selfclassifier report'"
        )


@dataclass
class ProbeSource:
    """Where kNN's memory / the linear probe's training data and their queries come from.

    ``memory`` / ``queries`` None: the evaluation data itself (extracted once, reused);
    ``holdout``: both are the two parts of :func:`holdout_indices` on the evaluation data.
    """

    memory: Dataset | None
    queries: Dataset | None
    memory_name: str
    queries_name: str
    holdout: bool = False


def probe_source(
    spec: str, split: str, train_data: str | None, mode: str, recorded: bool = False
) -> ProbeSource:
    """The memory/queries rule of the module docstring, for evaluation data ``spec``/``split``."""
    here = f"{spec} ({split})"
    if train_data is not None:
        memory = open_data(train_data, "all", mode)
        require_labels(memory, train_data, "--train-data")
        return ProbeSource(memory, None, f"{train_data} (all)", here)
    if has_splits(spec):
        memory = None if split == "train" else open_data(spec, "train", mode, recorded)
        queries = None if split == "test" else open_data(spec, "test", mode, recorded)
        return ProbeSource(memory, queries, f"{spec} (train)", f"{spec} (test)")
    pct = round(100 * HOLDOUT_FRACTION)
    return ProbeSource(
        None,
        None,
        f"{here}, {100 - pct}% hold-out",
        f"{here}, {pct}% hold-out (seed {HOLDOUT_SEED})",
        holdout=True,
    )


def holdout_indices(
    labels: torch.Tensor, fraction: float = HOLDOUT_FRACTION, seed: int = HOLDOUT_SEED
) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed split of the labelled samples into (memory, queries) index tensors, sorted.

    Stratified by label when every class has at least two samples, as for digits' split.

    >>> train, test = holdout_indices(torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, -1]), 0.5)
    >>> sorted(torch.cat([train, test]).tolist()), len(test)
    ([0, 1, 2, 3, 4, 5, 6, 7], 4)
    """
    from sklearn.model_selection import train_test_split

    y = labels.numpy()
    known = np.flatnonzero(y >= 0)
    if len(known) < 2:
        raise DataError(
            f"a hold-out needs at least 2 labelled images, got {len(known)}; pass --train-data"
        )
    try:
        train, test = train_test_split(
            known, test_size=fraction, stratify=y[known], random_state=seed
        )
    except ValueError:  # a class with one sample, or more classes than the test part can hold
        train, test = train_test_split(known, test_size=fraction, random_state=seed)
    return torch.from_numpy(np.sort(train)), torch.from_numpy(np.sort(test))


def probe_outputs(
    source: ProbeSource, eval_out: Outputs, run: Callable[[Dataset], Outputs]
) -> tuple[Outputs, Outputs]:
    """(memory, queries) outputs for ``source``; ``run`` extracts a dataset's outputs."""
    if source.holdout:
        memory_idx, query_idx = holdout_indices(eval_out.labels)
        return eval_out.subset(memory_idx), eval_out.subset(query_idx)
    memory = eval_out if source.memory is None else run(source.memory)
    queries = eval_out if source.queries is None else run(source.queries)
    return memory, queries


# ----------------------------------------------------------------------------- protocols


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
    by_k = _scored(authors.knn_authors, memory, memory_labels, queries, query_labels, ks)
    return {
        "protocol": "authors",
        "reference": authors.REFERENCES["knn"],
        "k": list(ks),
        "temperature": authors.KNN_TEMPERATURE,
        "top1_by_k": {str(k): top1 for k, top1 in by_k.items()},
    }


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
    log(f"running the model over {spec} ({split}, {len(ds)} images) on {run.device}")
    out = extract_ds(ds)
    feats = functools.partial(
        features_of, kind=opts.features, aug=run.cfg.augment, channels=run.channels
    )
    result: dict = {
        "checkpoint": str(run.path),
        "data": {"path": spec, "split": split, "samples": len(out)},
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
            probe = _scored(
                linear_probe, feats(memory), memory.labels, feats(queries), queries.labels
            )
            result["linear"] = {**probe, "protocol": "ours", **where}
        if opts.linear and theirs:
            record = linear_record_authors(run, opts, source, ds, out, memory, queries, log)
            result["linear_authors"] = {**record, **where}
        if opts.kmeans and theirs:
            scores = _scored(
                authors.kmeans_authors, feats(memory), feats(queries), queries.labels, k
            )
            result["kmeans_authors"] = {
                "protocol": "authors",
                "reference": authors.REFERENCES["kmeans"],
                **scores,
                **where,
            }
    if opts.kmeans and ours:
        scores = _scored(kmeans_metrics, feats(out), out.labels, k)
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
    scores = _scored(
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


def _scored(protocol, *args, **kwargs):
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
        scores = _scored(authors.cluster_scores_authors, out.labels, p.argmax(1), fine_to_super)
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


# ----------------------------------------------------------------------------- the gallery


def write_run_report(
    run: LoadedRun,
    out_dir: str | os.PathLike,
    *,
    data: str | None = None,
    split: str | None = None,
    head: int | None = None,
    per_class: int = 16,
    max_classes: int | None = None,
    batch_size: int = 256,
    workers: int | None = None,
    map_points: int = 3000,
    map_seed: int = 0,
) -> Path:
    """Run the model over the data and write the cluster gallery of one head (report.py),
    with every head's scores and a map of ``map_points`` embeddings (0: no map)."""
    from selfclassifier.report import write_report

    heads = run.model.num_classes
    head = run.default_head if head is None else head
    if not 0 <= head < len(heads):
        raise ConfigError(f"--head {head}: the model has heads 0..{len(heads) - 1}")
    spec, split = data_spec(run.cfg, data, split)
    ds = open_data(spec, split, run.mode, recorded=data is None)
    workers = run.cfg.data.workers if workers is None else workers
    out = run.extract(ds, batch_size, workers)
    preds, confidences = out.predictions(head)
    labelled = bool((out.labels >= 0).any())
    if labelled:
        scores = head_scores(out)
    else:
        argmax = [p.argmax(1).numpy() for p in out.probs]
        free = label_free_scores(out.embeddings, argmax, heads)
        scores = [{"classes": c, **f} for c, f in zip(heads, free, strict=True)]
    metrics = dict(scores[head]) if labelled else None
    run.mark_selection(scores)
    return write_report(
        out_dir,
        _gallery_images(ds),
        preds.numpy(),
        confidences.clamp(0, 1).numpy(),
        heads[head],
        labels=out.labels.numpy() if labelled else None,
        class_names=getattr(ds, "classes", None),
        metrics=metrics,
        title=f"Self-Classifier classes: {run.path} on {spec} ({split})",
        per_class=per_class,
        max_classes=max_classes,
        head_name=f"head {head} ({heads[head]} classes)",
        embeddings=out.embeddings.numpy(),
        map_points=map_points,
        map_seed=map_seed,
        heads=scores,
        head_index=head,
    )


def _gallery_images(ds: Dataset):
    """What report.write_report shows: the original files, or the in-memory pixels."""
    if isinstance(ds, ImageFileDataset):
        return ds.paths
    if isinstance(ds, TensorImageDataset):
        return ds.images.permute(0, 2, 3, 1).numpy()  # (N, H, W, C) uint8
    raise DataError(f"cannot show images of a {type(ds).__name__}")
