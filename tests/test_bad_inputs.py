"""Bad configuration, paths, images and checkpoints: one ``error:`` line, exit 2, no work done.

Config checks run in-process through ``cli.main`` (fast); one subprocess run proves the real
entry point prints a single line. The bad-image folder trains end to end via the CLI.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_data import BROKEN_FILES, VALID_FILES, noise, save, write_bytes

from selfclassifier import cli
from selfclassifier.train import setup as train_setup

TINY = [
    "--data", "digits", "--split", "test", "--epochs", "1", "--batch-size", "64",
    "--device", "cpu",
    "--set", "model.backbone=resnet20", "--set", "model.heads=[10]",
    "--set", "model.hidden_dim=32", "--set", "model.out_dim=16",
]  # fmt: skip


@pytest.fixture
def dataset_reads(monkeypatch) -> list:
    """Records every dataset read, to prove a check ran before any work."""
    calls: list = []
    real = train_setup.build_dataset

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_setup, "build_dataset", spy)
    return calls


def main(capsys, out: Path, *args: str) -> tuple[int, str]:
    code = cli.main(["train", "--out", str(out), *TINY, *args])
    return code, capsys.readouterr().err


def assert_one_error_line(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


BAD_CONFIGS = {
    "unknown key": (["--set", "train.bogus=1"], "unknown config key 'train.bogus'"),
    "unknown section": (["--set", "trian.epochs=1"], "unknown config section 'trian'"),
    "wrong type": (["--set", "train.epochs=abc"], "train.epochs: expected an integer"),
    "wrong type flag": (["--epochs", "abc"], "argument --epochs: invalid int value"),
    "wrong list type": (["--set", "model.heads=10"], "model.heads: expected a list"),
    "head below 2": (["--set", "model.heads=[10,1]"], "model.heads[1] = 1"),
    "no heads": (["--set", "model.heads=[]"], "model.heads must list at least one"),
    "batch below 2": (["--batch-size", "1"], "train.batch_size must be >= 2"),
    "row tau zero": (["--set", "loss.row_tau=0"], "loss.row_tau must be > 0"),
    "col tau negative": (["--set", "loss.col_tau=-0.05"], "loss.col_tau must be > 0"),
    "negative local crops": (["--set", "augment.local_crops=-1"], "augment.local_crops"),
    "negative global crops": (["--set", "augment.global_crops=-2"], "augment.global_crops"),
    "scale zero": (["--set", "augment.global_scale=[0.0,1.0]"], "augment.global_scale"),
    "scale above 1": (["--set", "augment.local_scale=[0.5,1.5]"], "augment.local_scale"),
    "unknown backbone": (["--set", "model.backbone=resnet999"], "unknown backbone 'resnet999'"),
    "unknown preset": (["--config", "no_such_preset"], "unknown preset 'no_such_preset'"),
    "empty data path": (["--data", ""], "data.path is empty"),
    "bad set syntax": (["--set", "epochs"], "--set expects section.key=value"),
}


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_bad_config_is_one_line_exit_2_before_any_work(capsys, tmp_path, dataset_reads, name):
    args, needle = BAD_CONFIGS[name]
    out = tmp_path / "out"
    code, err = main(capsys, out, *args)
    assert code == 2
    assert_one_error_line(err, needle)
    assert not out.exists() and dataset_reads == []


def test_batch_not_divisible_across_ranks(capsys, tmp_path, dataset_reads, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")  # as torchrun would set; checked before joining
    code, err = main(capsys, tmp_path / "out", "--batch-size", "64")
    assert code == 2
    assert_one_error_line(err, "train.batch_size=64 (the global batch)", "across 3 processes")
    assert dataset_reads == []


@pytest.mark.parametrize("kind", ["missing", "empty dir", "a file"])
def test_bad_data_path(capsys, tmp_path, kind):
    data = tmp_path / "data"
    if kind == "empty dir":
        (data / "sub").mkdir(parents=True)
    elif kind == "a file":
        data.write_text("not a dataset")
    out = tmp_path / "out"
    code, err = main(capsys, out, "--data", str(data))
    assert code == 2
    assert_one_error_line(err, str(data))
    assert not out.exists()


def test_real_entry_point_prints_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "selfclassifier", "train", "--out", str(tmp_path / "o"), *TINY]
        + ["--set", "model.heads=[1]"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert_one_error_line(proc.stderr, "model.heads[0] = 1: a head needs at least 2 classes")


# ----------------------------------------------------------------------------- architecture


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained")
    assert cli.main(["train", "--out", str(out), *TINY]) == 0
    return out


def test_checkpoint_of_another_architecture_in_out(capsys, tmp_path, trained, dataset_reads):
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes((trained / "checkpoint.pt").read_bytes())
    before = (out / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    code, err = main(capsys, out, "--set", "model.hidden_dim=64")
    assert code == 2
    assert_one_error_line(err, "model.hidden_dim=32", "model.hidden_dim=64", "checkpoint.pt")
    assert dataset_reads == [] and (out / "checkpoint.pt").read_bytes() == before


def test_resume_from_another_architecture(capsys, tmp_path, trained, dataset_reads):
    out = tmp_path / "out"
    capsys.readouterr()
    code, err = main(
        capsys, out, "--resume", str(trained / "checkpoint.pt"), "--set", "model.heads=[10,20]"
    )
    assert code == 2
    assert_one_error_line(err, "model.heads=[10]", "model.heads=[10, 20]")
    assert dataset_reads == [] and not out.exists()


def test_checkpoint_with_mis_shaped_tensors(capsys, tmp_path, trained):
    ckpt = torch.load(trained / "checkpoint.pt", weights_only=True)
    key = next(k for k in ckpt["model"] if k.endswith("weight"))
    ckpt["model"][key] = torch.zeros(3, 3)  # config says resnet20, tensors disagree
    out = tmp_path / "out"
    out.mkdir()
    torch.save(ckpt, out / "checkpoint.pt")
    code, err = main(capsys, out)
    assert code == 2
    assert_one_error_line(err, "does not match this model's architecture", key)


def test_resume_continues_from_given_checkpoint(capsys, tmp_path, trained):
    out = tmp_path / "out"
    code, err = main(capsys, out, "--resume", str(trained / "checkpoint.pt"), "--epochs", "2")
    assert code == 0, err
    assert "resuming from" in err and "epoch 1, step 0" in err
    assert torch.load(out / "checkpoint.pt", weights_only=True)["state"]["epoch"] == 2


# ----------------------------------------------------------------------------- bad images


def folder_of_every_bad_kind(root: Path) -> int:
    """Valid images (plain and odd ones) in class folders next to every broken kind of file,
    an empty class folder, a symlink loop and non-UTF-8 names; returns the broken count."""
    for k in range(10):
        save(root / "plain" / f"{k}.png", noise((20, 16), seed=k))
    for name, (make, _) in VALID_FILES.items():
        write_bytes(root / "odd" / name, make())
    write_bytes(
        os.path.join(root, "odd", os.fsdecode(b"caf\xe9.png")), VALID_FILES["rgba.png"][0]()
    )
    for name, (make, _) in BROKEN_FILES.items():
        write_bytes(root / "broken" / name, make())
    write_bytes(os.path.join(root, "broken", os.fsdecode(b"bad\xff.jpg")), b"")
    (root / "empty_class").mkdir()
    os.symlink(root, root / "plain" / "loop")
    return len(BROKEN_FILES) + 1


FOLDER_ARGS = [
    "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--workers", "2",
    "--set", "augment.global_size=16", "--set", "augment.local_crops=0",
    "--set", "model.backbone=resnet20", "--set", "model.heads=[3]",
    "--set", "model.hidden_dim=32", "--set", "model.out_dim=16",
]  # fmt: skip


def cli_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "selfclassifier", "train", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_folder_of_bad_images_trains_and_lists_skipped(tmp_path):
    broken = folder_of_every_bad_kind(tmp_path / "data")
    out = tmp_path / "out"
    proc = cli_run("--data", str(tmp_path / "data"), "--out", str(out), *FOLDER_ARGS)
    assert proc.returncode == 0, proc.stderr
    warnings_lines = [line for line in proc.stderr.splitlines() if "warn" in line.lower()]
    assert warnings_lines == [
        f"warning: skipped {broken} unreadable image file(s); they are listed in "
        f"{out / 'skipped.txt'}"
    ]
    listed = (out / "skipped.txt").read_text(encoding="utf-8").splitlines()
    assert len(listed) == broken and all("\t" in line for line in listed)
    names = {os.path.basename(line.split("\t")[0]) for line in listed}
    assert names == set(BROKEN_FILES) | {"bad\\xff.jpg"}
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["data"]["num_samples"] == 10 + len(VALID_FILES) + 1
    assert ckpt["data"]["classes"] == ["broken", "odd", "plain"]  # the empty folder is none
    assert (out / "eval.json").is_file()


@pytest.mark.slow
def test_strict_fails_before_training(tmp_path):
    broken = folder_of_every_bad_kind(tmp_path / "data")
    out = tmp_path / "out"
    proc = cli_run("--data", str(tmp_path / "data"), "--out", str(out), "--strict", *FOLDER_ARGS)
    assert proc.returncode == 2
    assert_one_error_line(proc.stderr, f"{broken} unreadable image file(s)", "strict")
    assert not out.exists()
