"""Which data evaluation sees: the evaluation data, kNN's memory and queries, the features.

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
any label, whichever images it was trained on. Without a checkpoint, :class:`PixelRun` stands
in for the model (the raw-pixel baselines).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from selfclassifier.config import AugmentConfig, Config
from selfclassifier.data.arrays import TensorImageDataset
from selfclassifier.data.decode import DataError
from selfclassifier.data.sources import build_dataset, has_splits, is_labelled
from selfclassifier.inference import LoadedRun, Outputs, match_channels
from selfclassifier.views import normalization

__all__ = [
    "FEATURE_KINDS",
    "HOLDOUT_FRACTION",
    "HOLDOUT_SEED",
    "PixelRun",
    "ProbeSource",
    "data_spec",
    "features_of",
    "holdout_indices",
    "open_data",
    "probe_outputs",
    "probe_source",
    "require_labels",
]

FEATURE_KINDS = ("backbone", "embedding", "pixels")
HOLDOUT_FRACTION = 0.25
HOLDOUT_SEED = 0


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
