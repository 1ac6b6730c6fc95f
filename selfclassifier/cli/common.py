"""Flag types and helpers the command modules share."""

from __future__ import annotations

import argparse


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
    p.add_argument(
        "--eval-size",
        type=_positive_int,
        metavar="PX",
        help="side of the model input (default: the run's augment.eval_size, or its "
        "global_size); a little above the training crops' side can score higher",
    )


def _load_for_inference(args):
    """The checkpoint's :class:`LoadedRun` on ``--device``, at ``--eval-size`` if given."""
    from selfclassifier.inference import load_run

    run = load_run(args.checkpoint, args.device)
    if args.eval_size is not None:
        run.cfg.augment.eval_size = args.eval_size
    return run


def _print_json(obj) -> None:
    import json

    print(json.dumps(obj, indent=2))
