"""Checkpoint files: atomic writes, safe reads, and rebuilding a model from one.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only, so it loads with
``torch.load(weights_only=True)``: a file that carries a pickled object (code) is refused.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import torch

from selfclassifier.backbones import build_backbone
from selfclassifier.config import Config, ConfigError, from_dict
from selfclassifier.model import SelfClassifier

FORMAT = "selfclassifier/1"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or written; ``str(e)`` is one line naming the file."""


def save_atomic(obj: dict, path: str | os.PathLike) -> None:
    """Write ``obj`` to ``path`` so that a crash never leaves a half-written file there.

    The bytes go to a temporary file in the same directory, are fsynced, and replace ``path``
    with ``os.replace`` (atomic on POSIX); a failure (disk full, read-only) leaves the previous
    checkpoint untouched and raises CheckpointError.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise CheckpointError(
            f"could not write checkpoint '{path}': {e.strerror or e}; the "
            "previous checkpoint (if any) is unchanged"
        ) from e


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_file(path: str | os.PathLike, map_location="cpu") -> dict:
    """``torch.load(weights_only=True)``; one-line errors for missing, corrupt or unsafe files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' not found")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unsupported content"
        raise CheckpointError(
            f"refusing to load '{path}': it holds objects other than tensors and plain data "
            f"({first[:200]}); only load checkpoints you trust, and convert them with "
            "'selfclassifier convert'"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint '{path}' is unreadable or truncated "
            f"({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint '{path}' is not a selfclassifier checkpoint")
    return obj


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load and check a selfclassifier checkpoint (see :func:`load_file`)."""
    ckpt = load_file(path, map_location)
    if ckpt.get("format") != FORMAT or "model" not in ckpt or "config" not in ckpt:
        raise CheckpointError(
            f"'{path}' is not a selfclassifier checkpoint (no '{FORMAT}' "
            "marker); official Self-Classifier files need 'selfclassifier "
            "convert' first"
        )
    return ckpt


def config_of(ckpt: dict) -> Config:
    try:
        return from_dict(ckpt["config"])
    except ConfigError as e:
        raise CheckpointError(f"checkpoint config is invalid: {e}") from None


def build_model(cfg: Config, channels: int, image_size: int) -> SelfClassifier:
    m = cfg.model
    return SelfClassifier(
        build_backbone(m.backbone, channels, image_size),
        heads=m.heads,
        hidden_dim=m.hidden_dim,
        out_dim=m.out_dim,
        mlp_layers=m.mlp_layers,
        batch_norm=m.batch_norm,
        activation=m.activation,
        freeze_heads=m.freeze_heads,
        head_scale=m.head_scale,
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
    info = ckpt.get("data", {})
    model = build_model(cfg, int(info.get("channels", 3)), int(info.get("image_size", 224)))
    load_state(model, ckpt["model"], str(path))
    model.eval()
    return model, cfg, ckpt
