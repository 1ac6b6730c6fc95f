"""``selfclassifier convert`` and ``selfclassifier export``: moving models in and out.

Kept apart from cli.py so the sub-commands' parsers and handlers live together; cli.py only
calls :func:`add_parsers`.
"""

from __future__ import annotations

import sys
from pathlib import Path


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert an official Self-Classifier checkpoint into a selfclassifier one",
        description="Read the authors' released checkpoint (tensors only: no code from the "
        "file runs), infer the architecture from its tensors, and write our checkpoint.",
    )
    p.add_argument("source", help="official checkpoint, e.g. model_800ep.pth.tar")
    p.add_argument("--out", required=True, help="where to write the converted checkpoint")
    p.add_argument(
        "--activation",
        default="leaky_relu",
        choices=["leaky_relu", "relu"],
        help="MLP activation, which the tensors cannot tell: relu for runs trained with "
        "--no-leaky (default leaky_relu, the authors' default)",
    )
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser(
        "export",
        help="export a checkpoint: torchvision backbone weights, ONNX or TorchScript",
        description="torchvision: the backbone as a torchvision state dict; onnx / "
        "torchscript: normalised images -> per-head probabilities and the embedding.",
    )
    p.add_argument("checkpoint", help="a selfclassifier checkpoint (train or convert output)")
    p.add_argument(
        "--format", required=True, choices=["torchvision", "onnx", "torchscript"], dest="fmt"
    )
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--opset", type=int, help="ONNX opset version (default: the exporter's)")
    p.set_defaults(func=cmd_export)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr)


def cmd_convert(args) -> int:
    from selfclassifier.interop.official import convert_official
    from selfclassifier.storage import save_atomic

    ckpt, notes = convert_official(args.source, activation=args.activation)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(ckpt, out)
    for note in notes:
        _log(note)
    print(f"wrote {out}")
    return 0


def cmd_export(args) -> int:
    import torch

    from selfclassifier.inference import load_run
    from selfclassifier.interop.export import (
        export_onnx,
        export_torchscript,
        torchvision_state_dict,
    )
    from selfclassifier.views import eval_side

    run = load_run(args.checkpoint, "cpu")
    model, cfg, channels = run.model, run.cfg, run.channels
    size = eval_side(cfg.augment)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.fmt == "torchvision":
        state, arch, notes = torchvision_state_dict(model, cfg)
        torch.save(state, out)
        for note in notes:
            _log(f"note: {note}")
        head = "heads" if arch.startswith("vit") else "fc"
        print(f"wrote {out}: load with m = torchvision.models.{arch}(); m.{head} = nn.Identity(); "
              f"m.load_state_dict(torch.load('{out}', weights_only=True))")  # fmt: skip
        return 0
    if args.fmt == "onnx":
        names = export_onnx(model, cfg, out, channels, size, args.opset)
    else:
        names = export_torchscript(model, cfg, out, channels, size)
    print(
        f"wrote {out}: input 'images' (batch, {channels}, {size}, {size}) normalised; "
        f"outputs {', '.join(names)}"
    )
    return 0
