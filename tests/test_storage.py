"""Checkpoint files on disk: writes are atomic (a failed or interrupted save keeps the previous
file), and reads are safe: a checkpoint that would run code when unpickled is refused by every
loader and the code does not run (its marker file never appears); corrupt files give one-line
errors."""

from __future__ import annotations

import ast
import errno
import os
from pathlib import Path

import pytest
import torch

import selfclassifier
from selfclassifier import storage as ckpt_module
from selfclassifier.model.build import model_from_checkpoint
from selfclassifier.storage import (
    CheckpointError,
    CheckpointWriteError,
    check_writable,
    load_checkpoint,
    load_file,
    save_atomic,
)
from tests.helpers.checkpoints import HOW, evil_checkpoint

# ----------------------------------------------------------------------------- writing


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


def test_check_writable_leaves_nothing_behind(tmp_path):
    check_writable(tmp_path / "not" / "yet")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        check_writable(tmp_path / "file" / "out")


# ----------------------------------------------------------------------------- reading


def test_the_payload_is_real(tmp_path):
    """Positive control: an unrestricted load does run the payload."""
    marker = tmp_path / "marker"
    path = evil_checkpoint(tmp_path / "evil.pt", marker, "zip")
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("loader", [load_file, load_checkpoint, model_from_checkpoint])
def test_every_loader_refuses(tmp_path, how, loader):
    marker = tmp_path / "marker"
    path = evil_checkpoint(tmp_path / "evil.pt", marker, how)
    with pytest.raises(CheckpointError) as err:
        loader(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"refusing to load '{path}'")
    assert "could run code" in message
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [b"", b"hello, not a checkpoint\n" * 8, b"\x80\x02garbage", "truncated"],
    ids=["empty", "text", "bad pickle", "truncated"],
)
def test_corrupt_files_are_one_line(tmp_path, payload):
    path = tmp_path / "c.pt"
    if payload == "truncated":
        torch.save({"w": torch.zeros(1000)}, path)
        payload = path.read_bytes()[:-300]
    path.write_bytes(payload)
    with pytest.raises(CheckpointError, match="unreadable, truncated|corrupt") as err:
        load_file(path)
    assert "\n" not in str(err.value) and "could run code" not in str(err.value)


def test_plain_dict_without_marker_is_not_a_checkpoint(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not a selfclassifier checkpoint"):
        load_checkpoint(tmp_path / "x.pt")


def test_no_unrestricted_loads_in_the_package():
    """Every torch.load passes weights_only=True; nothing calls pickle.load(s) directly."""
    root = Path(selfclassifier.__file__).parent
    torch_loads = 0
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = getattr(node.func.value, "id", None)
            if owner == "torch" and node.func.attr == "load":
                torch_loads += 1
                safe = [
                    k
                    for k in node.keywords
                    if k.arg == "weights_only"
                    and isinstance(k.value, ast.Constant)
                    and k.value.value is True
                ]
                assert safe, f"{path.name}:{node.lineno}: torch.load without weights_only=True"
            assert not (owner == "pickle" and node.func.attr in ("load", "loads")), (
                f"{path.name}:{node.lineno}: pickle.{node.func.attr}"
            )
    assert torch_loads >= 1
