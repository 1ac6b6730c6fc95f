"""The test harness: one way to run the CLI, one way to start a process, one tiny model.

* :func:`run_cli` runs ``selfclassifier ARGS`` in this process through ``cli.main`` and
  returns ``(exit code, stdout, stderr)``. Every test that is about what a command does uses
  it: no interpreter start-up, and the same code path as the console script.
* :func:`start_python` / :func:`run_python` start ``python ARGS`` as a separate process. Only
  for tests where the process is the point: kill -9, signals, torchrun, the interpreter's exit,
  the real entry point, two processes holding the output lock.
* :data:`TINY` is the tiny model as CLI flags (with ``--device cpu``), :func:`heads` the
  ``model.heads`` flag, and :func:`tiny_config` the same model as a ``Config`` for in-process
  ``Trainer`` / ``ViewSource`` tests.

Image folders: :mod:`tests.helpers.images` (and the ``make_images`` fixture in conftest.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]

# ----------------------------------------------------------------------------- the tiny model

# Small, quick models for end-to-end runs: the point is the plumbing, not accuracy. One
# shared projection (the authors' design; the digits preset has one per head), so the
# embedding is out_dim wide; tests of per_head ask for it.
TINY_MODEL = {"backbone": "resnet20", "hidden_dim": 32, "out_dim": 16, "head_projection": "shared"}

TINY = [
    "--device", "cpu",
    "--set", "model.backbone=resnet20",
    "--set", "model.hidden_dim=32",
    "--set", "model.out_dim=16",
    "--set", "model.head_projection=shared",
]  # fmt: skip

# digits' 450-image test split: the data of most end-to-end runs.
DIGITS_TEST = ["--data", "digits", "--split", "test"]


def heads(*classes: int) -> list[str]:
    """``--set model.heads=[...]``."""
    return ["--set", f"model.heads=[{','.join(str(c) for c in classes)}]"]


# digits' test split at 64 per step: 7 steps per epoch; checkpoints every 3 steps and at
# epoch ends; one record per step in metrics.jsonl. Two epochs (14 steps) unless told.
TINY_DIGITS = [
    *DIGITS_TEST, "--epochs", "2", "--batch-size", "64", "--checkpoint-every-steps", "3",
    *TINY, *heads(10), "--set", "train.log_every=1",
]  # fmt: skip


def tiny_config(path="digits", /, **sections: dict):
    """The digits preset with :data:`TINY_MODEL` on the CPU, reading ``path``; ``sections``
    override per section (``train={"epochs": 2}``), the model's keys on top of the tiny ones."""
    from selfclassifier.config import load_config

    over: dict = {
        "model": dict(TINY_MODEL),
        "train": {"device": "cpu"},
        "data": {"path": str(path)},
    }
    for section, values in sections.items():
        over.setdefault(section, {}).update(values)
    return load_config("digits", over)


# 2 classes' heads, 16/8 px views with 2 local crops, batches of 8, one epoch, no workers:
# small enough for an image folder of 20 files.
SMALL_VIEWS = {
    "model": {"heads": [4, 6]},
    "augment": {"global_size": 16, "local_size": 8, "local_crops": 2},
    "train": {"batch_size": 8, "epochs": 1, "log_every": 1},
    "data": {"workers": 0},
}


def small_views_config(path="digits", /, **sections: dict):
    """:func:`tiny_config` with :data:`SMALL_VIEWS`, then ``sections``."""
    merged = {k: dict(v) for k, v in SMALL_VIEWS.items()}
    for section, values in sections.items():
        merged.setdefault(section, {}).update(values)
    return tiny_config(path, **merged)


def small_recipe(**kw):
    """The DINO recipe (colour, blur, solarise, flip) at tiny sizes: 2 global + 2 local."""
    from selfclassifier.config import AugmentConfig

    cfg = AugmentConfig(global_size=16, local_size=8, local_crops=2)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


# ----------------------------------------------------------------------------- the CLI


class _Stream(io.TextIOWrapper):
    """A text stream like the real ones (``reconfigure``, ``isatty``), kept in memory."""

    def __init__(self):
        super().__init__(io.BytesIO(), encoding="utf-8", errors="surrogateescape")

    def text(self) -> str:
        self.flush()
        return self.buffer.getvalue().decode("utf-8", "surrogateescape")


def run_cli(*args) -> tuple[int, str, str]:
    """``selfclassifier ARGS`` in this process: (exit code, stdout, stderr)."""
    from selfclassifier import cli

    out, err = _Stream(), _Stream()
    shown = warnings.showwarning  # cli.main installs its own; put the test's back after
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main([str(a) for a in args])
            except SystemExit as e:  # not expected: cli.main turns usage errors into codes
                code = e.code if isinstance(e.code, int) else 1
    finally:
        warnings.showwarning = shown
    return code, out.text(), err.text()


def assert_one_error_line(err: str, *needles: str) -> str:
    """stderr is exactly one ``error: ...`` line holding every needle; returns it."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def one_error_line(err: str) -> str:
    """stderr (progress lines allowed) holds exactly one ``error:`` line and no traceback;
    returns it."""
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def one_line(err: BaseException) -> bool:
    """An exception's message is one non-empty line."""
    return "\n" not in str(err) and str(err).strip() != ""


def read_jsonl(path) -> list[dict]:
    """The records of a JSON-lines file (metrics.jsonl)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line]


# ----------------------------------------------------------------------------- processes


def start_python(*args, env: dict | None = None, **popen) -> subprocess.Popen:
    """``python ARGS`` as a separate process, stdout and stderr piped as text. ``env`` adds
    to this process's environment; a value of None removes the variable."""
    full_env = dict(os.environ)
    for key, value in (env or {}).items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = str(value)
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(
        [sys.executable, *map(str, args)], env=full_env, text=True, **popen
    )  # fmt: skip


def run_python(*args, env: dict | None = None, timeout: float = 300, **popen):
    """:func:`start_python`, waited for: a CompletedProcess (text)."""
    proc = start_python(*args, env=env, **popen)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# ----------------------------------------------------------------------------- small things


@contextlib.contextmanager
def one_thread():
    """One intra-op thread: on a small shared CPU, two threads oversubscribe it and tiny ops
    (and OpenMP's spinning) make runs several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def gaussian_blobs(n_per_class: int, dim: int, num_classes: int, spread: float, seed: int):
    """Well separated blobs: class c is centred on a random direction scaled by 10."""
    g = torch.Generator().manual_seed(seed)
    centres = 10 * torch.nn.functional.normalize(torch.randn(num_classes, dim, generator=g), dim=1)
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    feats = centres[labels] + spread * torch.randn(len(labels), dim, generator=g)
    return feats, labels
