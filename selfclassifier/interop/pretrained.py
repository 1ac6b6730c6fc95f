"""Start a backbone from someone else's weights: torchvision or timm state dicts, checkpoints.

:func:`load_backbone_weights` reads a local file without running code from it, finds the
backbone's tensors whatever they are wrapped in (``state_dict``/``model``/``teacher`` entries;
``module.``, ``backbone.``, ``backbone.net.`` ... prefixes), renames timm / DINO ViT keys to
torchvision's, and loads them strictly: every backbone tensor must be found with its shape.
Two adaptations are made and reported: an input convolution with 3 channels is summed to 1
(or a 1-channel one repeated to 3) for grayscale / RGB data, and ViT position embeddings
are resized to the model's patch grid.
"""

from __future__ import annotations

import math
import os
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from selfclassifier.interop.torchfile import read_tensors, tensor_dict
from selfclassifier.model.backbones import ResNetTrunk, ViTTrunk
from selfclassifier.storage import FORMAT, CheckpointError, load_file

_WRAPPERS = ("state_dict", "model", "teacher", "student", "module", "net", "backbone", "params")

# timm / DINO ViT names -> torchvision VisionTransformer names (any prefix is kept).
_TIMM_VIT = [
    (r"(^|\.)cls_token$", r"\1class_token"),
    (r"(^|\.)pos_embed$", r"\1encoder.pos_embedding"),
    (r"(^|\.)patch_embed\.proj\.", r"\1conv_proj."),
    (r"(^|\.)blocks\.(\d+)\.norm1\.", r"\1encoder.layers.encoder_layer_\2.ln_1."),
    (r"(^|\.)blocks\.(\d+)\.norm2\.", r"\1encoder.layers.encoder_layer_\2.ln_2."),
    (
        r"(^|\.)blocks\.(\d+)\.attn\.qkv\.weight$",
        r"\1encoder.layers.encoder_layer_\2.self_attention.in_proj_weight",
    ),
    (
        r"(^|\.)blocks\.(\d+)\.attn\.qkv\.bias$",
        r"\1encoder.layers.encoder_layer_\2.self_attention.in_proj_bias",
    ),
    (
        r"(^|\.)blocks\.(\d+)\.attn\.proj\.",
        r"\1encoder.layers.encoder_layer_\2.self_attention.out_proj.",
    ),
    (r"(^|\.)blocks\.(\d+)\.mlp\.fc1\.", r"\1encoder.layers.encoder_layer_\2.mlp.0."),
    (r"(^|\.)blocks\.(\d+)\.mlp\.fc2\.", r"\1encoder.layers.encoder_layer_\2.mlp.3."),
    (r"(^|\.)norm\.(weight|bias)$", r"\1encoder.ln.\2"),
]


def timm_vit_to_torchvision(key: str) -> str:
    """Rename one timm/DINO ViT key to torchvision's ``VisionTransformer`` naming."""
    for pattern, repl in _TIMM_VIT:
        new = re.sub(pattern, repl, key)
        if new != key:
            return new
    return key


