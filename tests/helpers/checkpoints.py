"""Checkpoint files for tests: one as ``train`` writes it (random weights), and a malicious one."""

from __future__ import annotations

import os
import pickle
import shlex
from pathlib import Path

import torch
from torch import nn


def make_checkpoint(path, backbone: str, channels: int, size: int, heads=(10, 20), **model_keys):
    """A checkpoint as train writes it, with random weights and non-trivial BN statistics;
    ``model_keys``: further ``model`` settings (input_norm, head_projection, ...)."""
    from selfclassifier.config import load_config
    from selfclassifier.model.build import build_model
    from selfclassifier.storage import FORMAT, save_atomic

    cfg = load_config(
        "digits",
        {
            "model": {
                "backbone": backbone,
                "heads": list(heads),
                "hidden_dim": 32,
                "out_dim": 16,
                "head_projection": "shared",  # the digits preset's per_head only where asked
                **model_keys,
            },
            "augment": {"global_size": size},
        },
    )
    torch.manual_seed(0)
    model = build_model(cfg, channels, size)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    ckpt = {
        "format": FORMAT,
        "config": cfg.to_dict(),
        "model": model.state_dict(),
        "data": {"channels": channels, "image_size": size, "classes": [], "in_memory": True},
    }
    save_atomic(ckpt, path)
    return path


def randomise_bn(net: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm2d running statistics, so that a wrong load shows; eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return net.eval()


class _Payload:
    """Unpickling this runs ``touch MARKER``: the attack a shared checkpoint can carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


# How the malicious file is written: torch's zip format, its legacy format, a bare pickle.
HOW = ["zip", "legacy", "raw pickle"]


def evil_checkpoint(path: Path, marker: Path, how: str) -> Path:
    """A selfclassifier-looking checkpoint whose unpickling would create ``marker``."""
    from selfclassifier.storage import FORMAT

    ckpt = {
        "format": FORMAT,
        "config": {},
        "model": {"w": torch.zeros(2)},
        "state": _Payload(marker),
    }
    if how == "zip":
        torch.save(ckpt, path)
    elif how == "legacy":
        torch.save(ckpt, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(ckpt, protocol=2))
    return path
