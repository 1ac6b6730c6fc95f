"""Command line: ``selfclassifier train|evaluate|predict|report|convert|export|bench``.

One module per command group (``train.py``; ``evaluate.py`` for evaluate, predict and
report; ``interop.py`` for convert and export; ``bench.py``), each adding its parsers with
``add_parsers(sub)``. Heavy modules are imported inside the commands, so ``--help`` and
usage errors answer at once.

Every user-facing failure is one line on stderr starting with ``error:`` and a non-zero exit
code, never a traceback. Exit codes (docs/RELIABILITY.md), carried by the errors themselves
(:mod:`selfclassifier.errors`):

* 0 -- finished;
* 1 -- the run failed while running (non-finite loss, checkpoint write failed, disk full);
* 2 -- bad input or configuration, found before any training step;
* 128 + signal (130 SIGINT, 143 SIGTERM) -- stopped by a signal after saving a checkpoint
  (or, on a second signal, at once with the last checkpoint intact); rerun to resume.
"""

from __future__ import annotations

import argparse
import signal
import sys
import warnings

from selfclassifier.cli import bench, evaluate, interop, train
from selfclassifier.errors import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_SIGNAL_BASE,
    CLIError,
    SelfClassifierError,
)

__all__ = ["CLIError", "build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one ``error:`` line (exit 2) like every other error."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="selfclassifier",
        description="Self-Classifier: discover classes and learn representations from "
        "unlabelled images in one end-to-end stage.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for group in (train, evaluate, interop, bench):
        group.add_parsers(sub)
    return parser


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
    try:
        return args.func(args)
    except SelfClassifierError as e:
        print(f"{e.prefix}: {_one_line(e)}", file=sys.stderr)
        return e.exit_code
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
