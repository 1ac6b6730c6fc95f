"""What guards a run (train/guards.py): non-finite losses, gradients and weights stop it with
the last checkpoint kept (or are skipped when asked), a second signal stops at once, and two
runs never share an output directory.

In-process: faults are injected by monkeypatching the loss, and runs go through ``cli.main``
(``run_cli``) so exit codes and messages are the user's. The lock test holds the lock from a
second process: two processes are its point.
"""

from __future__ import annotations

import itertools
import os
import signal
from pathlib import Path

import pytest
import torch

from selfclassifier.errors import TrainingError
from selfclassifier.storage import load_checkpoint
from selfclassifier.train import loop as train_module
from selfclassifier.train.guards import StopNow
from selfclassifier.train.loop import Trainer
from tests.helpers import (
    TINY_DIGITS,
    one_error_line,
    read_jsonl,
    run_cli,
    small_views_config,
    start_python,
    tiny_config,
)


def train(out: Path, *args: str) -> tuple[int, str]:
    """``train --out OUT TINY_DIGITS ARGS`` in process: (exit code, stderr)."""
    code, _, err = run_cli("train", "--out", out, *TINY_DIGITS, *args)
    return code, err


@pytest.fixture
def nan_at_calls(monkeypatch):
    """Make the loss NaN on the given (1-based) calls: a NaN-injected step."""

    def install(*calls: int) -> None:
        real = train_module.SelfClassifierLoss

        class Poisoned(real):
            count = 0

            def forward(self, logits):
                Poisoned.count += 1
                loss = super().forward(logits)
                return loss * float("nan") if Poisoned.count in calls else loss

        monkeypatch.setattr(train_module, "SelfClassifierLoss", Poisoned)

    return install


# ----------------------------------------------------------------------------- numerical faults


def test_nan_step_stops_keeps_checkpoint_and_says_how_to_resume(tmp_path, nan_at_calls):
    nan_at_calls(5)  # global step 5 = epoch 0 step 4; the last checkpoint is step 3
    code, err = train(tmp_path, "--epochs", "1")
    assert code == 1
    line = one_error_line(err)
    assert "non-finite loss at epoch 0 step 4" in line
    assert "(epoch 0, step 3) is kept" in line and "rerun the same command" in line
    assert "--lr" in line and "--skip-nonfinite" in line
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["state"]["global_step"] == 3
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())

    nan_at_calls()  # the fault is gone: the same command resumes and finishes
    code, err = train(tmp_path, "--epochs", "1")
    assert code == 0, err
    assert "resuming from" in err and "epoch 0, step 3" in err


def test_non_finite_gradient_with_clipping_stops(tmp_path, monkeypatch):
    real = train_module.SelfClassifierLoss

    class NaNGradient(real):
        def forward(self, logits):
            loss = super().forward(logits)
            return loss + torch.sqrt(loss * 0)  # value unchanged, gradient 0 * inf = NaN

    monkeypatch.setattr(train_module, "SelfClassifierLoss", NaNGradient)
    code, err = train(tmp_path, "--set", "optim.clip_grad=1.0")
    assert code == 1
    assert "non-finite gradient norm at epoch 0 step 0" in one_error_line(err)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_absurd_learning_rate_stops_cleanly(tmp_path):
    code, err = train(tmp_path, "--lr", "1e30")
    assert code == 1
    line = one_error_line(err)
    assert "non-finite" in line and "lower learning rate" in line


def test_skip_nonfinite_counts_skipped_steps(tmp_path, nan_at_calls):
    nan_at_calls(2, 6)
    code, err = train(tmp_path, "--skip-nonfinite", "--epochs", "1")
    assert code == 0, err
    assert "skipped 2 step(s) with a non-finite loss" in err
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["state"]["skipped_steps"] == 2 and ckpt["state"]["global_step"] == 7
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["skipped_steps"] for r in records if "global_step" in r] == [0, 1, 1, 1, 1, 2, 2]
    assert records[-1]["epoch_end"] == 0 and records[-1]["skipped_steps"] == 2


def test_non_finite_loss_is_caught_at_the_next_check_and_never_saved(tmp_path):
    cfg = small_views_config(train={"epochs": 1, "log_every": 3})
    trainer = Trainer(cfg, tmp_path, log=lambda m: None)
    real = trainer.loss_fn
    trainer.loss_fn = lambda logits: real(logits) * float("nan")
    with pytest.raises(TrainingError, match="non-finite loss"):
        trainer.fit()
    assert not (tmp_path / "checkpoint.pt").exists()


def test_skip_nonfinite_still_skips_steps(tmp_path):
    cfg = small_views_config(train={"epochs": 1, "skip_nonfinite": True})
    trainer = Trainer(cfg, tmp_path, log=lambda m: None)
    real = trainer.loss_fn
    trainer.loss_fn = lambda logits: real(logits) * float("nan")
    before = [p.clone() for p in trainer.model.parameters()]
    for views in itertools.islice(trainer.source.epoch(0), 3):
        loss, _ = trainer.train_step(views, 0.1, epoch=0)  # returned for the step's log record
        assert not torch.isfinite(loss)
    assert trainer.state.skipped_steps == 3
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))


def test_non_finite_weights_are_never_saved(tmp_path):
    cfg = tiny_config(data={"split": "test"}, train={"batch_size": 64}, model={"heads": [10]})
    trainer = Trainer(cfg, tmp_path, log=lambda m: None)
    trainer.save()
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with torch.no_grad():
        next(trainer.model.heads.parameters()).fill_(float("inf"))
    with pytest.raises(TrainingError, match="heads.0.* became non-finite"):
        trainer.save()
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


# ----------------------------------------------------------------------------- signals


def test_second_signal_stops_at_once(tmp_path):
    cfg = tiny_config(data={"split": "test"}, train={"batch_size": 64}, model={"heads": [10]})
    trainer = Trainer(cfg, tmp_path, log=lambda m: None)
    with trainer.signals.installed():
        os.kill(os.getpid(), signal.SIGTERM)
        assert trainer.signals.received == signal.SIGTERM  # the first one only asks
        with pytest.raises(StopNow) as stop:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # the handler runs between bytecodes
                pass
    assert stop.value.signum == signal.SIGINT
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored


# ----------------------------------------------------------------------------- the output lock


def test_two_runs_never_share_an_output_directory(tmp_path):
    holder = start_python(
        "-c",
        "import fcntl, os, sys, time; f = open(sys.argv[1], 'a+'); "
        "fcntl.lockf(f, fcntl.LOCK_EX); f.write(f'{os.getpid()}\\n'); f.flush(); "
        "print('locked', flush=True); time.sleep(120)",
        tmp_path / ".lock",
        stderr=None,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, err = train(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert code == 2
    line = one_error_line(err)
    assert f"another run (pid {holder.pid}) is training into '{tmp_path}'" in line
    assert not (tmp_path / "checkpoint.pt").exists()
