"""Kill -9 / SIGTERM / SIGINT at chosen points, restart the same command, compare bitwise.

Every run to kill is a real CLI subprocess (a process to kill is the point); the uninterrupted
references and the final reruns go through ``cli.main`` in this process. All run on CPU in
--deterministic mode with a tiny model; the kill points come from the test-only fault
injection SELFCLASSIFIER_TEST_KILL_AT_STEP
("N": SIGKILL right after global step N's update; "N:save": SIGKILL inside the checkpoint
write of step N, after the temporary file is complete and before the rename).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from selfclassifier.train.guards import TEST_KILL_ENV
from tests.helpers import TINY, TINY_DIGITS, heads, run_cli, start_python
from tests.helpers.images import write_arrays

pytestmark = pytest.mark.slow

# digits test split: 450 images -> 7 steps of 64 per epoch; 2 epochs = 14 steps.
# Checkpoints: every 3 steps (3, 6, 9, 12) and at each epoch end (7, 14).
RUN = [*TINY_DIGITS, "--deterministic", "--set", "train.queue_size=128"]


def train(out: Path, args: list[str], kill_at: str | None = None, **popen) -> subprocess.Popen:
    return start_python(
        "-m", "selfclassifier", "train", "--out", out, *args, env={TEST_KILL_ENV: kill_at}, **popen
    )


def run(out: Path, args: list[str], kill_at: str | None = None) -> tuple[int, str]:
    proc = train(out, args, kill_at)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def finish(out: Path, args: list[str]) -> str:
    """The same command run to its end, in this process (only the runs to kill need their own
    process); stderr. --deterministic's global switch is put back afterwards."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        code, _, err = run_cli("train", "--out", out, *args)
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    assert code == 0, err
    return err


def load(out: Path) -> dict:
    return torch.load(out / "checkpoint.pt", weights_only=True)


def assert_same_run(a: Path, b: Path) -> None:
    """Bitwise equal weights, BN statistics, optimiser state, queue and loss history."""
    ca, cb = load(a), load(b)
    assert ca["state"]["global_step"] == cb["state"]["global_step"]
    for key in ca["model"]:
        assert torch.equal(ca["model"][key], cb["model"][key]), f"model.{key} differs"
    for pid, sa in ca["optimizer"]["state"].items():
        for key, value in sa.items():
            assert torch.equal(value, cb["optimizer"]["state"][pid][key]), f"optimizer {key}"
    if ca["queue"] is not None:
        for key in ca["queue"]:
            assert torch.equal(ca["queue"][key], cb["queue"][key]), f"queue.{key} differs"
    assert torch.equal(ca["torch_rng"], cb["torch_rng"])
    losses = [[h["loss"] for h in c["state"]["history"]] for c in (ca, cb)]
    assert losses[0] == losses[1]
    # One metrics record per step and per epoch, the resumed run's duplicates trimmed.
    steps = [
        [json.loads(line).get("global_step") for line in (d / "metrics.jsonl").open()]
        for d in (a, b)
    ]
    assert steps[0] == steps[1]
    assert json.loads((a / "eval.json").read_text()) == json.loads((b / "eval.json").read_text())


def resumed_at(err: str) -> tuple[int, int] | None:
    for line in err.splitlines():
        if line.startswith("resuming from"):
            epoch, step = line.rsplit(": ", 1)[1].split(", ")
            return int(epoch.split()[1]), int(step.split()[1])
    return None


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("baseline")
    finish(out, RUN)
    return out


# Each rerun is killed again at the next point, as a job on a flaky cluster would be.
KILL_CHAIN = [
    ("2", None),  # before the first checkpoint: the rerun starts afresh
    ("8", None),  # just after the epoch-0 end (step 7) is saved
    ("11", (1, 0)),  # mid-epoch 1: resumed from the epoch checkpoint; step 9 is saved
    ("12:save", (1, 2)),  # inside the step-12 write: the step-9 checkpoint must survive
]


def test_sigkill_at_four_points_then_rerun_matches_uninterrupted(baseline, tmp_path):
    for kill_at, resume_point in KILL_CHAIN:
        code, err = run(tmp_path, RUN, kill_at=kill_at)
        assert code == -signal.SIGKILL, err
        assert resumed_at(err) == resume_point, (kill_at, err)
    err = finish(tmp_path, RUN)
    assert resumed_at(err) == (1, 2)  # mid-epoch, from the step-9 checkpoint
    assert "partial checkpoint left by a killed run" in err  # the step-12 temp file
    assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert_same_run(baseline, tmp_path)


def wait_for_steps(out: Path, proc: subprocess.Popen, steps: int) -> None:
    """Block until metrics.jsonl shows ``steps`` finished steps (the run is mid-training)."""
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"run ended early: {proc.communicate()[1]}")
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= steps:
            return
        time.sleep(0.02)
    pytest.fail("the run made no progress")


def test_sigterm_saves_then_rerun_matches(baseline, tmp_path):
    sig = signal.SIGTERM  # what schedulers send before SIGKILL; SIGINT: see the folder test
    proc = train(tmp_path, RUN)
    wait_for_steps(tmp_path, proc, 2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err  # documented: 130 SIGINT, 143 SIGTERM
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"stopped: received {signal.Signals(sig).name}: checkpoint saved")
    assert "run the same command to resume" in last and "Traceback" not in err
    saved = load(tmp_path)["state"]
    assert 0 < saved["global_step"] < 14
    err = finish(tmp_path, RUN)
    assert resumed_at(err) == (saved["epoch"], saved["step"])
    assert_same_run(baseline, tmp_path)


# ----------------------------------------------------------------------------- image folders


def digits_folder(root: Path, n: int = 96) -> Path:
    """``n`` digits as 8x8 PNG files in class folders: the classic (loader worker) pipeline."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.rint(digits.images[:n] * 255 / 16).astype(np.uint8)
    return write_arrays(root, pixels, digits.target[:n], [str(d) for d in range(10)])


FOLDER = [
    "--epochs", "1", "--batch-size", "32", "--deterministic",
    "--workers", "2", "--checkpoint-every-steps", "2",
    "--set", "augment.pipeline=classic", "--set", "data.grayscale=true",
    *TINY, *heads(10), "--set", "train.log_every=1",
]  # fmt: skip


def test_image_folder_with_workers_ctrl_c_then_rerun_matches(tmp_path):
    """Loader workers are seeded by (seed, epoch, sample), so a run stopped mid-epoch and
    resumed with fresh workers matches an unbroken one; a Ctrl-C that reaches the whole
    process group (workers included) still stops cleanly with a checkpoint."""
    args = ["--data", str(digits_folder(tmp_path / "data")), *FOLDER]  # 3 steps
    base, stopped = tmp_path / "base", tmp_path / "stopped"
    finish(base, args)
    proc = train(stopped, args, start_new_session=True)
    wait_for_steps(stopped, proc, 1)
    os.killpg(proc.pid, signal.SIGINT)  # like Ctrl-C in a terminal
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "checkpoint saved" in err
    saved = load(stopped)["state"]
    assert 0 < saved["global_step"] <= 3 and saved["epoch"] == 0
    assert resumed_at(finish(stopped, args)) == (saved["epoch"], saved["step"])
    assert_same_run(base, stopped)
