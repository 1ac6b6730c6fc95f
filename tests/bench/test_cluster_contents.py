"""bench/cluster_contents.py: labels against clusters, and each split's mean brightness.
The script is loaded as a module and its ``main`` called in this process."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json

import numpy as np

from selfclassifier.evaluate.metrics import contingency, hungarian_acc
from tests.helpers import REPO
from tests.helpers.checkpoints import make_checkpoint
from tests.helpers.images import write_arrays

_SPEC = importlib.util.spec_from_file_location(
    "cluster_contents", REPO / "bench" / "cluster_contents.py"
)
cluster_contents = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(cluster_contents)


def bench(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cluster_contents.main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def test_contents_match_the_hungarian_acc_and_each_splits_brightness():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 60)
    preds = (labels + (rng.random(60) < 0.3)) % 4  # 4 clusters, some images moved
    brightness = rng.random(60)
    counts, clusters, acc, splits = cluster_contents.contents(preds, labels, brightness, 0.0)
    assert counts.sum() == 60 and sorted(clusters) == sorted(set(preds.tolist()))
    assert acc == hungarian_acc(labels, preds)
    assert np.trace(counts) == round(acc * 60)  # matched clusters come first, on the diagonal
    for s in splits:
        inside = (labels == s["label"]) & (preds == s["cluster"])
        assert s["images"] == inside.sum() == counts[s["label"], s["column"]]
        assert abs(s["mean_intensity"] - brightness[inside].mean()) < 1e-4
    assert sum(s["images"] for s in splits) == 60
    columns = [sorted(clusters).index(c) for c in clusters]  # contingency: sorted cluster ids
    assert counts.tolist() == contingency(labels, preds)[:, columns].tolist()


def test_cli_reads_a_checkpoint_and_a_labelled_folder(tmp_path):
    values = {"dark": 40, "bright": 200}
    rng = np.random.default_rng(1)
    images = np.stack(
        [
            np.clip(v + rng.integers(-10, 11, (8, 8)), 0, 255)
            for v in values.values()
            for _ in range(10)
        ]
    )
    folder = write_arrays(tmp_path / "images", images, [0] * 10 + [1] * 10, list(values))
    ckpt = make_checkpoint(tmp_path / "ckpt.pt", "resnet20", 1, 8, heads=(2, 4))
    code, stdout, err = bench(ckpt, "--data", folder, "--format", "json", "--min-share", "0")
    assert code == 0, err
    result = json.loads(stdout)
    assert result["head"] == 0 and np.asarray(result["counts"]).sum() == 20
    by_label = {}
    for s in result["splits"]:
        by_label.setdefault(s["label"], []).append(s)
    names = sorted(values)  # folder classes are sorted by name: bright, dark
    for lab, splits in by_label.items():
        assert sum(s["images"] for s in splits) == 10
        for s in splits:
            assert abs(s["mean_intensity"] - values[names[lab]] / 255) < 0.05
    code, stdout, _ = bench(ckpt, "--data", folder, "--head", "1")
    assert code == 0 and stdout.startswith("head 1 (4 classes)")


def test_bad_head_is_one_line_exit_2(tmp_path):
    folder = write_arrays(tmp_path / "images", np.zeros((4, 8, 8)), [0, 0, 1, 1], ["a", "b"])
    ckpt = make_checkpoint(tmp_path / "ckpt.pt", "resnet20", 1, 8)
    code, _, err = bench(ckpt, "--data", folder, "--head", "5")
    assert code == 2 and "--head 5 out of range" in err and err.count("\n") == 1
