"""The loaded-run layer shared by predict, evaluate, report, export and the Python API."""

from __future__ import annotations

import torch

from selfclassifier.data.arrays import TensorImageDataset
from selfclassifier.inference import match_channels


def test_match_channels_converts_in_memory_images():
    grey = TensorImageDataset(torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4), [0])
    rgb = match_channels(grey, 3)
    assert rgb.images.shape == (1, 3, 4, 4) and torch.equal(rgb.images[:, 1:2], grey.images)
    back = match_channels(rgb, 1)
    assert torch.equal(back.images, grey.images)  # luma weights sum to 1
    assert match_channels(grey, 1) is grey
