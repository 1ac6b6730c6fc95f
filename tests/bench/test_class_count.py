"""bench/class_count.py: does the label-free score (the silhouette) pick the true class count?
(The scores themselves: tests/evaluate/test_command.py and tests/evaluate/test_metrics.py.)
The script is loaded as a module and its ``main`` called in this process."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import REPO

_SPEC = importlib.util.spec_from_file_location("class_count", REPO / "bench" / "class_count.py")
class_count = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(class_count)


def bench(*args) -> tuple[int, str]:
    """``bench/class_count.py ARGS``: (exit code, stdout)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = class_count.main([str(a) for a in args])
    return code, out.getvalue()


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
    code, stdout = bench(right, wrong, "--true", "10", "--format", "json")
    assert code == 0
    result = json.loads(stdout)
    assert result["summary"] == {
        "score": "silhouette", "features": "embedding", "correct": 1, "runs": 2
    }  # fmt: skip
    first, second = result["runs"]
    assert (first["picked_head"], first["picked_classes"], first["correct"]) == (1, 10, True)
    assert (second["picked_head"], second["picked_classes"], second["correct"]) == (0, 5, False)
    assert second["picked_scores"] == {"nmi": 0.5, "acc": 0.4}
    assert second["true_size_scores"] == pytest.approx({"nmi": 0.6, "acc": 0.5})
    code, stdout = bench(right, wrong, "--true", "10")
    assert code == 0
    lines = stdout.splitlines()
    assert lines[0].startswith("| run | silhouette 5 | silhouette 10 |")
    assert "| 10 ✓ | 10 |" in lines[2] and "| 5 ✗ | 10 |" in lines[3]
    assert lines[-1] == "highest silhouette (embedding) picked the true count (10) in 1 of 2 runs"


def test_bench_scores_a_checkpoint_without_them(digits_run, tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    shutil.copy(digits_run / "checkpoint.pt", run / "checkpoint.pt")  # no eval.json
    for features in ("embedding", "backbone"):
        code, stdout = bench(run, "--true", "10", "--format", "json", "--features", features)
        assert code == 0
        (row,) = json.loads(stdout)["runs"]
        assert [h["classes"] for h in row["heads"]] == [10, 20]
        for head in row["heads"]:
            assert head["silhouette"] is None or -1 <= head["silhouette"] <= 1
        assert row["picked_classes"] in (10, 20, None)
