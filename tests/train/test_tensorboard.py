"""``train --tensorboard``: the event files hold exactly metrics.jsonl's records, by global step."""

import json
import sys

import pytest

from selfclassifier import dist
from selfclassifier.config import TrainConfig
from selfclassifier.train.tensorboard import INSTALL_HINT, scalars
from tests.helpers import TINY, heads, run_cli

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

# digits' 450-image test split in 3 steps of 150; two 5-class heads, so heads are selected.
RUN = [
    "train", "--split", "test", "--batch-size", "150", "--eval-every", "1",
    "--tensorboard", *TINY, *heads(5, 5), "--set", "train.log_every=1",
]  # fmt: skip
STEPS_PER_EPOCH = 3


def _train(out, epochs: int) -> None:
    code, _, err = run_cli(*RUN, "--out", out, "--epochs", epochs)
    assert code == 0, err


def _board(out) -> dict[str, list[tuple[int, float]]]:
    acc = event_accumulator.EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _summary_writer(log_dir):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(log_dir))


def _expected(out) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl as curves: a record without a step (epoch end, head selection) belongs
    to the step logged just before it."""
    curves: dict[str, list[tuple[int, float]]] = {}
    step = 0
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        step = record.get("global_step", step)
        for tag, value in scalars(record).items():
            curves.setdefault(tag, []).append((step, value))
    return curves


def _assert_same(board, expected) -> None:
    assert sorted(board) == sorted(expected)
    for tag, points in expected.items():
        assert [s for s, _ in board[tag]] == [s for s, _ in points], tag
        assert [v for _, v in board[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag


def test_event_files_mirror_metrics_and_a_resumed_run_continues_the_curves(tmp_path):
    out = tmp_path / "run"
    _train(out, epochs=1)
    board = _board(out)
    for tag in (
        "train/loss", "train/lr", "train/img_per_s", "train/active_classes/head_0",
        "train/active_classes/head_1", "epoch/loss", "epoch/seconds", "knn/top1",
        "nmi/head_0", "ami/head_1", "ari/head_0", "acc/head_1", "active_classes/head_0",
        "selection_loss/head_0", "selection_loss/head_1",
    ):  # fmt: skip
        assert tag in board, (tag, sorted(board))
    assert [s for s, _ in board["train/loss"]] == [1, 2, 3]
    assert [s for s, _ in board["nmi/head_0"]] == [STEPS_PER_EPOCH]
    _assert_same(board, _expected(out))

    # A killed second attempt had logged steps 4-5 and died before its checkpoint: their
    # points must go when the rerun logs those steps again (purge_step), as in metrics.jsonl.
    (first,) = (out / "tensorboard").iterdir()
    first.rename(first.with_name("events.out.tfevents.0000000001.first"))
    writer = _summary_writer(out / "tensorboard")
    for step in (4, 5):
        writer.add_scalar("train/loss", 99.0, step)
    writer.close()
    (killed,) = [p for p in (out / "tensorboard").iterdir() if not p.name.endswith("first")]
    killed.rename(killed.with_name("events.out.tfevents.0000000002.killed"))

    _train(out, epochs=2)
    board = _board(out)
    assert [s for s, _ in board["train/loss"]] == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    assert 99.0 not in [v for _, v in board["train/loss"]]
    assert [s for s, _ in board["knn/top1"]] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    _assert_same(board, _expected(out))


def test_off_by_default():
    assert TrainConfig().tensorboard is False
    assert scalars({"epoch_end": 0, "loss": 1.0, "heads": [{"classes": 4, "selected": True}]}) == {
        "epoch/loss": 1.0
    }


def test_only_rank_0_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(dist, "is_main_process", lambda: False)  # as if this were rank 1
    out = tmp_path / "run"
    code, _, err = run_cli(*RUN, "--out", out, "--epochs", "1", *heads(5))
    assert code == 0, err
    assert not (out / "tensorboard").exists()


def test_missing_package_is_one_line_naming_the_fix_before_training(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard -> ImportError
    out = tmp_path / "run"
    code, _, err = run_cli(*RUN, "--out", out, "--epochs", "1")
    assert code == 2
    err = err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and INSTALL_HINT in err
    assert not out.exists()  # failed before the data were read or OUT was made
