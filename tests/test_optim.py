"""Optimisers (SGD, AdamW, LARS as the authors' apex LARC) and the per-step schedule."""

import math

import numpy as np
import pytest
import torch

from selfclassifier.config import load_config
from selfclassifier.optim import LARS, build_optimizer, lr_schedule, parameter_groups


def authors_schedule(base, final, epochs, niter, warmup_epochs, start):
    """The authors' cosine_scheduler_with_warmup, restated: np.linspace warm-up (end point
    included), then a cosine over the remaining iterations."""
    warmup_iters = warmup_epochs * niter
    warm = np.linspace(start, base, warmup_iters) if warmup_epochs > 0 else np.array([])
    iters = np.arange(epochs * niter - warmup_iters)
    cos = final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))
    return np.concatenate((warm, cos))


@pytest.mark.parametrize(
    ("preset", "lr", "start", "final", "epochs"),
    [
        ("imagenet", 3.2, 0.2, 0.0032, 800),
        ("imagenet_100ep", 4.8, 0.3, 0.0048, 100),
        ("imagenet_400ep", 4.8, 0.3, 0.0048, 400),
    ],
)
def test_imagenet_schedules_equal_the_authors_scripts(preset, lr, start, final, epochs):
    cfg = load_config(preset)
    niter = 1_281_167 // cfg.train.batch_size  # ImageNet-1k train, drop_last
    ours = np.array(lr_schedule(cfg, niter))
    theirs = authors_schedule(lr, final, epochs, niter, 10, start)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=0)
    assert ours[0] == pytest.approx(start) and ours.max() == pytest.approx(lr)
    assert ours[-1] == pytest.approx(final, rel=1e-3) and ours[-1] > final


def test_schedule_scales_with_batch_when_asked():
    cfg = load_config("digits", {"train": {"epochs": 4, "batch_size": 512}})
    cfg.optim.lr, cfg.optim.warmup_start_lr, cfg.optim.min_lr = 0.1, 0.01, 0.001
    cfg.optim.warmup_epochs = 1
    lrs = lr_schedule(cfg, 10)
    assert len(lrs) == 40 and lrs[0] == pytest.approx(0.02) and lrs[9] == pytest.approx(0.2)
    assert all(a <= b for a, b in zip(lrs[:9], lrs[1:10], strict=True))
    assert all(a >= b for a, b in zip(lrs[10:-1], lrs[11:], strict=True))
    cfg.optim.scale_lr = False
    assert max(lr_schedule(cfg, 10)) == pytest.approx(0.1)


def test_schedule_without_warmup_starts_at_the_peak():
    cfg = load_config("digits", {"train": {"epochs": 2}, "optim": {"warmup_epochs": 0}})
    lrs = lr_schedule(cfg, 5)
    assert lrs[0] == pytest.approx(cfg.optim.lr * cfg.train.batch_size / 256)
    assert lrs[-1] > 0


def _net():
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))


def test_default_groups_decay_every_parameter_as_the_authors():
    (group,) = parameter_groups(_net(), 0.1)
    assert len(group["params"]) == 4 and group["weight_decay"] == 0.1


@pytest.mark.parametrize(
    ("key", "lars_exclude"), [("no_bias_wd", False), ("exclude_norm_bias", True)]
)
def test_norm_and_bias_options(key, lars_exclude):
    decay, special = parameter_groups(_net(), 0.1, **{key: True})
    assert [p.ndim for p in decay["params"]] == [2]
    assert len(special["params"]) == 3 and special["weight_decay"] == 0.0
    assert special["lars_exclude"] is lars_exclude  # --no-bias-wd keeps LARS on them


