"""Checkpoint files on disk: atomic, fsynced writes and ``weights_only`` reads.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only, so it loads with
``torch.load(weights_only=True)``: a file that carries a pickled object (code) is refused.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from selfclassifier.errors import CheckpointError, CheckpointWriteError

FORMAT = "selfclassifier/1"


TMP_PREFIX = "."
TMP_MARK = ".tmp-"


def _tmp_path(path: Path) -> Path:
    return path.with_name(f"{TMP_PREFIX}{path.name}{TMP_MARK}{os.getpid()}")


def save_atomic(
    obj: dict,
    path: str | os.PathLike,
    before_replace: Callable[[Path], None] | None = None,
) -> None:
    """Write ``obj`` to ``path`` so that a crash never leaves a half-written file there.

    The bytes go to a temporary file in the same directory, are fsynced, and replace ``path``
    with ``os.replace`` (atomic on POSIX), then the directory is fsynced so the rename itself
    survives a power cut. Any failure (disk full, read-only, an interrupt) removes the
    temporary file and leaves the previous checkpoint untouched; OS errors become
    CheckpointWriteError. ``before_replace(tmp)`` is a fault-injection point for tests.
    """
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise CheckpointWriteError(
                f"could not write checkpoint '{path}': {_os_reason(e)}; the previous "
                "checkpoint (if any) is unchanged"
            ) from None
        raise


def _os_reason(e: OSError) -> str:
    hint = {
        errno.ENOSPC: " (free some disk space or pass --out elsewhere, then rerun)",
        errno.EDQUOT: " (disk quota exceeded; free space or pass --out elsewhere)",
        errno.EROFS: " (pass --out to a writable directory)",
        errno.EACCES: " (pass --out to a writable directory)",
        errno.EPERM: " (pass --out to a writable directory)",
    }.get(e.errno, "")
    return f"{e.strerror or e}{hint}"


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Small outputs (config, lists, metrics, eval) also go through a temp file + rename."""
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        tmp.write_text(text, encoding="utf-8", errors="replace")
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise CheckpointWriteError(
                f"could not write '{path}': {_os_reason(e)}; the previous version is unchanged"
            ) from None
        raise


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete temporary files a killed writer of ``path`` left behind; returns them."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f"{TMP_PREFIX}{path.name}{TMP_MARK}*"):
        if tmp != _tmp_path(path):
            try:
                tmp.unlink()
                removed.append(tmp)
            except OSError:
                pass
    return removed


def check_writable(directory: str | os.PathLike) -> None:
    """Prove files can be created in ``directory`` (or, if it does not exist yet, in its
    nearest existing parent) without leaving anything behind; CheckpointError if not."""
    directory = Path(directory)
    target = directory
    while not target.exists() and target.parent != target:
        target = target.parent
    if not target.is_dir():
        raise CheckpointError(
            f"output directory '{directory}' cannot be created: '{target}' is a file; "
            "pass --out to a directory"
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=target)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:  # a bad --out: exit 2 like any other bad input
        raise CheckpointError(
            f"output directory '{directory}' is not writable: {_os_reason(e)}"
        ) from None


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_file(path: str | os.PathLike, map_location="cpu") -> dict:
    """``torch.load(weights_only=True)``; one-line errors for missing, corrupt or unsafe files.

    The restricted unpickler only rebuilds tensors and plain containers, so a file that
    carries a pickled object (``__reduce__`` calling ``os.system``, say) is refused before
    anything in it runs.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' not found")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" not in str(e).lower():
            raise CheckpointError(_corrupt(path, e)) from None
        detail = _unsafe_detail(e)
        if "global" not in detail.lower():
            raise CheckpointError(
                f"refusing to load '{path}': the safe loader rejects its content ({detail}); "
                "the file is corrupt or holds more than tensors and plain data"
            ) from None
        raise CheckpointError(
            f"refusing to load '{path}': it contains pickled Python objects, not only "
            f"tensors and plain data ({detail}), and loading it could run code; "
            "only checkpoints written by selfclassifier (or converted to its format) are accepted"
        ) from None
    except Exception as e:  # zip, EOF, key and OS errors all mean: not a readable file
        raise CheckpointError(_corrupt(path, e)) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint '{path}' is not a selfclassifier checkpoint")
    return obj


def _corrupt(path: Path, e: BaseException) -> str:
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    return (
        f"checkpoint '{path}' is unreadable, truncated or not a PyTorch file ({first}); "
        "use another checkpoint, or delete it to start afresh"
    )


def _unsafe_detail(e: BaseException) -> str:
    """The line of torch's long message that names the blocked global."""
    for line in str(e).splitlines():
        low = line.lower()
        if "unsupported global" in low or "unsupported operand" in low:
            return line.strip().rstrip(".")[:200]
    return "unsupported content"


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load and check a selfclassifier checkpoint (see :func:`load_file`)."""
    ckpt = load_file(path, map_location)
    if ckpt.get("format") != FORMAT or "model" not in ckpt or "config" not in ckpt:
        raise CheckpointError(
            f"'{path}' is not a selfclassifier checkpoint (no '{FORMAT}' "
            "marker); official Self-Classifier files need 'selfclassifier "
            "convert' first"
        )
    return ckpt


@dataclass(frozen=True)
class DataRecord:
    """What a checkpoint records about the data its model was trained on (``ckpt["data"]``).

    Every tool that loads a run reads it through :meth:`of` (a converted or older checkpoint
    may lack some or all of it; the defaults are what those files meant).

    >>> DataRecord.of({"data": {"channels": 1, "image_size": 28}}).channels
    1
    """

    channels: int = 3
    image_size: int = 224
    classes: tuple[str, ...] = ()
    num_samples: int | None = None
    in_memory: bool | None = None

    @classmethod
    def of(cls, ckpt: dict) -> DataRecord:
        info = ckpt.get("data")
        if not isinstance(info, dict):
            info = {}
        samples, in_memory = info.get("num_samples"), info.get("in_memory")
        return cls(
            channels=int(info.get("channels", 3)),
            image_size=int(info.get("image_size", 224)),
            classes=tuple(str(c) for c in info.get("classes") or ()),
            num_samples=None if samples is None else int(samples),
            in_memory=None if in_memory is None else bool(in_memory),
        )

    def to_dict(self) -> dict:
        """The checkpoint's ``data`` entry (plain types: it loads with ``weights_only``)."""
        return {
            "channels": self.channels,
            "image_size": self.image_size,
            "classes": list(self.classes),
            "num_samples": self.num_samples,
            "in_memory": self.in_memory,
        }
