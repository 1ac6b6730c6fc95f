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


def validate(cfg: Config) -> None:
    """Reject impossible values with one line naming the key and what is allowed."""
    m, a, o, t, lo = cfg.model, cfg.augment, cfg.optim, cfg.train, cfg.loss
    _check(len(m.heads) >= 1, "model.heads must list at least one head, e.g. [10]")
    _check(
        m.head_projection in ("shared", "per_head"),
        f"model.head_projection must be shared or per_head, got '{m.head_projection}'",
    )
    for i, c in enumerate(m.heads):
        _check(c >= 2, f"model.heads[{i}] = {c}: a head needs at least 2 classes")
    _check(m.mlp_layers >= 1, f"model.mlp_layers must be >= 1, got {m.mlp_layers}")
    _check(m.hidden_dim >= 1 and m.out_dim >= 1, "model.hidden_dim and model.out_dim must be >= 1")
    _check(
        m.activation in ("leaky_relu", "relu", "gelu"),
        f"model.activation must be leaky_relu, relu or gelu, got '{m.activation}'",
    )
    _check(
        m.head_norm in ("learnt", "fixed"),
        f"model.head_norm must be learnt or fixed, got '{m.head_norm}'",
    )
    _check(
        not (m.head_scale and m.head_norm == "learnt"),
        "model.head_scale (a legacy fixed scale buffer) needs model.head_norm=fixed; "
        "for a trained norm use model.head_norm=learnt alone",
    )
    _check(
        m.mlp_init in ("trunc_normal", "torch"),
        f"model.mlp_init must be trunc_normal or torch, got '{m.mlp_init}'",
    )
    _check(
        m.input_norm in ("none", "image"),
        f"model.input_norm must be none or image, got '{m.input_norm}'",
    )
    _check(
        t.head_precision in ("fp32", "autocast"),
        f"train.head_precision must be fp32 or autocast, got '{t.head_precision}'",
    )
    _check(lo.row_tau > 0, f"loss.row_tau must be > 0, got {lo.row_tau}")
    _check(lo.col_tau > 0, f"loss.col_tau must be > 0, got {lo.col_tau}")
    _check(lo.eps >= 0, f"loss.eps must be >= 0, got {lo.eps}")
    _check(
        a.pipeline in ("auto", "classic", "fast"),
        f"augment.pipeline must be auto, classic or fast, got '{a.pipeline}'",
    )
    _check(
        a.compute_dtype in ("auto", "bfloat16", "float32"),
        f"augment.compute_dtype must be auto, bfloat16 or float32, got '{a.compute_dtype}'",
    )
    _check(
        a.interpolation in ("bicubic", "bilinear"),
        f"augment.interpolation must be bicubic or bilinear, got '{a.interpolation}'",
    )
    _check(a.global_crops >= 2, f"augment.global_crops must be >= 2, got {a.global_crops}")
    _check(a.local_crops >= 0, f"augment.local_crops must be >= 0, got {a.local_crops}")
    _check(a.global_size >= 1 and a.local_size >= 1, "augment sizes must be >= 1 pixel")
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
    _check(
        o.optimizer in ("sgd", "adamw", "lars"),
        f"optim.optimizer must be sgd, adamw or lars, got '{o.optimizer}'",
    )
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
    _check(
        t.precision in ("auto", "fp32", "bf16", "fp16"),
        f"train.precision must be auto, fp32, bf16 or fp16, got '{t.precision}'",
    )
    _check(
        t.device == "auto" or t.device == "cpu" or t.device.startswith("cuda"),
        f"train.device must be auto, cpu, cuda or cuda:N, got '{t.device}'",
    )
    _check(
        cfg.data.split in ("train", "test", "all"),
        f"data.split must be train, test or all, got '{cfg.data.split}'",
    )
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
