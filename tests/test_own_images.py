"""Presets for a user's own image folder and ``train --classes K`` (README "Your own images").

The end-to-end test trains the CPU preset, shrunk to one epoch, on a folder of a few hundred
PNGs in the ImageFolder layout written here: real Fashion-MNIST images when the Debian package
``dataset-fashion-mnist`` is installed (skipped otherwise), and synthetic ones always.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from selfclassifier import data
from selfclassifier.cli import main
from selfclassifier.config import ConfigError, heads_for_classes, load_config

PER_CLASS = 30  # 10 classes x 30 = 300 images


def write_image_folder(root, images: np.ndarray, labels: np.ndarray, names: list[str]):
    """root/CLASS/NNNNN.png for uint8 (N, H, W) images (the ImageFolder layout)."""
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(image).save(root / names[label] / f"{i:05d}.png")
    return root


def fashion_mnist_folder(root, per_class: int = PER_CLASS):
    """The first ``per_class`` train images of each Fashion-MNIST class as PNGs."""
    ds = data.load_idx_dataset(data.FASHION_MNIST_DIR, "train")
    targets = ds.targets.numpy()
    keep = np.concatenate([np.flatnonzero(targets == k)[:per_class] for k in range(10)])
    names = [c.replace("/", "_") for c in data.FASHION_MNIST_CLASSES]  # 'T-shirt/top'
    return write_image_folder(root, ds.images[keep, 0].numpy(), targets[keep], names)


def synthetic_folder(root, per_class: int = PER_CLASS, seed: int = 0):
    """28x28 grey images: class k is a bright bar at its own height, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), per_class)
    images = rng.integers(0, 40, (len(labels), 28, 28))
    for i, k in enumerate(labels):
        images[i, 2 * k + 3 : 2 * k + 7, 4:24] += 200
    return write_image_folder(root, images.astype(np.uint8), labels, [f"c{k}" for k in range(10)])


SOURCES = {
    "synthetic": synthetic_folder,
    "fashion_mnist": pytest.param(
        fashion_mnist_folder,
        marks=pytest.mark.skipif(
            not os.path.isdir(data.FASHION_MNIST_DIR),
            reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
        ),
    ),
}


# ----------------------------------------------------------------------------- --classes K


def test_heads_for_classes_are_candidates_plus_over_clustering():
    assert heads_for_classes(10) == [10] * 6 + [20, 40]
    assert heads_for_classes(3, candidates=2) == [3, 3, 6, 12]
    # The shortcut reproduces the digits preset's heads, the ones docs/RESULTS.md measured.
    assert heads_for_classes(10) == load_config("digits").model.heads
    for bad in (1, 0, -5, True, 2.5):
        with pytest.raises(ConfigError, match="at least 2 classes"):
            heads_for_classes(bad)


@pytest.mark.parametrize("name", ["images_cpu", "images_gpu"])
def test_own_image_presets(name):
    cfg = load_config(name)
    assert cfg.model.heads == heads_for_classes(10)  # the presets' default K = 10
    assert cfg.data.split == "all" and cfg.train.batch_size >= 4 * 10
    a = cfg.augment
    if name == "images_gpu":  # ResNet-50 at the paper's 2 x 224 + 6 x 96 px views
        assert cfg.model.backbone == "resnet50"
        assert (a.global_crops, a.global_size, a.local_crops, a.local_size) == (2, 224, 6, 96)
        assert cfg.train.batch_size <= 128  # 152 MiB of saved activations per sample (bf16)
    else:  # a small backbone on 32-64 px crops
        assert cfg.model.backbone in ("resnet8", "resnet14", "resnet20")
        assert 32 <= a.global_size <= 64 and a.local_size < a.global_size


def test_classes_flag_conflicts_and_bad_values_are_one_line(tmp_path, capsys):
    base = ["train", "--config", "images_cpu", "--data", str(tmp_path), "--out", str(tmp_path)]
    assert main([*base, "--classes", "5", "--set", "model.heads=[5,10]"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --classes") and "\n" not in err
    assert main([*base, "--classes", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "at least 2 classes" in err and "\n" not in err


# ----------------------------------------------------------------------------- end to end


@pytest.fixture
def one_thread():
    """One intra-op thread: on a small shared CPU, two threads per process oversubscribe it
    and the run takes several times longer."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.parametrize("make_folder", SOURCES.values(), ids=SOURCES.keys())
def test_cpu_preset_trains_on_an_image_folder_with_classes_k(
    tmp_path, make_folder, capsys, one_thread
):
    folder = make_folder(tmp_path / "images")
    out = tmp_path / "run"
    code = main([
        "train", "--config", "images_cpu", "--data", str(folder), "--classes", "10",
        "--epochs", "1", "--batch-size", "60", "--workers", "0", "--device", "cpu",
        "--out", str(out), "--set", "model.hidden_dim=64", "--set", "model.out_dim=32",
    ])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    recorded = yaml.safe_load((out / "config.yaml").read_text())
    assert recorded["model"]["heads"] == [10] * 6 + [20, 40]
    assert recorded["augment"]["global_size"] == load_config("images_cpu").augment.global_size
    result = json.loads((out / "eval.json").read_text())
    assert result["data"]["samples"] == 10 * PER_CLASS
    heads = result["heads"]
    assert [h["classes"] for h in heads] == [10] * 6 + [20, 40]
    # The selection pass ran: exactly one selected head per class count, chosen by its loss.
    ten = [h for h in heads if h["classes"] == 10]
    assert sum(h["selected"] for h in ten) == 1
    best = min(ten, key=lambda h: h["selection_loss"])
    assert best["selected"]
    assert all(np.isfinite(h["selection_loss"]) for h in heads)
    assert all("acc_many_to_one" in h for h in heads if h["classes"] > 10)
    losses = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(m["loss"]) for m in losses if "loss" in m)
