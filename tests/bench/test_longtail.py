"""bench/longtail.py: the long-tailed Fashion-MNIST subset (issue 18, item 4) has the
documented class sizes, is the same every time it is written, and reads back as a dataset."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
import torch

from selfclassifier import data
from selfclassifier.data.arrays import write_idx
from selfclassifier.data.sources import build_dataset
from tests.helpers import REPO

_SPEC = importlib.util.spec_from_file_location("longtail", REPO / "bench" / "longtail.py")
longtail = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(longtail)

SIZES = [6000, 4646, 3597, 2785, 2156, 1670, 1293, 1001, 775, 600]


def test_class_sizes_fall_geometrically_from_6000_to_600():
    sizes = longtail.class_sizes()
    assert sizes == SIZES and sum(sizes) == 24523
    ratios = [a / b for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
    assert max(ratios) - min(ratios) < 0.01  # constant ratio 10 ** (1 / 9), up to rounding
    assert longtail.class_sizes(4, 100, 100) == [100] * 4  # the balanced control
    with pytest.raises(ValueError):
        longtail.class_sizes(10, 600, 6000)


def fake_fashion(root, per_class=40, seed=0):
    """IDX files shaped like Fashion-MNIST's: the row's index in its pixels, shuffled labels."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for prefix, n in (("train", 10 * per_class), ("t10k", 30)):
        labels = rng.permutation(np.arange(n) % 10)
        images = np.zeros((n, 28, 28), np.uint8)
        images[:, 0, 0], images[:, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
        write_idx(str(root / f"{prefix}-images-idx3-ubyte.gz"), images)
        write_idx(str(root / f"{prefix}-labels-idx1-ubyte.gz"), labels.astype(np.uint8))
    return root


def check_written(out, source, sizes):
    """The subset's class sizes, rows taken unchanged from the source, the test split whole."""
    subset, full = build_dataset(str(out), "train"), build_dataset(str(source), "train")
    assert torch.bincount(subset.targets, minlength=len(sizes)).tolist() == sizes
    keep = np.loadtxt(out / "train-indices.txt", dtype=np.int64)
    assert len(keep) == sum(sizes) and np.all(np.diff(keep) > 0)  # distinct, source order
    assert torch.equal(subset.images, full.images[keep])
    assert torch.equal(subset.targets, full.targets[keep])
    test, full_test = build_dataset(str(out), "test"), build_dataset(str(source), "test")
    assert torch.equal(test.images, full_test.images)
    assert torch.equal(test.targets, full_test.targets)
    info = json.loads((out / "longtail.json").read_text())
    assert info["class_sizes"] == sizes and info["total"] == sum(sizes)
    assert info["indices_sha256"] == longtail.digest(keep)
    return info


def test_synthetic_subset_sizes_determinism_and_seed(tmp_path):
    source = fake_fashion(tmp_path / "fashion-src")
    sizes = longtail.class_sizes(10, 40, 4)
    longtail.write_longtail(str(tmp_path / "fashion-lt-a"), str(source), 40, 4)
    a = check_written(tmp_path / "fashion-lt-a", source, sizes)
    assert longtail.main([str(tmp_path / "fashion-lt-b"), "--source", str(source),
                          "--largest", "40", "--smallest", "4"]) == 0  # fmt: skip
    b = check_written(tmp_path / "fashion-lt-b", source, sizes)
    assert a == b  # the same subset every time
    other = longtail.write_longtail(str(tmp_path / "fashion-lt-c"), str(source), 40, 4, seed=1)
    assert other["indices_sha256"] != a["indices_sha256"]
    # build_dataset names the classes from the folder name ('fashion' -> Fashion-MNIST's).
    assert build_dataset(str(tmp_path / "fashion-lt-a"), "train").classes[9] == "Ankle boot"


def test_missing_source_is_one_line_exit_2(tmp_path, capsys):
    assert longtail.main([str(tmp_path / "out"), "--source", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err


@pytest.mark.slow
@pytest.mark.skipif(
    not os.path.isdir(data.FASHION_MNIST_DIR),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)
def test_real_longtail_fashion_mnist(tmp_path):
    out = tmp_path / "fashion-mnist-longtail"
    longtail.write_longtail(str(out))
    info = check_written(out, data.FASHION_MNIST_DIR, SIZES)
    # The published subset: docs' numbers were measured on exactly these 24,523 rows.
    assert info["indices_sha256"] == (
        "dfd54d72c7e00589064e628186dc9e5fd89ef4f4666a8a27eb5a8bfae9ad7e23"
    )
    assert build_dataset(str(out), "train").classes == data.FASHION_MNIST_CLASSES
