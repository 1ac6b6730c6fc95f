"""``selfclassifier train``: flags, their config overrides, and the run."""

from __future__ import annotations

import sys

from selfclassifier.config import (
    heads_for_classes,
    list_presets,
    load_config,
    parse_set,
    preset_candidates,
    preset_over_clusters,
)
from selfclassifier.errors import CLIError


def add_parsers(sub) -> None:
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
        help="about how many classes to find: sets model.heads to candidate heads of K "
        "classes (as many as the preset repeats its first head, else 6; the lowest-loss one is "
        "selected after training, without labels) plus over-clustering heads of 2K and 4K where "
        "the preset has over-clustering heads",
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
        preset = load_config(args.config).model.heads
        out.setdefault("model", {})["heads"] = heads_for_classes(
            args.classes, preset_candidates(preset), preset_over_clusters(preset)
        )
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
