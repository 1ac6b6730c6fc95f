"""``selfclassifier report``: run a loaded model over its data and write the cluster gallery
(:func:`selfclassifier.report.gallery.write_report`) of one head."""

from __future__ import annotations

import os
from pathlib import Path

from torch.utils.data import Dataset

from selfclassifier.config import ConfigError
from selfclassifier.data.arrays import TensorImageDataset
from selfclassifier.data.decode import DataError
from selfclassifier.data.folders import ImageFileDataset
from selfclassifier.evaluate.metrics import label_free_scores
from selfclassifier.evaluate.probes import data_spec, open_data
from selfclassifier.evaluate.scores import head_scores
from selfclassifier.inference import LoadedRun
from selfclassifier.report.gallery import write_report

__all__ = ["write_run_report"]


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
    """Run the model over the data and write the cluster gallery of one head (gallery.py),
    with every head's scores and a map of ``map_points`` embeddings (0: no map)."""
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
