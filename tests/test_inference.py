"""The loaded-run layer shared by predict, evaluate, report, export and the Python API."""

from __future__ import annotations

import pytest
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


def test_extract_runs_the_model_at_eval_size(digits_run):
    """augment.eval_size changes what the backbone sees (digits: 8 px crops, 12 px input)."""
    from selfclassifier.data.sources import build_dataset
    from selfclassifier.inference import load_run

    run = load_run(digits_run / "checkpoint.pt", "cpu")
    ds = build_dataset("digits", split="test", mode=run.mode)
    at_8 = run.extract(ds, batch_size=450, keep_pixels=True)
    run.cfg.augment.eval_size = 12
    at_12 = run.extract(ds, batch_size=450, keep_pixels=True)
    assert at_8.pixels.shape == (450, 64) and at_12.pixels.shape == (450, 144)
    assert at_12.features.shape == at_8.features.shape
    assert not torch.allclose(at_12.features, at_8.features)


def test_open_scored_run_resolves_the_head_and_names_bad_input(digits_run, tmp_path):
    from selfclassifier.errors import SelfClassifierError
    from selfclassifier.inference import open_scored_run

    ckpt = digits_run / "checkpoint.pt"
    run, ds, head = open_scored_run(ckpt, "digits", "test")
    assert head == run.default_head and len(ds) == 450 and run.device.type == "cpu"
    assert open_scored_run(ckpt, "digits", "test", head=1)[2] == 1
    bad = [
        ((ckpt, "digits", "test", 2), "--head 2 out of range: the model has 2 heads"),
        ((ckpt, "digits", "test", -1), "--head -1 out of range"),
        ((tmp_path / "none.pt", "digits"), "none.pt"),
        ((ckpt, str(tmp_path / "no-such-folder")), "no-such-folder"),
    ]
    for args, words in bad:
        with pytest.raises(SelfClassifierError) as e:
            open_scored_run(*args)
        assert words in str(e.value) and "\n" not in str(e.value)
