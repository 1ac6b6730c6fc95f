"""``selfclassifier bench data|train|make-images``: benchmarks that print JSON."""

from __future__ import annotations

from selfclassifier.cli.common import _print_json
from selfclassifier.config import (
    parse_set,
)
from selfclassifier.errors import CLIError


def add_parsers(sub) -> None:
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
    src.add_argument(
        "--images", help="a folder of images, or digits or fashion_mnist, to load and augment"
    )
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
