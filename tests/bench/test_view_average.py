"""bench/view_average.py: a head's scores on single views and on view averages.
The script is loaded as a module and its ``main`` called in this process."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json

import numpy as np
import torch

from selfclassifier.evaluate.metrics import cluster_metrics
from tests.helpers import REPO
from tests.helpers.checkpoints import make_checkpoint
from tests.helpers.images import write_arrays

_SPEC = importlib.util.spec_from_file_location("view_average", REPO / "bench" / "view_average.py")
view_average = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(view_average)


def bench(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = view_average.main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def test_averages_score_the_mean_of_their_views_probabilities():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (50,), generator=g)
    views = {(s, m): torch.rand(50, 3, generator=g).softmax(1) for s in (8, 12) for m in (0, 1)}
    rows = {r["views"]: r for r in view_average.score_views(views, labels)}
    assert set(rows) == {
        "8 px", "8 px mirrored", "12 px", "12 px mirrored", "8 px + mirror", "12 px + mirror",
        "all sizes", "all sizes + mirrors",
    }  # fmt: skip
    expected = {
        "12 px mirrored": views[(12, 1)],
        "8 px + mirror": views[(8, 0)] + views[(8, 1)],
        "all sizes": views[(8, 0)] + views[(12, 0)],
        "all sizes + mirrors": sum(views.values()),
    }
    for name, probs in expected.items():
        want = cluster_metrics(labels.numpy(), probs.argmax(1).numpy())
        assert rows[name] == {"views": name, **want}


def _folder(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 10, 10)).astype(np.uint8)
    return write_arrays(tmp_path / "images", images, [0] * 6 + [1] * 6, ["a", "b"])


def test_cli_scores_the_image_and_its_mirror_at_each_size(tmp_path):
    folder = _folder(tmp_path)
    ckpt = make_checkpoint(tmp_path / "ckpt.pt", "resnet20", 1, 8, heads=(2, 4))
    code, stdout, err = bench(ckpt, "--data", folder, "--sizes", "8", "12", "--format", "json")
    assert code == 0, err
    result = json.loads(stdout)
    assert result["head"] == 0
    names = [r["views"] for r in result["rows"]]
    assert names[:4] == ["8 px", "8 px mirrored", "12 px", "12 px mirrored"]
    assert all(0 <= r["acc"] <= 1 and -1 <= r["ari"] <= 1 for r in result["rows"])
    code, stdout, _ = bench(ckpt, "--data", folder, "--head", "1")  # the run's own size only
    assert code == 0 and stdout.startswith("head 1 (4 classes)")
    assert "| 8 px + mirror |" in stdout and "all sizes" not in stdout


def test_a_mirror_symmetric_model_input_scores_the_same_mirrored(tmp_path):
    # images that are their own mirror: each mirrored view is the view itself
    rng = np.random.default_rng(1)
    half = rng.integers(0, 256, (12, 10, 5)).astype(np.uint8)
    images = np.concatenate([half, half[:, :, ::-1]], axis=2)
    folder = write_arrays(tmp_path / "images", images, [0] * 6 + [1] * 6, ["a", "b"])
    ckpt = make_checkpoint(tmp_path / "ckpt.pt", "resnet20", 1, 8, heads=(2,))
    code, stdout, err = bench(ckpt, "--data", folder, "--sizes", "10", "--format", "json")
    assert code == 0, err
    rows = {r["views"]: r for r in json.loads(stdout)["rows"]}
    assert rows["10 px"] == rows["10 px mirrored"] | {"views": "10 px"}


def test_bad_arguments_are_one_line_exit_2(tmp_path):
    folder = _folder(tmp_path)
    ckpt = make_checkpoint(tmp_path / "ckpt.pt", "resnet20", 1, 8, heads=(2,))
    code, _, err = bench(ckpt, "--data", folder, "--head", "3")
    assert code == 2 and "--head 3 out of range" in err and err.count("\n") == 1
    code, _, err = bench(ckpt, "--data", folder, "--sizes", "4")
    assert code == 2 and "--sizes 4 is too small" in err and err.count("\n") == 1
    code, _, err = bench(ckpt, "--data", tmp_path / "missing")
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1
