"""Building a SelfClassifier from a config, and rebuilding a trained one from its checkpoint."""

from __future__ import annotations

import os

import torch

from selfclassifier.config import Config, ConfigError, from_dict
from selfclassifier.model.backbones import build_backbone
from selfclassifier.model.classifier import SelfClassifier
from selfclassifier.storage import CheckpointError, DataRecord, load_checkpoint


def config_of(ckpt: dict) -> Config:
    try:
        return from_dict(ckpt["config"])
    except ConfigError as e:
        raise CheckpointError(f"checkpoint config is invalid: {e}") from None


def build_model(cfg: Config, channels: int, image_size: int) -> SelfClassifier:
    m = cfg.model
    return SelfClassifier(
        build_backbone(m.backbone, 2 if m.input_norm == "sobel" else channels, image_size),
        heads=m.heads,
        hidden_dim=m.hidden_dim,
        out_dim=m.out_dim,
        mlp_layers=m.mlp_layers,
        batch_norm=m.batch_norm,
        activation=m.activation,
        freeze_heads=m.freeze_heads,
        head_norm="buffer" if m.head_scale else m.head_norm,
        joint_projection=m.joint_projection,
        mlp_init=m.mlp_init,
        input_norm=m.input_norm,
        head_projection=m.head_projection,
    )


def load_state(model: torch.nn.Module, state: dict, source: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line error on an architecture mismatch."""
    missing, unexpected = [], []
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        detail = (
            f"{len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} "
            f"mis-shaped tensors; e.g. {(wrong or missing or unexpected)[0]}"
        )
        raise CheckpointError(
            f"checkpoint '{source}' does not match this model's architecture "
            f"({detail}); use the same model settings it was trained with"
        )
    model.load_state_dict(state)


def model_from_checkpoint(path: str | os.PathLike, map_location="cpu"):
    """(model in eval mode, config, checkpoint dict) for a saved run."""
    ckpt = load_checkpoint(path, map_location)
    cfg = config_of(ckpt)
    data = DataRecord.of(ckpt)
    model = build_model(cfg, data.channels, data.image_size)
    load_state(model, ckpt["model"], str(path))
    model.eval()
    return model, cfg, ckpt
