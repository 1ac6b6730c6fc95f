"""Numerical faults, full disks, read-only outputs, dying loader workers and signals.

All in-process (no subprocess): faults are injected by monkeypatching the loss, ``os``
calls or the dataset, and runs go through ``cli.main`` so exit codes and messages are the
user's.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import warnings
from pathlib import Path

import pytest
import torch

from selfclassifier import cli
from selfclassifier import storage as ckpt_module
from selfclassifier.config import load_config
from selfclassifier.data.folders import load_image_folder
from selfclassifier.errors import TrainingError
from selfclassifier.storage import (
    CheckpointError,
    CheckpointWriteError,
    check_writable,
    load_checkpoint,
    save_atomic,
)
from selfclassifier.train import loop as train_module
from selfclassifier.train.checkpoint import RunState, trim_metrics
from selfclassifier.train.guards import StopNow
from selfclassifier.views import LoaderRestartWarning, ViewSource
from selfclassifier.views.workers import _ClassicViews

# digits test split: 7 steps of 64 per epoch; checkpoints every 3 steps and at epoch ends.
TINY = [
    "--data", "digits", "--split", "test", "--epochs", "2", "--batch-size", "64",
    "--device", "cpu", "--checkpoint-every-steps", "3",
    "--set", "model.backbone=resnet20", "--set", "model.heads=[10]",
    "--set", "model.hidden_dim=32", "--set", "model.out_dim=16", "--set", "train.log_every=1",
]  # fmt: skip


def main(capsys, out: Path, *args: str) -> tuple[int, str]:
    code = cli.main(["train", "--out", str(out), *TINY, *args])
    return code, capsys.readouterr().err


def one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


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


def test_nan_step_stops_keeps_checkpoint_and_says_how_to_resume(capsys, tmp_path, nan_at_calls):
    nan_at_calls(5)  # global step 5 = epoch 0 step 4; the last checkpoint is step 3
    code, err = main(capsys, tmp_path, "--epochs", "1")
    assert code == 1
    line = one_error_line(err)
    assert "non-finite loss at epoch 0 step 4" in line
    assert "(epoch 0, step 3) is kept" in line and "rerun the same command" in line
    assert "--lr" in line and "--skip-nonfinite" in line
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["state"]["global_step"] == 3
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())

    nan_at_calls()  # the fault is gone: the same command resumes and finishes
    code, err = main(capsys, tmp_path, "--epochs", "1")
    assert code == 0, err
    assert "resuming from" in err and "epoch 0, step 3" in err


def test_non_finite_gradient_with_clipping_stops(capsys, tmp_path, monkeypatch):
    real = train_module.SelfClassifierLoss

    class NaNGradient(real):
        def forward(self, logits):
            loss = super().forward(logits)
            return loss + torch.sqrt(loss * 0)  # value unchanged, gradient 0 * inf = NaN

    monkeypatch.setattr(train_module, "SelfClassifierLoss", NaNGradient)
    code, err = main(capsys, tmp_path, "--set", "optim.clip_grad=1.0")
    assert code == 1
    assert "non-finite gradient norm at epoch 0 step 0" in one_error_line(err)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_absurd_learning_rate_stops_cleanly(capsys, tmp_path):
    code, err = main(capsys, tmp_path, "--lr", "1e30")
    assert code == 1
    line = one_error_line(err)
    assert "non-finite" in line and "lower learning rate" in line


def test_skip_nonfinite_counts_skipped_steps(capsys, tmp_path, nan_at_calls):
    nan_at_calls(2, 6)
    code, err = main(capsys, tmp_path, "--skip-nonfinite", "--epochs", "1")
    assert code == 0, err
    assert "skipped 2 step(s) with a non-finite loss" in err
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["state"]["skipped_steps"] == 2 and ckpt["state"]["global_step"] == 7
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    assert [r["skipped_steps"] for r in records if "global_step" in r] == [0, 1, 1, 1, 1, 2, 2]
    assert records[-1]["epoch_end"] == 0 and records[-1]["skipped_steps"] == 2


def test_non_finite_weights_are_never_saved(tmp_path):
    cfg = load_config("digits", {"data": {"split": "test"}, "train": {"batch_size": 64}})
    cfg.model.heads, cfg.train.device = [10], "cpu"
    trainer = train_module.Trainer(cfg, tmp_path, log=lambda m: None)
    trainer.save()
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with torch.no_grad():
        next(trainer.model.heads.parameters()).fill_(float("inf"))
    with pytest.raises(TrainingError, match="heads.0.* became non-finite"):
        trainer.save()
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


# ----------------------------------------------------------------------------- disk full


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def tmp_files(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if ".tmp-" in p.name]


@pytest.fixture
def previous(tmp_path) -> Path:
    path = tmp_path / "checkpoint.pt"
    save_atomic({"w": torch.arange(4.0)}, path)
    return path


@pytest.mark.parametrize("where", ["write", "fsync", "replace"])
def test_save_failure_keeps_previous_checkpoint(monkeypatch, previous, where):
    before = previous.read_bytes()
    if where == "write":

        class HalfWritten:
            """A file that takes the first bytes, then reports a full disk."""

            def __init__(self, path, mode):
                self.f = open(path, mode)  # noqa: SIM115

            def write(self, data):
                self.f.write(bytes(data[: len(data) // 2]))
                enospc()

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

        monkeypatch.setattr(ckpt_module, "open", HalfWritten, raising=False)
    else:
        monkeypatch.setattr(ckpt_module.os, where, enospc)
    with pytest.raises(CheckpointWriteError) as err:
        save_atomic({"w": torch.zeros(1000)}, previous)
    message = str(err.value)
    assert "\n" not in message and str(previous) in message
    assert "No space left on device" in message and "previous checkpoint" in message
    monkeypatch.undo()
    assert previous.read_bytes() == before and tmp_files(previous.parent) == []
    assert torch.equal(torch.load(previous, weights_only=True)["w"], torch.arange(4.0))


def test_small_outputs_are_atomic_too(monkeypatch, tmp_path):
    path = tmp_path / "config.yaml"
    ckpt_module.write_text_atomic(path, "old")
    monkeypatch.setattr(ckpt_module.os, "replace", enospc)
    with pytest.raises(CheckpointWriteError, match="could not write .*config.yaml.*No space"):
        ckpt_module.write_text_atomic(path, "new")
    assert path.read_text() == "old" and tmp_files(tmp_path) == []


def test_interrupt_during_save_leaves_no_temporary(previous):
    def interrupt(tmp):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        save_atomic({"w": torch.zeros(3)}, previous, before_replace=interrupt)
    assert (
        tmp_files(previous.parent) == []
        and torch.load(previous, weights_only=True)["w"].numel() == 4
    )


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory) -> Path:
    """A finished 1-epoch run, copied by the tests that continue it."""
    out = tmp_path_factory.mktemp("one_epoch")
    assert cli.main(["train", "--out", str(out), *TINY, "--epochs", "1"]) == 0
    return out


@pytest.fixture
def run_dir(one_epoch, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(one_epoch, out)
    return out


def test_disk_full_mid_run_fails_cleanly(capsys, run_dir, monkeypatch):
    tmp_path = run_dir
    before = (tmp_path / "checkpoint.pt").read_bytes()
    real_replace = os.replace

    def full_for_checkpoints(src, dst):
        if Path(dst).name == "checkpoint.pt":
            enospc()
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full_for_checkpoints)  # full before the step-9 save
    code, err = main(capsys, tmp_path, "--epochs", "2")
    monkeypatch.undo()
    assert code == 1
    line = one_error_line(err)
    assert f"could not write checkpoint '{tmp_path / 'checkpoint.pt'}'" in line
    assert "No space left on device" in line and "previous checkpoint" in line
    assert "training on" in err  # it failed mid-run, not at the start
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert load_checkpoint(tmp_path / "checkpoint.pt")["state"]["epoch"] == 1
    assert tmp_files(tmp_path) == []


# ----------------------------------------------------------------------------- read-only output


def test_read_only_output_simulated(capsys, run_dir, monkeypatch):
    tmp_path = run_dir
    before = (tmp_path / "checkpoint.pt").read_bytes()

    def erofs(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(ckpt_module.tempfile, "mkstemp", erofs)
    code, err = main(capsys, tmp_path, "--epochs", "2")
    assert code == 2
    line = one_error_line(err)
    assert f"output directory '{tmp_path}' is not writable: Read-only file system" in line
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through directory permissions")
def test_read_only_output_real(capsys, run_dir):
    tmp_path = run_dir
    before = (tmp_path / "checkpoint.pt").read_bytes()
    tmp_path.chmod(0o555)
    try:
        code, err = main(capsys, tmp_path, "--epochs", "2")
    finally:
        tmp_path.chmod(0o755)
    assert code == 2 and "is not writable" in one_error_line(err)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_check_writable_leaves_nothing_behind(tmp_path):
    check_writable(tmp_path / "not" / "yet")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        check_writable(tmp_path / "file" / "out")


# ----------------------------------------------------------------------------- loader workers


class _KillsItsWorkerOnce(torch.utils.data.Dataset):
    """Item 0 SIGKILLs the worker process the first time (like the OOM killer would)."""

    def __init__(self, ds, flag: Path):
        self.ds, self.flag = ds, flag
        self.paths, self.targets, self.mode = ds.paths, ds.targets, ds.mode

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        if i == 0 and torch.utils.data.get_worker_info() is not None and not self.flag.exists():
            self.flag.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return self.ds[i]


def test_dead_worker_restarts_the_epoch_where_it_stopped(tmp_path):
    from PIL import Image

    for k in range(8):
        path = tmp_path / "img" / f"{k}.png"
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (12, 10), (k * 30, 255 - k * 30, 7)).save(path)
    cfg = load_config("digits", {"train": {"batch_size": 4, "seed": 3}})
    cfg.augment.pipeline, cfg.augment.global_size = "classic", 8
    folder = load_image_folder(tmp_path / "img")
    device = torch.device("cpu")

    def views(ds, workers: int) -> list[torch.Tensor]:
        cfg.data.workers = workers
        source = ViewSource(ds, cfg, 3, device)
        try:
            return [torch.cat(v) for v in source.epoch(0)]
        finally:
            source.close()

    expected = views(folder, 0)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        got = views(_KillsItsWorkerOnce(folder, tmp_path / "fired"), 1)
    assert (tmp_path / "fired").exists()  # the worker did die
    assert any(issubclass(w.category, LoaderRestartWarning) for w in record)
    assert len(got) == len(expected)
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


def test_failing_transform_falls_through_to_next_sample():
    class Flaky(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return torch.full((1, 4, 4), i, dtype=torch.uint8), 0

    def transform(image):
        if int(image.max()) == 1:
            raise ValueError("pathological image")
        return [image.float()]

    views = _ClassicViews(Flaky(), transform, seed=0)
    with pytest.warns(UserWarning, match="skipping sample 1: ValueError"):
        (view,) = views[(0, 0, 1)]  # keys are (epoch, step, index)
    assert int(view.max()) == 2


# ----------------------------------------------------------------------------- signals


def test_second_signal_stops_at_once(tmp_path):
    cfg = load_config("digits", {"data": {"split": "test"}, "train": {"batch_size": 64}})
    cfg.model.heads, cfg.train.device = [10], "cpu"
    trainer = train_module.Trainer(cfg, tmp_path, log=lambda m: None)
    with trainer.signals.installed():
        os.kill(os.getpid(), signal.SIGTERM)
        assert trainer.signals.received == signal.SIGTERM  # the first one only asks
        with pytest.raises(StopNow) as stop:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # the handler runs between bytecodes
                pass
    assert stop.value.signum == signal.SIGINT
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored


def test_metrics_of_lost_steps_are_trimmed(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [{"global_step": s, "loss": 1.0} for s in range(1, 6)] + [{"epoch_end": 0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"global_st')
    trim_metrics(path, RunState(epoch=0, step=3, global_step=3))
    kept = [json.loads(line) for line in path.open()]
    assert [r["global_step"] for r in kept] == [1, 2, 3]


def test_two_runs_never_share_an_output_directory(capsys, tmp_path):
    import subprocess
    import sys

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time; f = open(sys.argv[1], 'a+'); "
            "fcntl.lockf(f, fcntl.LOCK_EX); f.write(f'{os.getpid()}\\n'); f.flush(); "
            "print('locked', flush=True); time.sleep(120)",
            str(tmp_path / ".lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, err = main(capsys, tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert code == 2
    line = one_error_line(err)
    assert f"another run (pid {holder.pid}) is training into '{tmp_path}'" in line
    assert not (tmp_path / "checkpoint.pt").exists()
