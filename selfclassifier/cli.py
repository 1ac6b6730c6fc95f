"""Command line: ``selfclassifier train|evaluate|predict|report|...``.

Every user-facing failure is one line on stderr starting with ``error:`` and a non-zero exit
code, never a traceback. Exit codes (docs/RELIABILITY.md):

* 0 -- finished;
* 1 -- the run failed while running (non-finite loss, checkpoint write failed, disk full);
* 2 -- bad input or configuration, found before any training step;
* 128 + signal (130 SIGINT, 143 SIGTERM) -- stopped by a signal after saving a checkpoint
  (or, on a second signal, at once with the last checkpoint intact); rerun to resume.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import warnings

from selfclassifier import cli_interop
from selfclassifier.config import (
    ConfigError,
    heads_for_classes,
    list_presets,
    load_config,
    parse_set,
)

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_SIGNAL_BASE = 128


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one ``error:`` line (exit 2) like every other error."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see '{self.prog} --help')\n")


class CLIError(Exception):
    """A user mistake the CLI reports in one line (exit code 2)."""


def _train_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a Self-Classifier (resumes if OUT has a checkpoint)",
        description="Train on a dataset; at the end write OUT/eval.json when labels are known.",
    )
    p.add_argument(
        "--config",
        default="digits",
        help=f"preset name ({', '.join(list_presets())}) or a YAML file",
    )
    p.add_argument("--data", help="'digits', 'fashion_mnist', an IDX folder or an image folder")
    p.add_argument("--split", choices=["train", "test", "all"], help="data split to train on")
    p.add_argument("--out", help="output directory (default: runs/<preset name>)")
    p.add_argument("--epochs", type=int)
    p.add_argument(
        "--classes",
        type=int,
        metavar="K",
        help="about how many classes to find: sets model.heads to 6 candidate heads of K "
        "classes (the lowest-loss one is selected after training, without labels) plus "
        "over-clustering heads of 2K and 4K",
    )
    p.add_argument("--batch-size", type=int, help="global batch size")
    p.add_argument("--lr", type=float, help="learning rate per 256 images (scaled linearly)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--seed", type=int)
    p.add_argument("--workers", type=int, help="data loader workers")
    p.add_argument("--eval-every", type=int, help="log kNN/NMI/ACC every N epochs")
    p.add_argument("--checkpoint-every-steps", type=int)
    p.add_argument("--deterministic", action="store_true", default=None)
    p.add_argument(
        "--strict",
        action="store_true",
        default=None,
        help="fail before training if any image is unreadable",
    )
    p.add_argument("--skip-nonfinite", action="store_true", default=None)
    p.add_argument(
        "--tensorboard",
        action="store_true",
        default=None,
        help="also write the metrics as TensorBoard curves to OUT/tensorboard (needs "
        "pip install 'selfclassifier[tensorboard]')",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="CHECKPOINT",
        help="resume (automatic when OUT/checkpoint.pt exists); with a path, start from "
        "that checkpoint when OUT has none yet (OUT's own checkpoint, newer, always wins)",
    )
    p.add_argument(
        "--init-backbone",
        metavar="PATH",
        help="start the backbone from local weights (torchvision or timm state dict, or a "
        "selfclassifier checkpoint)",
    )
    p.add_argument(
        "--freeze-backbone",
        action="store_true",
        default=None,
        help="train only projection + heads on backbone features cached in OUT/features.pt",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override any config key, e.g. --set model.heads=[10,20]",
    )
    p.set_defaults(func=cmd_train)


def _cli_overrides(args) -> dict:
    flags = {
        ("data", "path"): args.data,
        ("data", "split"): args.split,
        ("data", "workers"): args.workers,
        ("data", "strict"): args.strict,
        ("train", "epochs"): args.epochs,
        ("train", "batch_size"): args.batch_size,
        ("optim", "lr"): args.lr,
        ("train", "device"): args.device,
        ("train", "seed"): args.seed,
        ("train", "eval_every"): args.eval_every,
        ("train", "checkpoint_every_steps"): args.checkpoint_every_steps,
        ("train", "deterministic"): args.deterministic,
        ("train", "skip_nonfinite"): args.skip_nonfinite,
        ("train", "tensorboard"): args.tensorboard,
        ("model", "init_backbone"): args.init_backbone,
        ("model", "freeze_backbone"): args.freeze_backbone,
    }
    out: dict = {}
    for (section, key), value in flags.items():
        if value is not None:
            out.setdefault(section, {})[key] = value
    assignments = parse_set(args.set)
    if args.classes is not None:
        if "heads" in assignments.get("model", {}):
            raise CLIError("--classes K sets model.heads; give --classes or --set model.heads")
        out.setdefault("model", {})["heads"] = heads_for_classes(args.classes)
    for section, values in assignments.items():
        out.setdefault(section, {}).update(values)
    return out


def cmd_train(args) -> int:
    from pathlib import Path

    from selfclassifier.train import fit, format_table

    cfg = load_config(args.config, _cli_overrides(args))
    out = Path(args.out or Path("runs") / Path(args.config).stem)
    resume_from = None
    if args.resume not in (None, "auto"):
        # Read in place rather than copied into OUT: under torchrun every process runs this.
        resume_from = Path(args.resume)
        if not resume_from.is_file() and not (out / "checkpoint.pt").is_file():
            raise CLIError(f"--resume: checkpoint '{resume_from}' not found")
    elif args.resume == "auto" and not (out / "checkpoint.pt").is_file():
        raise CLIError(f"--resume: no checkpoint in '{out}'; drop --resume to start fresh")
    result = fit(cfg, out, log=lambda msg: print(msg, file=sys.stderr), resume_from=resume_from)
    if result.get("heads"):
        print(format_table(result["heads"]))
        print(f"wrote {out / 'eval.json'}")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _inference_flags(p, batch_default: int = 256) -> None:
    p.add_argument("--batch-size", type=_positive_int, default=batch_default)
    p.add_argument("--device", default="auto", help="auto (cuda if available) | cpu | cuda[:N]")
    p.add_argument(
        "--workers", type=int, help="loader workers for image files (default: the run's config)"
    )


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

    from selfclassifier.evaluation import (
        EvalOptions,
        PixelRun,
        evaluate_run,
        format_results,
        load_run,
    )

    if args.checkpoint is not None:
        run = load_run(args.checkpoint, args.device)
    elif args.features == "pixels" and args.data:
        if args.superclasses:
            raise CLIError("evaluate: --superclasses scores a model's heads; give a CHECKPOINT")
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
    from selfclassifier.evaluation import load_run
    from selfclassifier.predict import predict_files, printable, write_csv

    run = load_run(args.checkpoint, args.device)
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
    from selfclassifier.evaluation import load_run, write_run_report

    run = load_run(args.checkpoint, args.device)
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


def _bench_parser(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmarks printing JSON: input pipeline, training step, test images",
        description="Benchmarks; each prints one JSON document on stdout.",
    )
    bench = p.add_subparsers(dest="bench", required=True)

    d = bench.add_parser("data", help="images/s of the input pipeline (no model)")
    d.add_argument("--images", required=True, help="a folder of images (any nesting)")
    d.add_argument(
        "--pipeline",
        default="classic,fast",
        help="classic, fast, or both as 'classic,fast' (measured in one run; adds the ratio)",
    )
    d.add_argument("--workers", type=int, default=2, help="loader worker processes")
    d.add_argument("--recipe", default="imagenet", help="preset whose augment recipe to run")
    d.add_argument("--batch-size", type=int, default=32)
    d.add_argument("--batches", type=int, default=16, help="timed batches (after 2 warm-up)")
    d.add_argument("--device", default="auto", help="where the fast path's batched stage runs")
    d.set_defaults(func=cmd_bench_data)

    t = bench.add_parser("train", help="end-to-end training throughput, memory, data wait")
    t.add_argument("--config", default="imagenet", help="preset name or YAML file")
    t.add_argument("--steps", type=int, default=30, help="timed steps (after --warmup)")
    t.add_argument("--warmup", type=int, default=5)
    t.add_argument("--batch-size", type=int, default=256)
    src = t.add_mutually_exclusive_group()
    src.add_argument("--images", help="a folder of images to load and augment")
    src.add_argument("--synthetic", action="store_true", help="random in-memory images")
    t.add_argument("--workers", type=int, help="loader worker processes")
    t.add_argument("--device", default="auto")
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    t.set_defaults(func=cmd_bench_train)

    m = bench.add_parser("make-images", help="write realistic test JPEGs (~500x375, ~60 KB)")
    m.add_argument("dir")
    m.add_argument("--n", type=int, default=256)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--workers", type=int, default=1, help="processes writing images")
    m.set_defaults(func=cmd_bench_make_images)


def _print_json(obj) -> None:
    import json

    print(json.dumps(obj, indent=2))


def cmd_bench_data(args) -> int:
    from selfclassifier.bench import bench_data

    pipelines = [p.strip() for p in args.pipeline.split(",") if p.strip()]
    for p in pipelines:
        if p not in ("classic", "fast"):
            raise CLIError(f"--pipeline: unknown pipeline '{p}'; use classic, fast or both")
    runs = [
        bench_data(
            args.images,
            p,
            args.workers,
            args.recipe,
            args.batch_size,
            args.batches,
            device=args.device,
        )
        for p in pipelines
    ]
    if len(runs) == 1:
        _print_json(runs[0])
        return 0
    rate = {r["pipeline"]: r["images_per_s"] for r in runs}
    result = {"runs": runs}
    if {"classic", "fast"} <= rate.keys():
        result["fast_over_classic"] = round(rate["fast"] / rate["classic"], 2)
    _print_json(result)
    return 0


def cmd_bench_train(args) -> int:
    from selfclassifier.bench import bench_train

    _print_json(
        bench_train(
            args.config,
            args.steps,
            args.batch_size,
            images=args.images,
            synthetic=args.synthetic,
            warmup=args.warmup,
            workers=args.workers,
            device=args.device,
            overrides=parse_set(args.set),
        )
    )
    return 0


def cmd_bench_make_images(args) -> int:
    from selfclassifier.bench import make_images

    if args.n < 1:
        raise CLIError(f"--n must be >= 1, got {args.n}")
    _print_json(make_images(args.dir, args.n, args.seed, workers=max(1, args.workers)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="selfclassifier",
        description="Self-Classifier: discover classes and learn representations from "
        "unlabelled images in one end-to-end stage.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _train_parser(sub)
    _evaluate_parser(sub)
    _predict_parser(sub)
    _report_parser(sub)
    cli_interop.add_parsers(sub)
    _bench_parser(sub)
    return parser


def _known_errors() -> tuple[type[BaseException], ...]:
    from selfclassifier.backbones import UnknownBackbone
    from selfclassifier.checkpoint import CheckpointError
    from selfclassifier.data import DataError
    from selfclassifier.export import ExportError

    return (CLIError, ConfigError, DataError, CheckpointError, UnknownBackbone, ExportError)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Notices about the user's data (skipped images) as one 'warning:' line, not a code trace."""
    from selfclassifier.data import UnreadableImageWarning

    if issubclass(category, UnreadableImageWarning):
        print(f"warning: {_one_line(message)}", file=sys.stderr)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already printed as one line
        return e.code if isinstance(e.code, int) else EXIT_BAD_INPUT
    warnings.showwarning = _show_warning
    from selfclassifier.checkpoint import CheckpointWriteError
    from selfclassifier.train import Interrupted, TrainingError

    try:
        return args.func(args)
    except (TrainingError, CheckpointWriteError) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return EXIT_FAILED
    except _known_errors() as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Interrupted as e:
        print(f"stopped: {_one_line(e)}", file=sys.stderr)
        return EXIT_SIGNAL_BASE + e.signum
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        print(
            f"stopped at once by {signal.Signals(signum).name}: not saved; the last "
            "checkpoint written is intact, run the same command to resume from it",
            file=sys.stderr,
        )
        return EXIT_SIGNAL_BASE + signum
    except OSError as e:  # the disk or the file system, not the user's input
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return EXIT_FAILED


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
