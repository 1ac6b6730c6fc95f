"""OUT/checkpoint.pt (train/checkpoint.py): a checkpoint of another architecture, with
mis-shaped tensors, holding weights only, or one that would run code is refused in one line
before any work; ``--resume`` continues from the given file; a full disk or a read-only OUT
fails cleanly with the previous checkpoint intact; metrics of lost steps are trimmed."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from selfclassifier import storage as ckpt_module
from selfclassifier.config import load_config
from selfclassifier.storage import FORMAT, load_checkpoint, save_atomic
from selfclassifier.train.checkpoint import RunState, trim_metrics
from tests.helpers import TINY_DIGITS, assert_one_error_line, one_error_line, run_cli
from tests.helpers.checkpoints import HOW, evil_checkpoint


def train(out: Path, *args) -> tuple[int, str]:
    """``train --out OUT TINY_DIGITS --epochs 1 ARGS`` in process: (exit code, stderr)."""
    code, _, err = run_cli("train", "--out", out, *TINY_DIGITS, "--epochs", "1", *args)
    return code, err


def tmp_files(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if ".tmp-" in p.name]


@pytest.fixture
def run_dir(tiny_digits_run, tmp_path) -> Path:
    """A copy of a finished 1-epoch run, for the tests that continue it."""
    out = tmp_path / "run"
    shutil.copytree(tiny_digits_run, out)
    return out


# ----------------------------------------------------------------------------- architecture


def test_checkpoint_of_another_architecture_in_out(tmp_path, tiny_digits_run, dataset_reads):
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes((tiny_digits_run / "checkpoint.pt").read_bytes())
    before = (out / "checkpoint.pt").read_bytes()
    code, err = train(out, "--set", "model.hidden_dim=64")
    assert code == 2
    assert_one_error_line(err, "model.hidden_dim=32", "model.hidden_dim=64", "checkpoint.pt")
    assert dataset_reads == [] and (out / "checkpoint.pt").read_bytes() == before


def test_resume_from_another_architecture(tmp_path, tiny_digits_run, dataset_reads):
    out = tmp_path / "out"
    code, err = train(
        out, "--resume", tiny_digits_run / "checkpoint.pt", "--set", "model.heads=[10,20]"
    )
    assert code == 2
    assert_one_error_line(err, "model.heads=[10]", "model.heads=[10, 20]")
    assert dataset_reads == [] and not out.exists()


def test_checkpoint_with_mis_shaped_tensors(tmp_path, tiny_digits_run):
    ckpt = torch.load(tiny_digits_run / "checkpoint.pt", weights_only=True)
    key = next(k for k in ckpt["model"] if k.endswith("weight"))
    ckpt["model"][key] = torch.zeros(3, 3)  # config says resnet20, tensors disagree
    out = tmp_path / "out"
    out.mkdir()
    torch.save(ckpt, out / "checkpoint.pt")
    code, err = train(out)
    assert code == 2
    assert_one_error_line(err, "does not match this model's architecture", key)


def test_resume_continues_from_given_checkpoint(tmp_path, tiny_digits_run):
    out = tmp_path / "out"
    code, err = train(out, "--resume", tiny_digits_run / "checkpoint.pt", "--epochs", "2")
    assert code == 0, err
    assert "resuming from" in err and "epoch 1, step 0" in err
    assert torch.load(out / "checkpoint.pt", weights_only=True)["state"]["epoch"] == 2


def test_resuming_a_weights_only_checkpoint_is_a_clear_error(tmp_path):
    cfg = load_config("digits")
    out = tmp_path / "run"
    out.mkdir()
    save_atomic({"format": FORMAT, "config": cfg.to_dict(), "model": {}}, out / "checkpoint.pt")
    code, _, err = run_cli("train", "--out", out, "--epochs", "1")
    assert code == 2
    assert err.startswith("error:") and "weights only" in err
    assert len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- untrusted files


@pytest.mark.parametrize("how", HOW)
def test_train_refuses_evil_checkpoint_in_out(tmp_path, how):
    out, marker = tmp_path / "out", tmp_path / "marker"
    out.mkdir()
    evil_checkpoint(out / "checkpoint.pt", marker, how)
    code, err = train(out)
    assert code == 2
    err = err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: refusing to load")
    assert not marker.exists()
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt"]  # no work started


def test_train_refuses_evil_resume_path(tmp_path):
    out, marker = tmp_path / "out", tmp_path / "marker"
    evil = evil_checkpoint(tmp_path / "shared.pt", marker, "zip")
    code, err = train(out, "--resume", evil)
    assert code == 2
    assert err.startswith("error: refusing to load")
    assert not marker.exists() and not out.exists()


# ----------------------------------------------------------------------------- disk full


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_mid_run_fails_cleanly(run_dir, monkeypatch):
    tmp_path = run_dir
    before = (tmp_path / "checkpoint.pt").read_bytes()
    real_replace = os.replace

    def full_for_checkpoints(src, dst):
        if Path(dst).name == "checkpoint.pt":
            enospc()
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full_for_checkpoints)  # full before the step-9 save
    code, err = train(tmp_path, "--epochs", "2")
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


def test_read_only_output_simulated(run_dir, monkeypatch):
    tmp_path = run_dir
    before = (tmp_path / "checkpoint.pt").read_bytes()

    def erofs(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(ckpt_module.tempfile, "mkstemp", erofs)
    code, err = train(tmp_path, "--epochs", "2")
    assert code == 2
    line = one_error_line(err)
    assert f"output directory '{tmp_path}' is not writable: Read-only file system" in line
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through directory permissions")
def test_read_only_output_real(run_dir):
    tmp_path = run_dir
    before = (tmp_path / "checkpoint.pt").read_bytes()
    tmp_path.chmod(0o555)
    try:
        code, err = train(tmp_path, "--epochs", "2")
    finally:
        tmp_path.chmod(0o755)
    assert code == 2 and "is not writable" in one_error_line(err)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


# ----------------------------------------------------------------------------- metrics


def test_metrics_of_lost_steps_are_trimmed(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [{"global_step": s, "loss": 1.0} for s in range(1, 6)] + [{"epoch_end": 0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"global_st')
    trim_metrics(path, RunState(epoch=0, step=3, global_step=3))
    kept = [json.loads(line) for line in path.open()]
    assert [r["global_step"] for r in kept] == [1, 2, 3]
