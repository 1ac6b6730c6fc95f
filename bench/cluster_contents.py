"""What each discovered class holds: true labels against clusters, and how bright they are.

    python bench/cluster_contents.py runs/fm-s0/checkpoint.pt --data fashion_mnist --split all
    python bench/cluster_contents.py RUN/checkpoint.pt --data DIR --head 2 --format json

Runs a trained model over a labelled dataset (labels read only to score) and prints, for the
selected head (or ``--head``): the contingency matrix with clusters in the order of the best
one-to-one match (the Hungarian matching behind ACC), then, for every label, the clusters that
hold at least ``--min-share`` of its images with their mean pixel intensity (0 black to 1
white, before normalisation). When images of one label split into clusters that differ mainly
in mean intensity, the network grouped them by brightness rather than by kind: the
Fashion-MNIST analysis in docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def parse(argv: list[str] | None) -> argparse.Namespace:
    from selfclassifier.inference import scored_run_parser

    p = scored_run_parser(__doc__.splitlines()[0], "head to read")
    p.add_argument("--min-share", type=float, default=0.05)
    return p.parse_args(argv)


def contents(preds: np.ndarray, labels: np.ndarray, brightness: np.ndarray, min_share: float):
    """(matrix labels x clusters in matched order, cluster order, ACC, per-label splits)."""
    from scipy.optimize import linear_sum_assignment

    from selfclassifier.evaluate.metrics import contingency

    counts = contingency(labels, preds)
    rows, cols = linear_sum_assignment(-counts)
    acc = float(counts[rows, cols].sum() / counts.sum())
    matched = [int(c) for _, c in sorted(zip(rows, cols, strict=True))]
    order = matched + [c for c in range(counts.shape[1]) if c not in matched]
    counts = counts[:, order]
    label_ids = np.unique(labels)
    cluster_ids = np.unique(preds)[order]
    splits = []
    for i, lab in enumerate(label_ids):
        mine = labels == lab
        for j in np.flatnonzero((counts[i] > 0) & (counts[i] >= min_share * mine.sum())):
            inside = mine & (preds == cluster_ids[j])
            splits.append(
                {
                    "label": int(lab),
                    "cluster": int(cluster_ids[j]),
                    "column": int(j),
                    "images": int(inside.sum()),
                    "mean_intensity": round(float(brightness[inside].mean()), 4),
                }
            )
    return counts, [int(c) for c in cluster_ids], acc, splits


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    import torch

    from selfclassifier.inference import open_scored_args
    from selfclassifier.views.recipe import normalization

    opened = open_scored_args(args)
    if opened is None:
        return 2
    run, ds, head = opened
    out = run.extract(ds, batch_size=args.batch_size, keep_pixels=True)
    labels = out.labels.numpy()
    if not (labels >= 0).any():
        print(f"error: dataset {args.data!r} has no labels; give a labelled one", file=sys.stderr)
        return 2
    mean, std = normalization(run.cfg.augment, run.channels)
    pixels = out.pixels.view(len(labels), run.channels, -1)
    raw = pixels * torch.tensor(std).view(1, -1, 1) + torch.tensor(mean).view(1, -1, 1)
    brightness = raw.mean((1, 2)).numpy()
    preds = out.probs[head].argmax(1).numpy()
    keep = labels >= 0
    counts, clusters, acc, splits = contents(
        preds[keep], labels[keep], brightness[keep], args.min_share
    )
    if args.format == "json":
        result = {"head": head, "acc": acc, "clusters": clusters, "counts": counts.tolist()}
        print(json.dumps(result | {"splits": splits}, indent=1))
        return 0
    print(f"head {head} ({run.num_classes[head]} classes), ACC {acc:.4f}\n")
    print("| label | " + " | ".join(f"c{c}" for c in clusters) + " |")
    print("| --- " * (len(clusters) + 1) + "|")
    for lab, row in zip(np.unique(labels[keep]), counts, strict=True):
        print(f"| {lab} | " + " | ".join(str(int(x)) for x in row) + " |")
    print("\n| label | cluster | images | mean intensity |\n| --- | --- | --- | --- |")
    for s in splits:
        print(f"| {s['label']} | c{s['cluster']} | {s['images']} | {s['mean_intensity']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
