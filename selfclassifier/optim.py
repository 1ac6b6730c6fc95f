"""Optimisers (SGD, AdamW, LARS as the authors ran it), parameter groups and the schedule.

The authors' 800-epoch recipe (``scripts/train_800ep.sh`` in elad-amrani/self-classifier):
apex ``LARC(SGD(model.parameters(), momentum 0.9, weight_decay 1e-6), trust_coefficient=0.001,
clip=False)`` over every parameter, and a per-step schedule that warms up linearly from
``--start-warmup`` to ``--lr`` (``np.linspace``, end point included) and then follows a cosine
to ``--final-lr``. docs/FIDELITY.md lists every setting and the test that checks it.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LARS(torch.optim.Optimizer):
    """SGD with momentum under layer-wise adaptive rate control, as apex's ``LARC``
    (``clip=False``) wraps ``torch.optim.SGD``.

    For each parameter w with gradient g, when ``||w|| > 0`` and ``||g|| > 0``::

        rate = trust * ||w|| / (||g|| + wd * ||w|| + eps)
        d    = rate * (g + wd * w)

    otherwise ``d = g`` (no weight decay either: LARC hands SGD a zero weight decay). Then
    ``buf = momentum * buf + d`` (``buf = d`` on the first step) and ``w -= lr * buf``. Groups
    with ``lars_exclude=True`` take plain SGD steps, ``d = g + wd * w``.

    >>> w = nn.Parameter(torch.tensor([3.0, 4.0])); w.grad = torch.tensor([0.0, 1.0])
    >>> LARS([w], lr=1.0, trust_coefficient=0.1).step(); w.tolist()  # rate 0.1 * 5 / 1
    [3.0, 3.5]
    """

    def __init__(
        self,
        params,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        eps: float = 1e-8,
    ):
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            eps=eps,
            lars_exclude=False,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._update(group, params)
        return loss

    def _update(self, group: dict, params: list[torch.Tensor]) -> None:
        """One group's update with multi-tensor (foreach) ops: a few kernels, not ~10 per
        parameter, and no value read back to the host (the rates stay on the device).
        """
        grads = [p.grad for p in params]
        wd = group["weight_decay"]
        if group["lars_exclude"]:
            d_p = torch._foreach_add(grads, params, alpha=wd) if wd else [g.clone() for g in grads]
        else:
            w_norm = torch.stack(torch._foreach_norm(params))
            g_norm = torch.stack(torch._foreach_norm(grads))
            adapt = (w_norm > 0) & (g_norm > 0)
            rate = torch.where(
                adapt,
                group["trust_coefficient"] * w_norm / (g_norm + wd * w_norm + group["eps"]),
                torch.ones_like(w_norm),
            )
            decay = torch.where(adapt, torch.full_like(w_norm, wd), torch.zeros_like(w_norm))
            d_p = torch._foreach_mul(params, list(decay.to(params[0].dtype).unbind()))
            torch._foreach_add_(d_p, grads)
            torch._foreach_mul_(d_p, list(rate.to(params[0].dtype).unbind()))
        fresh = {i for i, p in enumerate(params) if "momentum_buffer" not in self.state[p]}
        for i in fresh:
            self.state[params[i]]["momentum_buffer"] = d_p[i].clone()
        old = [i for i in range(len(params)) if i not in fresh]
        if old:
            bufs = [self.state[params[i]]["momentum_buffer"] for i in old]
            torch._foreach_mul_(bufs, group["momentum"])
            torch._foreach_add_(bufs, [d_p[i] for i in old])
        bufs = [self.state[p]["momentum_buffer"] for p in params]
        torch._foreach_add_(params, bufs, alpha=-group["lr"])


def _is_norm_or_bias(name: str, p: torch.Tensor) -> bool:
    return name.endswith(".bias") or p.ndim <= 1


def parameter_groups(
    model: nn.Module, weight_decay: float, exclude_norm_bias: bool = False, no_bias_wd: bool = False
) -> list[dict]:
    """Trainable parameters as optimiser groups.

    By default one group: weight decay (and LARS) on every parameter, as the authors train.
    ``no_bias_wd`` (their ``--no-bias-wd``): biases and norm parameters get no weight decay
    but stay under LARS. ``exclude_norm_bias``: they get neither (plain SGD steps).
    """
    decay, special = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        split = (exclude_norm_bias or no_bias_wd) and _is_norm_or_bias(name, p)
        (special if split else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if special:
        groups.append({"params": special, "weight_decay": 0.0, "lars_exclude": exclude_norm_bias})
    return groups


def peak_lr(cfg) -> float:
    """The schedule's peak learning rate: ``optim.lr``, times batch/256 with ``scale_lr``."""
    return cfg.optim.lr * _lr_factor(cfg)


def _lr_factor(cfg) -> float:
    return cfg.train.batch_size / 256 if cfg.optim.scale_lr else 1.0


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """The optimiser a run with config ``cfg`` trains ``model`` with.

    ``optim.optimizer='lars'`` with the defaults is the authors' ``LARC(SGD)`` over every
    parameter. The learning rate set here is the peak; training sets each step's value from
    :func:`lr_schedule`.

    >>> from selfclassifier.config import load_config
    >>> opt = build_optimizer(nn.Linear(3, 2), load_config("imagenet"))
    >>> type(opt).__name__, opt.param_groups[0]["lr"], opt.param_groups[0]["weight_decay"]
    ('LARS', 3.2, 1e-06)
    """
    o = cfg.optim
    groups = parameter_groups(model, o.weight_decay, o.exclude_norm_bias, o.no_bias_wd)
    lr = peak_lr(cfg)
    if o.optimizer == "lars":
        return LARS(groups, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay)
    for g in groups:
        g.pop("lars_exclude", None)
    # foreach/fused updates launch a handful of kernels instead of one per tensor on GPU.
    on_cuda = any(p.is_cuda for g in groups for p in g["params"])
    fast = {"fused": True} if on_cuda else {"foreach": True}
    if o.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay, **fast
        )
    if o.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=o.weight_decay, **fast)
    raise ValueError(f"unknown optimizer '{o.optimizer}'; choose one of: sgd, adamw, lars")


def lr_schedule(cfg, steps_per_epoch: int) -> list[float]:
    """The learning rate of every step of a run, as training uses them.

    Linear warm-up over ``round(warmup_epochs * steps_per_epoch)`` steps from
    ``warmup_start_lr`` to the peak, end point included (``np.linspace`` in the authors'
    ``cosine_scheduler_with_warmup``), then a cosine from the peak towards ``min_lr`` over the
    remaining steps (the last step is just above ``min_lr``, as theirs).

    >>> from selfclassifier.config import load_config
    >>> cfg = load_config("imagenet")
    >>> lrs = lr_schedule(cfg, steps_per_epoch=312)
    >>> len(lrs), round(lrs[0], 4), max(lrs), round(lrs[-1], 4)
    (249600, 0.2, 3.2, 0.0032)
    """
    factor = _lr_factor(cfg)
    base, start = cfg.optim.lr * factor, cfg.optim.warmup_start_lr * factor
    final = cfg.optim.min_lr * factor
    total = cfg.train.epochs * steps_per_epoch
    warmup = min(total, int(round(cfg.optim.warmup_epochs * steps_per_epoch)))
    lrs = [
        start + (base - start) * (s / (warmup - 1) if warmup > 1 else 0.0) for s in range(warmup)
    ]
    decay = total - warmup
    lrs += [
        final + 0.5 * (base - final) * (1 + math.cos(math.pi * i / decay)) for i in range(decay)
    ]
    return lrs


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
