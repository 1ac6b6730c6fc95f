"""The shipped presets: every one loads, and the Fashion-MNIST CPU recipe runs end to end on a
small synthetic IDX set written here (the real files are not needed by the test suite)."""

import json

import numpy as np
import pytest
from conftest import run_cli

from selfclassifier.config import list_presets, load_config
from selfclassifier.data.arrays import write_idx
from selfclassifier.storage import load_checkpoint


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_loads_and_validates(name):
    cfg = load_config(name)
    assert cfg.model.heads and cfg.loss.col_tau < cfg.loss.row_tau


@pytest.mark.parametrize("name", ["fashion_mnist", "fashion_mnist_cpu"])
def test_fashion_presets_use_all_70k_images(name):
    cfg = load_config(name)
    assert (cfg.data.path, cfg.data.split) == ("fashion_mnist", "all")
    assert cfg.model.heads[0] == 10


def fashion_like_idx(root, n_train=96, n_test=32, seed=0):
    """Fashion-MNIST-shaped IDX files (28x28 uint8, 10 labels): each class a bright bar at
    its own position, plus noise."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 40, (n, 28, 28))
        for i, k in enumerate(labels):
            images[i, 2 * k + 3 : 2 * k + 7, 4:24] += 200
        write_idx(str(root / f"{prefix}-images-idx3-ubyte.gz"), images.astype(np.uint8))
        write_idx(str(root / f"{prefix}-labels-idx1-ubyte.gz"), labels.astype(np.uint8))
    return root


def test_fashion_mnist_cpu_recipe_runs_a_few_dozen_steps(tmp_path):
    data = fashion_like_idx(tmp_path / "fashion")
    out = tmp_path / "run"
    args = ["train", "--config", "fashion_mnist_cpu", "--data", data, "--out", out]
    args += ["--epochs", "8", "--batch-size", "32", "--device", "cpu", "--workers", "0"]
    r = run_cli(*args, env={"OMP_NUM_THREADS": "1"}, timeout=600)
    assert r.returncode == 0, r.stderr
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["state"]["global_step"] == 8 * (128 // 32)  # train + test: the 'all' split
    losses = [
        m["loss"] for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
        if "loss" in m
    ]  # fmt: skip
    assert losses and all(np.isfinite(losses))
    result = json.loads((out / "eval.json").read_text())
    heads = load_config("fashion_mnist_cpu").model.heads
    assert [h["classes"] for h in result["heads"]] == heads
    assert result["data"] == {"path": str(data), "split": "all", "samples": 128}
    assert result["heads"][0]["active_classes"] >= 2  # not collapsed
