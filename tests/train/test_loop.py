"""The training loop (``Trainer``): the loss goes down, a step reads nothing back from the
device, and activation checkpointing is applied when asked."""

from __future__ import annotations

import pytest
import torch

from selfclassifier.config import load_config, parse_set
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
