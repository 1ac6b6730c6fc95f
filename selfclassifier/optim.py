"""Optimisers (SGD, AdamW, LARS), parameter groups and the cosine schedule with warmup."""

from __future__ import annotations

import math

import torch
from torch import nn


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al., 2017).

    Each parameter's update is scaled by ``trust * ||w|| / ||g + wd * w||``. Groups with
    ``lars_exclude=True`` (biases, norm layers, as in the paper's recipe) take plain SGD steps.
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
        parameter, and no value read back to the host (the trust ratios stay on the device).
        """
        grads = [p.grad for p in params]
        wd = group["weight_decay"]
        d_p = torch._foreach_add(grads, params, alpha=wd) if wd else [g.clone() for g in grads]
        if not group["lars_exclude"]:
            w_norm = torch.stack(torch._foreach_norm(params))
            g_norm = torch.stack(torch._foreach_norm(d_p))
            trust = torch.where(
                (w_norm > 0) & (g_norm > 0),
                group["trust_coefficient"] * w_norm / (g_norm + group["eps"]),
                torch.ones_like(w_norm),
            )
            torch._foreach_mul_(d_p, list(trust.to(d_p[0].dtype).unbind()))
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


def parameter_groups(model: nn.Module, weight_decay: float, exclude_norm_bias: bool) -> list[dict]:
    """Split trainable parameters into decayed weights and (optionally) undecayed biases/norms.

    1-D parameters are biases and normalisation scales: decaying them (or LARS-scaling them)
    only hurts, which is why most SSL recipes exclude them.
    """
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if exclude_norm_bias and p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lars_exclude": True})
    return groups


def build_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    exclude_norm_bias: bool = True,
    fused: bool = False,
) -> torch.optim.Optimizer:
    groups = parameter_groups(model, weight_decay, exclude_norm_bias)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    for g in groups:
        g.pop("lars_exclude", None)
    # foreach/fused updates launch a handful of kernels instead of one per tensor on GPU.
    fast = {"fused": True} if fused else {"foreach": True}
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, **fast)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, **fast)
    raise ValueError(f"unknown optimizer '{name}'; choose one of: sgd, adamw, lars")


def cosine_lr(
    step: int,
    total_steps: int,
    warmup_steps: int,
    base_lr: float,
    final_lr: float = 0.0,
    start_lr: float = 0.0,
) -> float:
    """Linear warmup from ``start_lr`` to ``base_lr``, then cosine decay to ``final_lr``.

    >>> [round(cosine_lr(s, 10, 2, 1.0), 3) for s in (0, 1, 2, 6, 10)]
    [0.0, 0.5, 1.0, 0.5, 0.0]
    """
    if step < warmup_steps:
        return start_lr + (base_lr - start_lr) * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return final_lr + 0.5 * (base_lr - final_lr) * (1 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
