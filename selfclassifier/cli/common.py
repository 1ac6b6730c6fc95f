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


def _print_json(obj) -> None:
    import json

    print(json.dumps(obj, indent=2))