@pytest.mark.parametrize("name", ["sgd", "adamw", "lars"])
def test_optimizers_reduce_a_quadratic(name):
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 1)
    cfg = load_config("digits", {"optim": {"optimizer": name, "weight_decay": 0.0}})
    cfg.optim.scale_lr, cfg.optim.lr = False, (0.05 if name != "lars" else 1.0)
    opt = build_optimizer(model, cfg)
    x, y = torch.randn(64, 5), torch.randn(64, 1)
    first = None
    for _ in range(50):
        loss = torch.nn.functional.mse_loss(model(x), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first


def larc_over_sgd_step(params, bufs, lr, momentum, wd, trust=0.001, eps=1e-8):
    """apex.parallel.LARC(SGD(params, momentum, weight_decay=wd), trust, clip=False).step(),
    restated: LARC rescales each gradient in place (adding the weight decay itself) and hands
    SGD a zero weight decay; a parameter or gradient of norm 0 keeps its raw gradient."""
    with torch.no_grad():
        for i, p in enumerate(params):
            grad = p.grad.clone()
            w_norm, g_norm = torch.norm(p), torch.norm(grad)
            if w_norm != 0 and g_norm != 0:
                adaptive = trust * w_norm / (g_norm + w_norm * wd + eps)
                grad = (grad + wd * p) * adaptive
            bufs[i] = grad.clone() if i not in bufs else bufs[i].mul(momentum).add(grad)
            p.add_(bufs[i], alpha=-lr)


def test_imagenet_optimizer_equals_larc_over_sgd():
    cfg = load_config("imagenet")
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.LeakyReLU(), torch.nn.Linear(8, 3)
    )
    net[3].bias.data.zero_()  # a parameter of norm 0: LARC leaves its gradient raw
    ref = [p.detach().clone().requires_grad_(True) for p in net.parameters()]
    opt = build_optimizer(net, cfg)
    assert len(opt.param_groups) == 1  # every parameter, biases and BN included
    bufs: dict = {}
    lrs = lr_schedule(cfg, 2)
    for step in range(4):
        x = torch.randn(16, 6)
        for group in opt.param_groups:
            group["lr"] = lrs[step]
        opt.zero_grad()
        net(x).square().sum().backward()
        for r, p in zip(ref, net.parameters(), strict=True):
            r.grad = p.grad.clone()
        opt.step()
        larc_over_sgd_step(ref, bufs, lrs[step], 0.9, 1e-6)
        for r, p in zip(ref, net.parameters(), strict=True):
            torch.testing.assert_close(p, r, rtol=1e-5, atol=1e-7, msg=f"step {step}")


def test_lars_rate_uses_the_raw_gradient_norm():
    w = torch.nn.Parameter(torch.full((4,), 2.0))
    opt = LARS([{"params": [w]}], lr=1.0, momentum=0.0, weight_decay=0.5, trust_coefficient=0.01)
    w.grad = torch.full((4,), 100.0)
    opt.step()
    # rate = 0.01 * 4 / (200 + 0.5 * 4) ; update = rate * (100 + 0.5 * 2) per element
    expected = 2.0 - 0.01 * 4 / 202 * 101
    torch.testing.assert_close(w.detach(), torch.full((4,), expected))
    assert math.isfinite(expected)


def test_unknown_optimizer():
    cfg = load_config("digits")
    cfg.optim.optimizer = "rmsprop"
    with pytest.raises(ValueError, match="sgd, adamw, lars"):
        build_optimizer(torch.nn.Linear(2, 2), cfg)


def reference_lars_step(params, state, lr, momentum, wd, trust=0.001, eps=1e-8, exclude=()):
    """apex LARC (clip off) over SGD, one parameter at a time, written out plainly."""
    with torch.no_grad():
        for i, p in enumerate(params):
            if i in exclude:  # plain SGD; their group has no weight decay
                d_p = p.grad.clone()
            else:
                w, g = p.norm(), p.grad.norm()
                d_p = p.grad.clone()
                if w > 0 and g > 0:
                    d_p = (p.grad + wd * p) * (trust * w / (g + wd * w + eps))
            state[i] = d_p.clone() if i not in state else state[i] * momentum + d_p
            p -= lr * state[i]


def test_foreach_lars_matches_the_per_parameter_update():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.BatchNorm1d(7), torch.nn.Linear(7, 3))
    ref = [p.detach().clone().requires_grad_(True) for p in net.parameters()]
    opt = LARS(
        parameter_groups(net, 1e-2, exclude_norm_bias=True), lr=0.5, momentum=0.9, weight_decay=1e-2
    )
    for group in opt.param_groups[1:]:
        group["lars_exclude"] = True
    exclude = {i for i, p in enumerate(net.parameters()) if p.ndim <= 1}
    state: dict = {}
    for step in range(3):
        x = torch.randn(8, 5)
        opt.zero_grad()
        net(x).square().sum().backward()
        for r, p in zip(ref, net.parameters(), strict=True):
            r.grad = p.grad.clone()
        opt.step()
        reference_lars_step(ref, state, 0.5, 0.9, 1e-2, exclude=exclude)
        for r, p in zip(ref, net.parameters(), strict=True):
            torch.testing.assert_close(p, r, atol=1e-6, rtol=1e-5, msg=f"step {step}")
