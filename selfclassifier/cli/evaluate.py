"""``selfclassifier evaluate``, ``predict`` and ``report``: the commands that load a trained run."""

from __future__ import annotations

import os
import sys

from selfclassifier.cli.common import _inference_flags, _load_for_inference, _positive_int
from selfclassifier.errors import CLIError


def _evaluate_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a checkpoint: heads, kNN, linear probe, k-means, superclasses",
        description="Score each head against the labels (NMI, AMI, ARI, ACC) and, on request, "
        "kNN, a linear probe and k-means on frozen features. Without --data: the data the "
        "checkpoint was trained on. Without --train-data, kNN and the linear probe use the "
        "dataset's train split as memory and its test split as queries (digits: the fixed "
        "1347/450 split), or a fixed 75/25 hold-out (seed 0) of a folder without splits.",
    )
    p.add_argument(
        "checkpoint",
        metavar="CHECKPOINT",
        nargs="?",
        help="a trained checkpoint; omit it with --features pixels --data D for the raw-pixel "
        "baselines at the data's native resolution",
    )
    p.add_argument("--data", help="evaluation data (default: the checkpoint's training data)")
    p.add_argument(
        "--split",
        choices=["train", "test", "all"],
        help="split of the evaluation data (default: the recorded one, or 'all' with --data)",
    )
    p.add_argument("--train-data", help="labelled data for the kNN memory / linear probe")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--knn", action="store_true", help="weighted kNN top-1 (k=20, T=0.07)")
    p.add_argument("--k", type=_positive_int, default=20, help="neighbours for --knn")
    p.add_argument("--linear", action="store_true", help="linear probe on frozen features")
    p.add_argument("--kmeans", action="store_true", help="k-means baseline, k = number of labels")
    p.add_argument(
        "--features",
        choices=["backbone", "embedding", "pixels"],
        default="backbone",
        help="what kNN, the linear probe and k-means see (pixels: the raw input, a baseline)",
    )
    p.add_argument(
        "--superclasses",
        metavar="MAPPING",
        help="file of 'fine_label_name<TAB>superclass_name' lines: score heads on superclasses",
    )
    p.add_argument(
        "--protocol",
        choices=["ours", "authors", "both"],
        default="ours",
        help="whose recipe the protocols follow: ours (fast, the default), the authors' "
        "(elad-amrani/self-classifier's *_eval.py: kNN at T=0.1 for k=10/20/100/200, a "
        "100-epoch SGD+LARC linear probe on augmented crops, k-means fit on the memory, heads "
        "and superclasses matched at the fine level; written as *_authors), or both. Every "
        "record in --json names its protocol",
    )
    p.add_argument(
        "--linear-epochs",
        type=_positive_int,
        default=100,
        help="epochs of the authors' linear probe (theirs: 100); ours needs none",
    )
    p.add_argument(
        "--linear-batch-size",
        type=_positive_int,
        default=4096,
        help="batch of the authors' linear probe (theirs: 1024 per node on 4 nodes = 4096)",
    )
    _inference_flags(p)
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    import json

    from selfclassifier.evaluate.command import EvalOptions, evaluate_run, format_results
    from selfclassifier.evaluate.probes import PixelRun

    if args.checkpoint is not None:
        run = _load_for_inference(args)
    elif args.features == "pixels" and args.data:
        if args.superclasses:
            raise CLIError("evaluate: --superclasses scores a model's heads; give a CHECKPOINT")
        if args.eval_size is not None:
            raise CLIError("evaluate: --eval-size sets a model's input side; give a CHECKPOINT")
        run = PixelRun.for_data(args.data, args.split or "all")
    else:
        raise CLIError(
            "evaluate: give a CHECKPOINT, or --features pixels --data D for the raw-pixel "
            "baselines without a model"
        )
    opts = EvalOptions(
        data=args.data,
        split=args.split,
        train_data=args.train_data,
        knn=args.knn,
        linear=args.linear,
        kmeans=args.kmeans,
        superclasses=args.superclasses,
        features=args.features,
        k=args.k,
        batch_size=args.batch_size,
        workers=args.workers,
        protocol=args.protocol,
        linear_epochs=args.linear_epochs,
        linear_batch_size=args.linear_batch_size,
    )
    result = evaluate_run(run, opts, log=lambda msg: print(msg, file=sys.stderr))
    print(format_results(result))
    if args.json:
        try:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(result, f, indent=2)
                f.write("\n")
        except OSError as e:
            raise CLIError(f"--json: cannot write '{args.json}' ({e.strerror or e})") from None
        print(f"wrote {args.json}")
    return 0


