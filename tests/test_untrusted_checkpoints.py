"""A checkpoint that would run code when unpickled is refused by every loader, and the code
does not run (its marker file never appears); corrupt files give one-line errors."""

from __future__ import annotations

import ast
import os
import pickle
import shlex
from pathlib import Path

import pytest
import torch

import selfclassifier
from selfclassifier import cli
from selfclassifier.interop.official import convert_official
from selfclassifier.interop.pretrained import read_state_dict
from selfclassifier.interop.torchfile import read_tensors
from selfclassifier.model.build import model_from_checkpoint
from selfclassifier.storage import FORMAT, CheckpointError, load_checkpoint, load_file


class _Payload:
    """Unpickling this runs ``touch MARKER``: the attack a shared checkpoint can carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def evil_checkpoint(path: Path, marker: Path, how: str) -> Path:
    ckpt = {
        "format": FORMAT,
        "config": {},
        "model": {"w": torch.zeros(2)},
        "state": _Payload(marker),
    }
    if how == "zip":
        torch.save(ckpt, path)
    elif how == "legacy":
        torch.save(ckpt, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(ckpt, protocol=2))
    return path


HOW = ["zip", "legacy", "raw pickle"]


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


def _read_weights(path):
    return read_state_dict(path)


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("reader", [read_tensors, convert_official, _read_weights])
def test_readers_of_foreign_files_refuse(tmp_path, how, reader):
    """convert and --init-backbone read files with foreign objects, but not an os.system call."""
    marker = tmp_path / "marker"
    path = evil_checkpoint(tmp_path / "evil.pt", marker, how)
    with pytest.raises(CheckpointError) as err:
        reader(path)
    message = str(err.value)
    assert "\n" not in message and not marker.exists()
    if how == "zip":
        assert message.startswith(f"refusing to read '{path}'") and "blocked" in message
    elif reader is _read_weights:  # not zip: the plain weights_only load refuses it
        assert message.startswith(f"refusing to load '{path}'") and "could run code" in message
    else:
        assert "not a PyTorch zip checkpoint" in message


TINY = [
    "--data", "digits", "--split", "test", "--epochs", "1", "--batch-size", "64",
    "--device", "cpu", "--set", "model.backbone=resnet20", "--set", "model.heads=[10]",
]  # fmt: skip


@pytest.mark.parametrize("how", HOW)
def test_train_refuses_evil_checkpoint_in_out(capsys, tmp_path, how):
    out, marker = tmp_path / "out", tmp_path / "marker"
    out.mkdir()
    evil_checkpoint(out / "checkpoint.pt", marker, how)
    assert cli.main(["train", "--out", str(out), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: refusing to load")
    assert not marker.exists()
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt"]  # no work started


def test_train_refuses_evil_resume_path(capsys, tmp_path):
    out, marker = tmp_path / "out", tmp_path / "marker"
    evil = evil_checkpoint(tmp_path / "shared.pt", marker, "zip")
    assert cli.main(["train", "--out", str(out), "--resume", str(evil), *TINY]) == 2
    assert capsys.readouterr().err.startswith("error: refusing to load")
    assert not marker.exists() and not out.exists()


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
