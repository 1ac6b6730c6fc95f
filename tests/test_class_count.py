"""Choosing the number of classes: label-free per-head scores in evaluate / train's eval.json,
and bench/class_count.py, which says whether the score picks the true count."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from selfclassifier.cli import main
from selfclassifier.evaluate.metrics import LABEL_FREE_NOTE

BENCH = Path(__file__).resolve().parents[1] / "bench" / "class_count.py"
FREE_KEYS = {"active_classes", "size_entropy", "silhouette"}


def bench(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCH), *map(str, args)], capture_output=True, text=True, timeout=120
    )


def assert_label_free(head: dict) -> None:
    assert FREE_KEYS <= set(head)
    assert 1 <= head["active_classes"] <= head["classes"]
    assert 0.0 <= head["size_entropy"] <= 1.0
    assert head["silhouette"] is None or -1.0 <= head["silhouette"] <= 1.0


def test_evaluate_and_train_report_label_free_scores(digits_run, tmp_path, capsys):
    path = tmp_path / "e.json"
    args = ["evaluate", str(digits_run / "checkpoint.pt"), "--device", "cpu", "--json", str(path)]
    assert main([*args, "--batch-size", "512"]) == 0
    printed = capsys.readouterr().out
    assert "size_entropy" in printed and "silhouette" in printed and LABEL_FREE_NOTE in printed
    heads = json.loads(path.read_text())["heads"]
    assert [h["classes"] for h in heads] == [10, 20]
    for head in heads:
        assert_label_free(head)
    trained = json.loads((digits_run / "eval.json").read_text())["heads"]
    for ours, theirs in zip(heads, trained, strict=True):  # train's eval.json has them too
        assert {k: theirs[k] for k in FREE_KEYS} == pytest.approx({k: ours[k] for k in FREE_KEYS})


def fake_run(root: Path, name: str, silhouettes: list[float | None]) -> Path:
    run = root / name
    run.mkdir()
    heads = [
        {"classes": c, "nmi": 0.5 + i / 10, "acc": 0.4 + i / 10, "active_classes": c,
         "size_entropy": 0.9, "silhouette": s}
        for i, (c, s) in enumerate(zip([5, 10, 20, 40], silhouettes, strict=True))
    ]  # fmt: skip
    (run / "eval.json").write_text(json.dumps({"heads": heads}))
    return run


def test_bench_picks_the_head_with_the_highest_silhouette(tmp_path):
    right = fake_run(tmp_path, "s0", [0.20, 0.35, 0.30, None])
    wrong = fake_run(tmp_path, "s1", [0.40, 0.35, 0.30, 0.10])
    r = bench(right, wrong, "--true", "10", "--format", "json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["summary"] == {
        "score": "silhouette", "features": "embedding", "correct": 1, "runs": 2
    }  # fmt: skip
    first, second = result["runs"]
    assert (first["picked_head"], first["picked_classes"], first["correct"]) == (1, 10, True)
    assert (second["picked_head"], second["picked_classes"], second["correct"]) == (0, 5, False)
    assert second["picked_scores"] == {"nmi": 0.5, "acc": 0.4}
    assert second["true_size_scores"] == pytest.approx({"nmi": 0.6, "acc": 0.5})
    r = bench(right, wrong, "--true", "10")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("| run | silhouette 5 | silhouette 10 |")
    assert "| 10 ✓ | 10 |" in lines[2] and "| 5 ✗ | 10 |" in lines[3]
    assert lines[-1] == "highest silhouette (embedding) picked the true count (10) in 1 of 2 runs"


def test_bench_scores_a_checkpoint_without_them(digits_run, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("class_count", BENCH)
    class_count = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(class_count)  # in process: no second torch start-up
    run = tmp_path / "old"
    run.mkdir()
    shutil.copy(digits_run / "checkpoint.pt", run / "checkpoint.pt")  # no eval.json
    for features in ("embedding", "backbone"):
        assert class_count.main([str(run), "--true", "10", "--format", "json",
                                 "--features", features]) == 0  # fmt: skip
        (row,) = json.loads(capsys.readouterr().out)["runs"]
        assert [h["classes"] for h in row["heads"]] == [10, 20]
        for head in row["heads"]:
            assert head["silhouette"] is None or -1 <= head["silhouette"] <= 1
        assert row["picked_classes"] in (10, 20, None)
