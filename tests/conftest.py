import os
import subprocess
import sys

import numpy as np
import pytest
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