@dataclass
class LoadReport:
    """What :func:`load_backbone_state` did; ``str()`` is a one-line summary."""

    loaded: int
    naming: str
    prefix: str
    ignored: int
    adapted: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        text = f"{self.loaded} tensors in {self.naming} naming"
        if self.prefix:
            text += f" under '{self.prefix}'"
        if self.ignored:
            text += f"; {self.ignored} other tensors ignored (classifier, projection ...)"
        if self.adapted:
            text += "; adapted " + ", ".join(self.adapted)
        return text


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, unwrapped from checkpoint dicts; no code in it runs."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file '{path}' not found")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file as load_safetensors
        except ImportError:
            raise CheckpointError(
                f"'{path}' is a safetensors file: pip install safetensors"
            ) from None
        return load_safetensors(str(path))
    obj = read_tensors(path)[0] if zipfile.is_zipfile(path) else load_file(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT and "model" in obj:
        return tensor_dict(obj["model"])
    for _ in range(3):  # e.g. {"teacher": {"state_dict": {...}}}
        tensors = tensor_dict(obj)
        if tensors or not isinstance(obj, dict):
            break
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    tensors = tensor_dict(obj)
    if not tensors:
        raise CheckpointError(f"'{path}' holds no state dict (no name -> tensor mapping found)")
    return tensors


def _module_of(backbone: nn.Module) -> nn.Module:
    """The module whose state-dict names follow torchvision's (or timm's) naming."""
    return backbone.net if isinstance(backbone, ResNetTrunk | ViTTrunk) else backbone


def _namings(backbone: nn.Module) -> list[tuple[str, Callable[[str], str]]]:
    names: list[tuple[str, Callable[[str], str]]] = [("torchvision", lambda k: k)]
    if isinstance(backbone, ViTTrunk):
        names.append(("timm", timm_vit_to_torchvision))
    elif not isinstance(backbone, ResNetTrunk):
        names = [("native", lambda k: k)]
    return names


def _split_prefix(key: str, targets: set[str]) -> tuple[str, str] | None:
    parts = key.split(".")
    for i in range(len(parts)):
        suffix = ".".join(parts[i:])
        if suffix in targets:
            return ".".join(parts[:i]) + ("." if i else ""), suffix
    return None


def match_backbone_keys(
    source: dict[str, torch.Tensor], backbone: nn.Module
) -> tuple[dict[str, torch.Tensor], str, str, int]:
    """(tensors renamed to the backbone's names, naming, prefix, number of unused tensors).

    Tries each naming (torchvision, timm for ViTs) and every prefix under which the backbone's
    names appear in ``source``; keeps the combination that finds the most tensors.
    """
    targets = set(_module_of(backbone).state_dict())
    best: tuple[int, dict, str, str] = (-1, {}, "", "")
    for naming, rename in _namings(backbone):
        by_prefix: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in source.items():
            split = _split_prefix(rename(key), targets)
            if split is not None:
                by_prefix.setdefault(split[0], {})[split[1]] = value
        for prefix, found in by_prefix.items():
            if len(found) > best[0]:
                best = (len(found), found, naming, prefix)
    count, found, naming, prefix = best
    return found, naming, prefix, len(source) - max(count, 0)


def _adapt_input_conv(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor | None:
    """3 -> 1 channels: sum (keeps the response to a gray image); 1 -> 3: repeat / 3."""
    if src.dim() != 4 or src.shape[0] != dst.shape[0] or src.shape[2:] != dst.shape[2:]:
        return None
    if src.shape[1] == 3 and dst.shape[1] == 1:
        return src.sum(dim=1, keepdim=True)
    if src.shape[1] == 1 and dst.shape[1] == 3:
        return src.repeat(1, 3, 1, 1) / 3
    return None


def _resize_pos_embedding(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor | None:
    """(1, 1 + g*g, D) -> (1, 1 + h*h, D) by bicubic interpolation of the patch grid."""
    if src.dim() != 3 or src.shape[0] != 1 or src.shape[2] != dst.shape[2]:
        return None
    g, h = math.isqrt(src.shape[1] - 1), math.isqrt(dst.shape[1] - 1)
    if g * g != src.shape[1] - 1 or h * h != dst.shape[1] - 1:
        return None
    grid = src[:, 1:].reshape(1, g, g, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(h, h), mode="bicubic", align_corners=False)
    return torch.cat([src[:, :1], grid.flatten(2).transpose(1, 2).to(src.dtype)], dim=1)


def load_backbone_state(
    backbone: nn.Module, source: dict[str, torch.Tensor], origin: str
) -> LoadReport:
    """Copy ``source``'s backbone tensors into ``backbone`` (all of them must be there)."""
    module = _module_of(backbone)
    own = module.state_dict()
    found, naming, prefix, ignored = match_backbone_keys(source, backbone)
    missing = [k for k in own if k not in found and not k.endswith("num_batches_tracked")]
    if missing:
        raise CheckpointError(
            f"'{origin}' does not hold this backbone's weights: {len(missing)} of {len(own)} "
            f"tensors not found (e.g. '{missing[0]}'); is it a state dict of the same "
            "architecture (torchvision or timm naming)?"
        )
    adapted: list[str] = []
    state = {}
    for key, value in found.items():
        target = own[key]
        if value.shape != target.shape:
            fixed = _adapt_input_conv(value, target)
            if fixed is None and key.endswith("pos_embedding"):
                fixed = _resize_pos_embedding(value, target)
            if fixed is None:
                raise CheckpointError(
                    f"'{origin}': tensor '{key}' has shape {tuple(value.shape)} but this "
                    f"backbone needs {tuple(target.shape)}; pick the backbone those weights "
                    "were trained with (e.g. resnet18, not resnet18_small, for ImageNet weights)"
                )
            adapted.append(f"{key} {tuple(value.shape)}->{tuple(target.shape)}")
            value = fixed
        state[key] = value.to(target.dtype)
    for key in own:
        state.setdefault(key, own[key])  # num_batches_tracked, when the file lacks it
    module.load_state_dict(state, strict=True)
    return LoadReport(len(found), naming, prefix, ignored, adapted)


def load_backbone_weights(backbone: nn.Module, path: str | os.PathLike) -> LoadReport:
    """Read ``path`` (see :func:`read_state_dict`) and load its backbone tensors strictly.

    >>> from selfclassifier.model.backbones import build_backbone
    >>> import tempfile, torchvision
    >>> path = tempfile.mkdtemp() + "/r18.pth"
    >>> torch.save(torchvision.models.resnet18().state_dict(), path)
    >>> print(load_backbone_weights(build_backbone("resnet18"), path))
    120 tensors in torchvision naming; 2 other tensors ignored (classifier, projection ...)
    """
    return load_backbone_state(backbone, read_state_dict(path), str(path))


def weights_fingerprint(module: nn.Module) -> str:
    """Short hash of a module's tensors (to tell whether cached features are still valid)."""
    import hashlib

    h = hashlib.blake2b(digest_size=12)
    for key, value in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


__all__ = [
    "LoadReport",
    "load_backbone_state",
    "load_backbone_weights",
    "match_backbone_keys",
    "read_state_dict",
    "timm_vit_to_torchvision",
    "weights_fingerprint",
]
