"""Which data and features a probe uses (evaluate/probes.py): the fixed stratified hold-out,
the memory/query rules, and the feature kinds (backbone, embedding, raw pixels)."""

from __future__ import annotations

import pytest
import torch

from selfclassifier.config import AugmentConfig
from selfclassifier.data.decode import DataError
from selfclassifier.data.sources import build_dataset
from selfclassifier.evaluate.probes import features_of, holdout_indices, probe_source
from selfclassifier.inference import Outputs, load_run
from tests.helpers.images import write_images


def test_holdout_is_fixed_stratified_and_disjoint():
    labels = torch.arange(4).repeat_interleave(20)
    labels[::7] = -1  # unknown labels take part in neither side
    train, test = holdout_indices(labels)
    again = holdout_indices(labels)
    assert torch.equal(train, again[0]) and torch.equal(test, again[1])
    assert not set(train.tolist()) & set(test.tolist())
    assert sorted(train.tolist() + test.tolist()) == torch.nonzero(labels >= 0).flatten().tolist()
    assert len(test) == round(0.25 * int((labels >= 0).sum()))
    # Stratified: each class keeps its share in the queries (+-1 for rounding).
    per_class = torch.bincount(labels[test], minlength=4)
    assert per_class.min() >= per_class.max() - 1


def test_holdout_needs_two_labelled_samples():
    with pytest.raises(DataError, match="--train-data"):
        holdout_indices(torch.tensor([0, -1, -1]))


def test_probe_source_rules(tmp_path):
    folder = write_images(tmp_path / "plain", per_class=2)
    source = probe_source(str(folder), "all", None, "RGB")
    assert source.holdout and source.memory is None
    split = tmp_path / "split"
    write_images(split / "train", per_class=2)
    write_images(split / "val", per_class=1)
    source = probe_source(str(split), "all", None, "RGB")
    assert not source.holdout and len(source.memory) == 6 and len(source.queries) == 3
    # Evaluating the test split itself: its outputs are the queries, no second pass.
    source = probe_source("digits", "test", None, "L")
    assert len(source.memory) == 1347 and source.queries is None
    source = probe_source("digits", "all", str(folder), "L")
    assert len(source.memory) == 6 and source.queries is None
    with pytest.raises(DataError, match="no labels"):
        flat = tmp_path / "flat"
        flat.mkdir()
        (folder / "red" / "00.png").rename(flat / "a.png")
        probe_source("digits", "all", str(flat), "L")


def test_feature_kinds_pick_outputs():
    out = Outputs(torch.ones(2, 3), torch.zeros(2, 2), [], torch.tensor([0, 1]), torch.zeros(2, 4))
    aug = AugmentConfig(mean=[0.25], std=[0.5])
    assert features_of(out, "backbone", aug, 1) is out.features
    assert features_of(out, "embedding", aug, 1) is out.embeddings
    torch.testing.assert_close(features_of(out, "pixels", aug, 1), torch.full((2, 4), 0.25))


def test_pixel_features_are_the_raw_images(digits_run):
    run = load_run(digits_run / "checkpoint.pt", "cpu")
    ds = build_dataset("digits", "test", mode="L")
    out = run.extract(ds, keep_pixels=True)
    pixels = features_of(out, "pixels", run.cfg.augment, run.channels)
    expected = ds.images.flatten(1).float() / 255
    torch.testing.assert_close(pixels, expected, atol=1e-6, rtol=0)
