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
import signal
import sys

from selfclassifier.config import ConfigError, list_presets, load_config, parse_set

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
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="CHECKPOINT",
        help="resume (automatic when OUT/checkpoint.pt exists); with a path, start from "
        "that checkpoint when OUT has none yet (OUT's own checkpoint, newer, always wins)",
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
    }
    out: dict = {}
    for (section, key), value in flags.items():
        if value is not None:
            out.setdefault(section, {})[key] = value
    for section, values in parse_set(args.set).items():
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="selfclassifier",
        description="Self-Classifier: discover classes and learn representations from "
        "unlabelled images in one end-to-end stage.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _train_parser(sub)
    return parser


def _known_errors() -> tuple[type[BaseException], ...]:
    from selfclassifier.backbones import UnknownBackbone
    from selfclassifier.checkpoint import CheckpointError
    from selfclassifier.data import DataError

    return (CLIError, ConfigError, DataError, CheckpointError, UnknownBackbone)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already printed as one line
        return e.code if isinstance(e.code, int) else EXIT_BAD_INPUT
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
