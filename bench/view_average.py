"""Does averaging a head's predictions over several views of each image score higher?

    python bench/view_average.py runs/fm-s0/checkpoint.pt --data fashion_mnist --split train
    python bench/view_average.py CKPT --data DIR --sizes 16 20 24 --format json

Runs a trained model over a labelled dataset (labels read only to score) at every input side in
``--sizes`` (the run's deterministic evaluation transform at that side), each as it is and
mirrored left to right, and scores the selected head (or ``--head``): every single view, then
the class probabilities averaged over the image and its mirror, over the sizes, and over both.
An average that beats the single view the run is scored at would be a reason for test-time
augmentation in ``evaluate`` and ``predict``; docs/RESULTS.md (Fashion-MNIST, tenth round) has
the measurement.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys


def parse(argv: list[str] | None) -> argparse.Namespace:
    from selfclassifier.inference import scored_run_parser

    p = scored_run_parser(__doc__.splitlines()[0], "head to score")
    p.add_argument("--sizes", type=int, nargs="+", help="input sides (default: the run's)")
    return p.parse_args(argv)


def view_probabilities(run, ds, head: int, size: int, batch_size: int):
    """(probabilities (N, C) of ``head`` on the images, on their left-right mirrors, labels
    (N,)) at input side ``size``: one pass over the data for both."""
    import torch

    from selfclassifier.inference import eval_loader, match_channels

    aug = dataclasses.replace(run.cfg.augment, eval_size=size)
    probs, mirrored, labels = [], [], []
    loader = eval_loader(match_channels(ds, run.channels), aug, run.channels, batch_size)
    for images, target in loader:
        probs.append(run.batch_probabilities(images)[head])
        mirrored.append(run.batch_probabilities(images.flip(-1))[head])
        labels.append(torch.as_tensor(target).long())
    return torch.cat(probs), torch.cat(mirrored), torch.cat(labels)


def score_views(views: dict[tuple[int, bool], object], labels) -> list[dict]:
    """Scores of each view alone and of the averaged probabilities of view groups."""
    from selfclassifier.evaluate.metrics import cluster_metrics

    sizes = sorted({s for s, _ in views})
    groups = [(f"{s} px{' mirrored' if m else ''}", [(s, m)]) for s, m in views]
    groups += [(f"{s} px + mirror", [(s, False), (s, True)]) for s in sizes]
    if len(sizes) > 1:
        groups.append(("all sizes", [(s, False) for s in sizes]))
        groups.append(("all sizes + mirrors", list(views)))
    keep = (labels >= 0).numpy()
    rows = []
    for name, members in groups:
        mean = sum(views[k] for k in members) / len(members)
        preds = mean.argmax(1).numpy()
        rows.append({"views": name, **cluster_metrics(labels.numpy()[keep], preds[keep])})
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from selfclassifier.inference import open_scored_args
    from selfclassifier.views.recipe import eval_side

    opened = open_scored_args(args)
    if opened is None:
        return 2
    run, ds, head = opened
    bad = [s for s in args.sizes or [] if s < 8]
    if bad:
        message = f"--sizes {bad[0]} is too small: give input sides of 8 px or more"
        print(f"error: {message}", file=sys.stderr)
        return 2
    sizes = args.sizes or [eval_side(run.cfg.augment)]
    views, labels = {}, None
    for size in sizes:
        views[(size, False)], views[(size, True)], labels = view_probabilities(
            run, ds, head, size, args.batch_size
        )
    if not (labels >= 0).any():
        print(f"error: dataset {args.data!r} has no labels; give a labelled one", file=sys.stderr)
        return 2
    rows = score_views(views, labels)
    if args.format == "json":
        print(json.dumps({"head": head, "rows": rows}, indent=1))
        return 0
    print(f"head {head} ({run.num_classes[head]} classes)\n")
    print("| views | NMI | ACC | ARI |\n| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['views']} | {r['nmi']:.4f} | {r['acc']:.4f} | {r['ari']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
