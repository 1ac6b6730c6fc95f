"""Validation of a :class:`~selfclassifier.config.Config`: one line per bad key.

Each check names the key, what is allowed and what was given, so a typo in a preset or a
``--set`` fails before any data is read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from selfclassifier.errors import ConfigError

if TYPE_CHECKING:
    from selfclassifier.config import Config


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def _check_scale(key: str, scale: list[float]) -> None:
    _check(
        len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1,
        f"{key} must be [low, high] with 0 < low <= high <= 1, got {scale}",
    )


def _check_positive_range(key: str, pair: list[float]) -> None:
    _check(
        len(pair) == 2 and 0 < pair[0] <= pair[1],
        f"{key} must be [low, high] with 0 < low <= high, got {pair}",
    )


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    allowed = ", ".join(choices[:-1]) + " or " + choices[-1]
    _check(value in choices, f"{key} must be {allowed}, got '{value}'")


def validate(cfg: Config) -> None:
    """Reject impossible values with one line naming the key and what is allowed."""
    m, a, o, t, lo = cfg.model, cfg.augment, cfg.optim, cfg.train, cfg.loss
    _check(len(m.heads) >= 1, "model.heads must list at least one head, e.g. [10]")
    _check_choice("model.head_projection", m.head_projection, ("shared", "per_head"))
    for i, c in enumerate(m.heads):
        _check(c >= 2, f"model.heads[{i}] = {c}: a head needs at least 2 classes")
    _check(m.mlp_layers >= 1, f"model.mlp_layers must be >= 1, got {m.mlp_layers}")
    _check(m.hidden_dim >= 1 and m.out_dim >= 1, "model.hidden_dim and model.out_dim must be >= 1")
    _check_choice("model.activation", m.activation, ("leaky_relu", "relu", "gelu"))
    _check_choice("model.head_norm", m.head_norm, ("learnt", "fixed"))
    _check(
        not (m.head_scale and m.head_norm == "learnt"),
        "model.head_scale (a legacy fixed scale buffer) needs model.head_norm=fixed; "
        "for a trained norm use model.head_norm=learnt alone",
    )
    _check_choice("model.mlp_init", m.mlp_init, ("trunc_normal", "torch"))
    _check_choice("model.input_norm", m.input_norm, ("none", "image", "sobel"))
    _check_choice("train.head_precision", t.head_precision, ("fp32", "autocast"))
    _check(lo.row_tau > 0, f"loss.row_tau must be > 0, got {lo.row_tau}")
    _check(lo.col_tau > 0, f"loss.col_tau must be > 0, got {lo.col_tau}")
    _check(lo.eps >= 0, f"loss.eps must be >= 0, got {lo.eps}")
    _check_choice("augment.pipeline", a.pipeline, ("auto", "classic", "fast"))
    _check_choice("augment.compute_dtype", a.compute_dtype, ("auto", "bfloat16", "float32"))
    _check_choice("augment.interpolation", a.interpolation, ("bicubic", "bilinear"))
    _check(a.global_crops >= 2, f"augment.global_crops must be >= 2, got {a.global_crops}")
    _check(a.local_crops >= 0, f"augment.local_crops must be >= 0, got {a.local_crops}")
    _check(a.global_size >= 1 and a.local_size >= 1, "augment sizes must be >= 1 pixel")
    _check(a.eval_size >= 0, f"augment.eval_size must be >= 0 (0: global_size), got {a.eval_size}")
    _check(
        not m.freeze_backbone or a.eval_size in (0, a.global_size),
        f"augment.eval_size {a.eval_size} with model.freeze_backbone: the feature cache keeps "
        "the un-augmented image beside the global crops, so it must match augment.global_size; "
        "set augment.eval_size=0",
    )
    _check(
        a.final_size >= 0 and a.final_epochs >= 0 and (a.final_size > 0) == (a.final_epochs > 0),
        f"augment.final_size {a.final_size} and augment.final_epochs {a.final_epochs}: set both "
        "(larger global crops for the last final_epochs epochs) or neither (0 and 0)",
    )
    _check(
        a.final_epochs <= t.epochs,
        f"augment.final_epochs {a.final_epochs} exceeds train.epochs {t.epochs}; lower it",
    )
    _check(
        not (m.freeze_backbone and a.final_size),
        "augment.final_size with model.freeze_backbone: cached features come from one crop "
        "side; set augment.final_size=0 and augment.final_epochs=0",
    )
    _check_scale("augment.global_scale", a.global_scale)
    _check_scale("augment.local_scale", a.local_scale)
    _check_scale("augment.erase_scale", a.erase_scale)
    for key in ("ratio", "gamma_range", "erase_ratio"):
        _check_positive_range(f"augment.{key}", getattr(a, key))
    for key in ("hflip", "jitter", "grayscale", "gamma", "erase"):
        v = getattr(a, key)
        _check(0 <= v <= 1, f"augment.{key} is a probability in [0, 1], got {v}")
    for key in ("blur", "solarize"):
        v = getattr(a, key)
        _check(
            len(v) == 3 and all(0 <= p <= 1 for p in v),
            f"augment.{key} must be 3 probabilities [global1, global2, local], got {v}",
        )
    _check_choice("optim.optimizer", o.optimizer, ("sgd", "adamw", "lars"))
    _check(o.lr > 0, f"optim.lr must be > 0, got {o.lr}")
    _check(o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay}")
    _check(o.warmup_epochs >= 0, f"optim.warmup_epochs must be >= 0, got {o.warmup_epochs}")
    _check(t.epochs >= 1, f"train.epochs must be >= 1, got {t.epochs}")
    _check(
        t.batch_size >= 2,
        f"train.batch_size must be >= 2 (the loss normalises over the batch), got {t.batch_size}",
    )
    _check(t.feature_views >= 1, f"train.feature_views must be >= 1, got {t.feature_views}")
    _check(
        t.feature_neighbours >= 0,
        f"train.feature_neighbours must be >= 0, got {t.feature_neighbours}",
    )
    _check(t.queue_size >= 0, f"train.queue_size must be >= 0, got {t.queue_size}")
    _check(
        t.queue_size == 0 or t.queue_size > t.batch_size,
        f"train.queue_size ({t.queue_size}) must exceed train.batch_size ({t.batch_size}) or be 0",
    )
    _check_choice("train.precision", t.precision, ("auto", "native_bf16", "fp32", "bf16", "fp16"))
    _check(
        t.device == "auto" or t.device == "cpu" or t.device.startswith("cuda"),
        f"train.device must be auto, cpu, cuda or cuda:N, got '{t.device}'",
    )
    _check_choice("data.split", cfg.data.split, ("train", "test", "all"))
    _check(cfg.data.workers >= 0, f"data.workers must be >= 0, got {cfg.data.workers}")
    _check(
        cfg.data.path.strip() != "",
        "data.path is empty; pass --data digits, fashion_mnist, an IDX folder or an image folder",
    )
    _check(o.min_lr >= 0, f"optim.min_lr must be >= 0, got {o.min_lr}")
    _check(o.warmup_start_lr >= 0, f"optim.warmup_start_lr must be >= 0, got {o.warmup_start_lr}")
    _check(0 <= o.momentum < 1, f"optim.momentum must be in [0, 1), got {o.momentum}")
    _check(o.clip_grad >= 0, f"optim.clip_grad must be >= 0 (0 disables), got {o.clip_grad}")
    for key in ("checkpoint_every_steps", "eval_every", "queue_start_epoch", "selection_passes"):
        v = getattr(t, key)
        _check(v >= 0, f"train.{key} must be >= 0 (0 disables), got {v}")
    _check(t.log_every >= 1, f"train.log_every must be >= 1, got {t.log_every}")