def _predict_parser(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="predict the class of images (files and folders) into a CSV",
        description="Write one CSV row per image and head: path,head,class,confidence. Folders "
        "are searched recursively. Unreadable files are listed on stderr and skipped.",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("paths", metavar="PATH", nargs="+", help="image files and/or folders")
    p.add_argument("--out", default="preds.csv", help="CSV file to write ('-': stdout)")
    p.add_argument("--head", type=int, help="only this head (0-based; default: all heads)")
    _inference_flags(p)
    p.set_defaults(func=cmd_predict)


def cmd_predict(args) -> int:
    from selfclassifier.predict import predict_files, printable, write_csv

    run = _load_for_inference(args)
    heads = len(run.model.heads)
    if args.head is not None and not 0 <= args.head < heads:
        raise CLIError(f"--head {args.head}: the model has heads 0..{heads - 1}")
    workers = run.cfg.data.workers if args.workers is None else args.workers
    preds = predict_files(run, args.paths, args.batch_size, workers)
    if preds.unreadable:
        print(f"warning: {len(preds.unreadable)} unreadable file(s) skipped:", file=sys.stderr)
        for path, reason in preds.unreadable:
            print(f"  {printable(path)}: {reason}", file=sys.stderr)
    if not preds.paths:
        raise CLIError(f"none of the {len(preds.unreadable)} input file(s) could be read")
    rows = preds.rows(None if args.head is None else [args.head])
    if args.out == "-":
        sys.stdout.reconfigure(errors="surrogateescape")
        write_csv(rows, sys.stdout)
        return 0
    try:
        with open(args.out, "w", encoding="utf-8", errors="surrogateescape", newline="") as f:
            count = write_csv(rows, f)
    except OSError as e:
        raise CLIError(f"--out: cannot write '{args.out}' ({e.strerror or e})") from None
    print(f"wrote {count} rows for {len(preds.paths)} images to {args.out}")
    return 0


def _report_parser(sub) -> None:
    p = sub.add_parser(
        "report",
        help="write an HTML gallery of the classes one head found",
        description="Write DIR/index.html (and DIR/grid.png): each predicted class of a head "
        "with its size and most confident images, classes by confidence, a bar chart of class "
        "sizes, and the metrics when labels are known.",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("--data", help="images to show (default: the checkpoint's training data)")
    p.add_argument("--split", choices=["train", "test", "all"])
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--head",
        type=int,
        help="head to show (default: head 0, or the selected one among candidate heads of its "
        "size)",
    )
    p.add_argument("--per-class", type=_positive_int, default=16, help="images per class")
    p.add_argument("--max-classes", type=_positive_int, help="sections for this many classes")
    p.add_argument(
        "--map-points",
        type=int,
        default=3000,
        metavar="N",
        help="images on the embedding map, DIR/map.png (t-SNE, or UMAP when umap-learn is "
        "installed; a random subset when there are more; 0: no map)",
    )
    p.add_argument("--map-seed", type=int, default=0, help="seed of the map's subset and layout")
    _inference_flags(p)
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from selfclassifier.report.run import write_run_report

    run = _load_for_inference(args)
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        raise CLIError(f"--out: cannot create '{args.out}' ({e.strerror or e})") from None
    index = write_run_report(
        run,
        args.out,
        data=args.data,
        split=args.split,
        head=args.head,
        per_class=args.per_class,
        max_classes=args.max_classes,
        batch_size=args.batch_size,
        workers=args.workers,
        map_points=max(args.map_points, 0),
        map_seed=args.map_seed,
    )
    print(f"wrote {index}")
    return 0


def add_parsers(sub) -> None:
    _evaluate_parser(sub)
    _predict_parser(sub)
    _report_parser(sub)
