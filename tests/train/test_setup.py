"""Reading the data for a run (train/setup.py): a folder of every kind of bad image trains end
to end, with one warning line and the skipped files listed in OUT/skipped.txt, or fails before
training under ``--strict``. In process through ``cli.main``, loader workers included."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.helpers import TINY, assert_one_error_line, heads, run_cli
from tests.helpers.images import BROKEN_FILES, VALID_FILES, write_bytes, write_images


def folder_of_every_bad_kind(root: Path) -> int:
    """Valid images (plain and odd ones) in class folders next to every broken kind of file,
    an empty class folder, a symlink loop and non-UTF-8 names; returns the broken count."""
    write_images(root, classes=["plain"], per_class=10, size=(20, 16), broken=True)
    for name, (make, _) in VALID_FILES.items():
        write_bytes(root / "odd" / name, make())
    write_bytes(
        os.path.join(root, "odd", os.fsdecode(b"caf\xe9.png")), VALID_FILES["rgba.png"][0]()
    )
    write_bytes(os.path.join(root, "broken", os.fsdecode(b"bad\xff.jpg")), b"")
    (root / "empty_class").mkdir()
    os.symlink(root, root / "plain" / "loop")
    return len(BROKEN_FILES) + 1


FOLDER_ARGS = [
    "--epochs", "1", "--batch-size", "8", "--workers", "2",
    "--set", "augment.global_size=16", "--set", "augment.local_crops=0", *TINY, *heads(3),
]  # fmt: skip


@pytest.mark.slow
def test_folder_of_bad_images_trains_and_lists_skipped(tmp_path):
    broken = folder_of_every_bad_kind(tmp_path / "data")
    out = tmp_path / "out"
    code, _, err = run_cli("train", "--data", tmp_path / "data", "--out", out, *FOLDER_ARGS)
    assert code == 0, err
    warnings_lines = [line for line in err.splitlines() if "warn" in line.lower()]
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
    code, _, err = run_cli(
        "train", "--data", tmp_path / "data", "--out", out, "--strict", *FOLDER_ARGS
    )
    assert code == 2
    assert_one_error_line(err, f"{broken} unreadable image file(s)", "strict")
    assert not out.exists()
