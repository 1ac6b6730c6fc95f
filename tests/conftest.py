import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

# Small, quick models for end-to-end runs: the point is the plumbing, not accuracy.
TINY = [
    "--set",
    "model.backbone=resnet20",
    "--set",
    "model.heads=[4,6]",
    "--set",
    "model.hidden_dim=32",
    "--set",
    "model.out_dim=16",
]


def run_cli(*args, env=None, timeout=300):
    """Run ``python -m selfclassifier ARGS``; returns CompletedProcess (text)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "selfclassifier", *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )


@pytest.fixture
def image_folder(tmp_path):
    """An ImageFolder of 3 classes x 12 tiny RGB images with class-dependent colours."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for k, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        d = root / f"class{k}"
        d.mkdir(parents=True)
        for i in range(12):
            arr = np.clip(rng.normal(colour, 30, size=(20, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(d / f"{i}.png")
    return root


# ----------------------------------------------------------------------------- trained runs
# Tiny checkpoints trained once per session through the real CLI, for evaluate/predict/report.


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """OUT of a 1-epoch run on digits' 450-image test split, with ``--eval-every 1``."""
    out = tmp_path_factory.mktemp("digits_run") / "run"
    result = run_cli(
        "train", "--out", out, "--split", "test", "--epochs", "1", "--batch-size", "150",
        "--eval-every", "1", "--device", "cpu", *TINY, "--set", "model.heads=[10,20]",
        env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return out


CLASS_COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 40, 230)}


def make_image_folder(root, per_class: int = 8, size: int = 12, seed: int = 0):
    """root/CLASS/NN.png: noisy images of one colour per class (labelled, no splits)."""
    rng = np.random.default_rng(seed)
    for name, colour in CLASS_COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.array(colour) + rng.integers(-40, 41, (size, size, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i:02d}.png")
    return root


@pytest.fixture(scope="session")
def folder_run(tmp_path_factory):
    """(OUT, data folder) of a 1-epoch RGB run on a generated 3-class ImageFolder."""
    base = tmp_path_factory.mktemp("folder_run")
    data = make_image_folder(base / "data")
    out = base / "run"
    result = run_cli(
        "train", "--data", data, "--out", out, "--epochs", "1", "--batch-size", "8",
        "--workers", "0", "--device", "cpu", *TINY, "--set", "model.heads=[3,6]",
        "--set", "augment.global_size=12", "--set", "augment.local_crops=0",
        env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return out, data


def gaussian_blobs(n_per_class: int, dim: int, num_classes: int, spread: float, seed: int):
    """Well separated blobs: class c is centred on a random direction scaled by 10."""
    g = torch.Generator().manual_seed(seed)
    centres = 10 * torch.nn.functional.normalize(torch.randn(num_classes, dim, generator=g), dim=1)
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    feats = centres[labels] + spread * torch.randn(len(labels), dim, generator=g)
    return feats, labels
