"""Convert the Self-Classifier authors' released checkpoints into selfclassifier checkpoints.

Their files (``src/train.py`` of the official code) are ``torch.save`` dicts::

    {"epoch": int, "arch": "resnet50", "state_dict": {...}, "best_loss": float,
     "nn_queue": <pickled NNQueue object>, "optimizer": {...}}

with state-dict keys (``module.`` from DistributedDataParallel)::

    module.backbone.*                     torchvision ResNet (fc = Identity) or DINO-style ViT
    module.mlp_head.mlp.<i>.{weight,bias} Linear (bias) [+ BatchNorm1d] + LeakyReLU, ..., Linear
    module.mlp_head.mlp.{weight,bias}     when the MLP is one Linear (none at all: no MLP)
    module.cls_<k>.weight_g  (C_k, 1)     weight_norm(Linear(dim, C_k, bias=False))
    module.cls_<k>.weight_v  (C_k, dim)

The architecture comes from the tensors alone (ResNet depth from the blocks per stage and
the block type, MLP depth/widths/BN from the Linear and BatchNorm shapes, head sizes), and
only tensors are used: torch's weights-only loader reads the file
(:mod:`selfclassifier.interop.torchfile`), the queue object and any other foreign object
becoming an inert placeholder, so no code from the file runs. Their MLP's first Linear has a
bias followed by BatchNorm; ours has none, so the bias is folded into the BatchNorm running
mean (exact: BN subtracts it again). A learnt ``weight_g`` different from 1 becomes the heads'
fixed ``scale``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn

from selfclassifier.config import Config, validate
from selfclassifier.interop.pretrained import load_backbone_state
from selfclassifier.interop.torchfile import read_tensors, tensor_dict
from selfclassifier.model.backbones import BACKBONES
from selfclassifier.model.build import build_model, load_state
from selfclassifier.storage import FORMAT, CheckpointError

_RESNETS = {
    ("basic", (2, 2, 2, 2)): "resnet18",
    ("basic", (3, 4, 6, 3)): "resnet34",
    ("bottleneck", (3, 4, 6, 3)): "resnet50",
    ("bottleneck", (3, 4, 23, 3)): "resnet101",
    ("bottleneck", (3, 8, 36, 3)): "resnet152",
}
# (embedding width, blocks, patch) -> registry name, for DINO-style ViTs
_VITS = {
    (192, 12, 16): "vit_tiny_patch16",
    (192, 12, 4): "vit_tiny_patch4",
    (384, 12, 16): "vit_small_patch16",
    (768, 12, 16): "vit_b_16",
    (768, 12, 32): "vit_b_32",
    (1024, 24, 16): "vit_l_16",
}


def _strip(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def infer_resnet(backbone: dict[str, torch.Tensor]) -> str:
    """Registry name of a torchvision ResNet state dict (block type and blocks per stage).

    A 3x3 ``conv1`` means the small-image stem (``*_small``).
    """
    blocks = []
    for stage in range(1, 5):
        ids = {int(m.group(1)) for k in backbone if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        blocks.append(max(ids) + 1 if ids else 0)
    kind = "bottleneck" if "layer1.0.conv3.weight" in backbone else "basic"
    name = _RESNETS.get((kind, tuple(blocks)))
    if name is None:
        raise CheckpointError(
            f"backbone is a ResNet with {kind} blocks {blocks} per stage, which matches no "
            "torchvision ResNet-18/34/50/101"
        )
    if backbone["conv1.weight"].shape[-1] == 3:
        name += "_small"
    if name not in BACKBONES:
        raise CheckpointError(f"backbone {name} is not in the backbone registry")
    return name


def _infer_vit(backbone: dict[str, torch.Tensor]) -> tuple[str, int]:
    width = backbone["cls_token"].shape[-1]
    depth = 1 + max(int(m.group(1)) for k in backbone if (m := re.match(r"blocks\.(\d+)\.", k)))
    patch = backbone["patch_embed.proj.weight"].shape[-1]
    name = _VITS.get((width, depth, patch))
    if name is None:
        raise CheckpointError(
            f"backbone is a ViT (width {width}, {depth} blocks, patch {patch}) with no "
            f"counterpart in the registry ({', '.join(sorted(_VITS.values()))})"
        )
    grid = int(round((backbone["pos_embed"].shape[1] - 1) ** 0.5))
    return name, grid * patch


def infer_backbone(backbone: dict[str, torch.Tensor]) -> tuple[str, int, int]:
    """(registry name, input channels, image size) of a backbone state dict."""
    if "conv1.weight" in backbone and "layer1.0.conv1.weight" in backbone:
        return infer_resnet(backbone), int(backbone["conv1.weight"].shape[1]), 224
    if "cls_token" in backbone and "patch_embed.proj.weight" in backbone:
        name, size = _infer_vit(backbone)
        return name, int(backbone["patch_embed.proj.weight"].shape[1]), size
    raise CheckpointError(
        "the backbone is neither a torchvision ResNet nor a DINO/timm ViT "
        f"(keys such as {sorted(backbone)[:3]})"
    )


def _mlp_layers(sd: dict[str, torch.Tensor]) -> tuple[list[dict], list[dict]]:
    """(Linear layers, BatchNorm layers) of the projection MLP, in order, as tensor dicts."""
    for prefix in ("mlp_head.mlp.", "backbone.fc."):
        mlp = _strip(sd, prefix)
        if mlp:
            break
    if not mlp:
        return [], []
    if "weight" in mlp:  # a single nn.Linear, not a Sequential
        return [{"weight": mlp["weight"], "bias": mlp.get("bias")}], []
    groups: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in mlp.items():
        index, _, name = key.partition(".")
        groups.setdefault(int(index), {})[name] = value
    linears, norms = [], []
    for index in sorted(groups):
        group = groups[index]
        (norms if "running_mean" in group else linears).append(group)
    return linears, norms


def _heads(sd: dict[str, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """[(v (C, d), g (C,) or None)] for cls_0, cls_1, ... in every layout the code used."""
    found: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
    for key, value in sd.items():
        if m := re.fullmatch(r"cls_(\d+)\.weight_v", key):
            g = sd.get(f"cls_{m.group(1)}.weight_g")
            found[int(m.group(1))] = (value, None if g is None else g.reshape(-1))
        elif m := re.fullmatch(r"cls_(\d+)\.parametrizations\.weight\.original1", key):
            g = sd.get(f"cls_{m.group(1)}.parametrizations.weight.original0")
            found[int(m.group(1))] = (value, None if g is None else g.reshape(-1))
        elif m := re.fullmatch(r"cls_(\d+)", key):  # early code: a raw, normalised Parameter
            found[int(m.group(1))] = (value, None)
    if not found:
        raise CheckpointError("no classification heads (cls_<k>.weight_v) in the state dict")
    if sorted(found) != list(range(len(found))):
        raise CheckpointError(f"classification heads are not numbered 0..k: {sorted(found)}")
    return [found[k] for k in sorted(found)]


def _plain(value):
    return value if isinstance(value, int | float | str | bool) or value is None else str(value)


def convert_official(
    path: str | os.PathLike, activation: str = "leaky_relu", atol: float = 1e-6
) -> tuple[dict, list[str]]:
    """(selfclassifier checkpoint dict, notes for the user) for an official checkpoint file.

    ``activation``: the MLP's activation, which the tensors cannot tell: ``leaky_relu`` (the
    authors' default) or ``relu`` for runs trained with ``--no-leaky``.
    """
    path = Path(path)
    obj, skipped = read_tensors(path)
    if isinstance(obj, dict) and "state_dict" in obj:
        sd = tensor_dict(obj["state_dict"])
    else:
        obj, sd = {}, tensor_dict(obj)
    if sd and all(k.startswith("module.") for k in sd):
        sd = _strip(sd, "module.")
    if not any(k.startswith("backbone.") for k in sd):
        raise CheckpointError(
            f"'{path}' is not a Self-Classifier checkpoint: no 'state_dict' with "
            "module.backbone.* tensors"
        )
    # the earliest code kept the MLP in backbone.fc; it is read as the MLP below
    backbone_sd = {k: v for k, v in _strip(sd, "backbone.").items() if not k.startswith("fc.")}
    name, channels, size = infer_backbone(backbone_sd)
    linears, norms = _mlp_layers(sd)
    heads = _heads(sd)
    cfg = _config(name, size, linears, norms, heads, activation)
    model = build_model(cfg, channels, size)
    load_backbone_state(model.backbone, backbone_sd, str(path))
    state = {f"backbone.{k}": v for k, v in model.backbone.state_dict().items()}
    state.update(_projection_state(model, linears, norms))
    for k, (v, g) in enumerate(heads):
        state[f"heads.{k}.weight"] = v.float()
        state[f"heads.{k}.scale"] = (g if g is not None else torch.ones(len(v))).float()
    load_state(model, state, str(path))
    notes = [
        f"backbone {name} ({channels} channels, {size} px), MLP {cfg.model.mlp_layers} "
        f"layer(s) {cfg.model.hidden_dim}->{cfg.model.out_dim}"
        f"{' with BN' if cfg.model.batch_norm else ''}, heads {cfg.model.heads}"
    ]
    if any(g is not None and (g - 1).abs().max() > atol for _, g in heads):
        notes.append("the heads' learnt weight_g differs from 1: kept as their norm g (trained on)")
    if skipped:
        notes.append(f"skipped non-tensor objects without running them: {', '.join(skipped)}")
    ckpt = {
        "format": FORMAT,
        "config": cfg.to_dict(),
        "model": model.state_dict(),
        "data": {"channels": channels, "image_size": size, "classes": [], "num_samples": 0},
        "source": {
            "kind": "official Self-Classifier checkpoint",
            "path": str(path),
            "epoch": _plain(obj.get("epoch")),
            "arch": _plain(obj.get("arch")),
        },
    }
    return ckpt, notes


def _config(name, size, linears, norms, heads, activation) -> Config:
    cfg = Config()
    m = cfg.model
    m.backbone = name
    m.heads = [int(v.shape[0]) for v, _ in heads]
    if not linears:  # no MLP: an identity Linear reproduces F.normalize(backbone(x))
        m.mlp_layers, m.batch_norm = 1, False
        m.out_dim = m.hidden_dim = int(heads[0][0].shape[1])
    else:
        if norms and len(norms) != len(linears) - 1:
            raise CheckpointError(
                f"MLP has {len(linears)} Linear and {len(norms)} BatchNorm layers; expected "
                "one BatchNorm after every Linear but the last"
            )
        m.mlp_layers, m.batch_norm = len(linears), bool(norms)
        m.out_dim = int(linears[-1]["weight"].shape[0])
        m.hidden_dim = int(linears[0]["weight"].shape[0]) if len(linears) > 1 else m.out_dim
    m.activation = activation
    for k, (v, _) in enumerate(heads):
        if v.shape[1] != m.out_dim:
            raise CheckpointError(
                f"head cls_{k} takes {v.shape[1]}-d inputs but the MLP gives {m.out_dim}-d"
            )
    m.head_norm = "learnt"  # weight_norm's g, as the authors trained it
    cfg.augment.global_size = size
    validate(cfg)
    return cfg


def _projection_state(model, linears: list[dict], norms: list[dict]) -> dict[str, torch.Tensor]:
    """Our projection's state from theirs; a Linear bias before BN moves into running_mean."""
    ours = [(i, mod) for i, mod in enumerate(model.projection) if isinstance(mod, nn.Linear)]
    our_norms = [i for i, mod in enumerate(model.projection) if isinstance(mod, nn.BatchNorm1d)]
    state: dict[str, torch.Tensor] = {}
    if not linears:
        ((i, lin),) = ours
        state[f"projection.{i}.weight"] = torch.eye(lin.out_features, lin.in_features)
        state[f"projection.{i}.bias"] = torch.zeros(lin.out_features)
        return state
    for n, ((i, lin), theirs) in enumerate(zip(ours, linears, strict=True)):
        state[f"projection.{i}.weight"] = theirs["weight"].float()
        bias = theirs.get("bias")
        if lin.bias is not None:
            state[f"projection.{i}.bias"] = (
                bias.float() if bias is not None else torch.zeros(lin.out_features)
            )
        elif bias is not None:
            norms[n] = dict(norms[n], running_mean=norms[n]["running_mean"] - bias)
    for j, theirs in zip(our_norms, norms, strict=True):
        for key in ("weight", "bias", "running_mean", "running_var"):
            state[f"projection.{j}.{key}"] = theirs[key].float()
        tracked = theirs.get("num_batches_tracked")
        state[f"projection.{j}.num_batches_tracked"] = (
            tracked if tracked is not None else torch.tensor(0)
        ).long()
    return state
