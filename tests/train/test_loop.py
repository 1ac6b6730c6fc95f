"""The training loop (``Trainer``): the loss goes down, a step reads nothing back from the
device, activation checkpointing is applied when asked, and the precision and memory
format options do what they say on CPU."""

from __future__ import annotations

import pytest
import torch

from selfclassifier.config import load_config, parse_set
from selfclassifier.train import setup
from selfclassifier.train.loop import Trainer
from tests.helpers import small_views_config
from tests.helpers.spies import SyncSpy


def test_trainer_loss_decreases_on_digits(tmp_path):
    cfg = load_config(
        "digits",
        parse_set(
            [
                "model.heads=[10]",
                "model.hidden_dim=64",
                "model.out_dim=32",
                "train.epochs=4",
                "train.batch_size=256",
                "optim.warmup_epochs=0",
            ]
        ),
    )
    trainer = Trainer(cfg, tmp_path / "t", log=lambda m: None)
    first = trainer.train_one_epoch(0)["loss"]
    trainer.state.epoch, trainer.state.step = 1, 0
    for epoch in (1, 2, 3):
        last = trainer.train_one_epoch(epoch)["loss"]
        trainer.state.step = 0
    assert last < first


@pytest.mark.parametrize("optimizer", ["lars", "sgd"])
def test_train_step_reads_nothing_back_from_the_device(tmp_path, optimizer):
    cfg = small_views_config(optim={"optimizer": optimizer}, train={"queue_size": 24})
    trainer = Trainer(cfg, tmp_path, log=lambda m: None)
    views = next(iter(trainer.source.epoch(0)))
    trainer.queue.push(torch.nn.functional.normalize(torch.randn(24, 16), dim=1))
    trainer.train_step(views, 0.1, epoch=0)  # first step creates optimizer state
    with SyncSpy() as spy:
        for _ in range(2):
            loss, _ = trainer.train_step(views, 0.1, epoch=0)
    assert spy.calls == []
    assert torch.isfinite(loss)


def test_trainer_applies_activation_checkpointing(tmp_path):
    cfg = small_views_config(train={"grad_checkpointing": True})
    trainer = Trainer(cfg, tmp_path, log=lambda m: None)
    block = trainer.model.backbone.layers[0]
    assert "forward" in vars(block)  # wrapped in place
    views = next(iter(trainer.source.epoch(0)))
    loss, _ = trainer.train_step(views, 0.1, epoch=0)
    assert torch.isfinite(loss)


@pytest.mark.parametrize(
    ("precision", "native", "expected"),
    [
        ("auto", True, None),  # auto keeps CPU runs in float32 on every CPU
        ("auto", False, None),
        ("native_bf16", True, torch.bfloat16),
        ("native_bf16", False, None),  # emulated bf16 is slower than float32: not used
        ("bf16", False, torch.bfloat16),  # asked for by name: used wherever it runs
        ("fp32", True, None),
    ],
)
def test_cpu_precision_follows_the_hardware_only_when_asked(
    monkeypatch, precision, native, expected
):
    monkeypatch.setattr(setup, "cpu_has_native_bf16", lambda: native)
    assert setup.autocast_dtype(precision, torch.device("cpu")) == expected


@pytest.mark.parametrize("native", [True, False])
def test_native_bf16_backbone_runs_in_the_resolved_precision(tmp_path, monkeypatch, native):
    monkeypatch.setattr(setup, "cpu_has_native_bf16", lambda: native)
    trainer = Trainer(
        small_views_config(train={"precision": "native_bf16"}), tmp_path, log=lambda m: None
    )
    seen = []
    trainer.model.backbone.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    views = next(iter(trainer.source.epoch(0)))
    loss, _ = trainer.train_step(views, 0.1, epoch=0)
    assert torch.isfinite(loss) and loss.dtype == torch.float32  # heads and loss stay fp32
    assert set(seen) == {torch.bfloat16 if native else torch.float32}


def test_channels_last_on_cpu_changes_the_layout_not_the_step(tmp_path):
    """The same weights and views give the same loss and update in either memory format."""
    results = {}
    for channels_last in (True, False):
        cfg = small_views_config(train={"channels_last": channels_last, "precision": "fp32"})
        torch.manual_seed(0)
        trainer = Trainer(cfg, tmp_path / str(channels_last), log=lambda m: None)
        convs = [m for m in trainer.model.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
        conv = next(c for c in convs if c.in_channels > 1)
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) == channels_last
        views = next(iter(trainer.source.epoch(0)))
        loss, _ = trainer.train_step(views, 0.1, epoch=0)
        results[channels_last] = (loss.item(), conv.weight.grad.clone())
    assert results[True][0] == pytest.approx(results[False][0], rel=1e-5)
    # the column softmax (tau 0.05) amplifies float32 rounding into the gradients: compare
    # against the gradient's scale, which a wrongly laid-out tensor would miss by far
    grad_cl, grad = results[True][1], results[False][1]
    assert (grad_cl - grad).abs().max() <= 1e-2 * grad.abs().max()
