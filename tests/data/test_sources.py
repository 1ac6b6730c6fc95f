"""``build_dataset(spec, split)``: named datasets, folders with and without split folders."""

from __future__ import annotations

import os

import pytest
import torch

from selfclassifier import data
from selfclassifier.data.decode import DataError
from selfclassifier.data.folders import ImageFileDataset
from selfclassifier.data.sources import build_dataset
from tests.helpers import one_line
from tests.helpers.images import noise, save


@pytest.mark.skipif(not os.path.isdir(data.FASHION_MNIST_DIR), reason="Fashion-MNIST not installed")
def test_real_fashion_mnist_test_split():
    ds = build_dataset("fashion-mnist", "test")
    assert ds.images.shape == (10000, 1, 28, 28) and ds.classes[9] == "Ankle boot"
    assert torch.bincount(ds.targets).tolist() == [1000] * 10


def test_build_dataset_named_sets():
    assert len(build_dataset("digits", "test")) == 450
    with pytest.raises(DataError) as err:
        build_dataset("imagenet-21k")
    msg = str(err.value)
    assert one_line(err.value) and "'digits'" in msg and "fashion_mnist" in msg
    assert "directory of images" in msg
    with pytest.raises(DataError, match="only train and test"):
        build_dataset("digits", "val")


def test_build_dataset_folder_splits(tmp_path):
    save(tmp_path / "train/cat/a.png", noise())
    save(tmp_path / "train/dog/b.png", noise())
    save(tmp_path / "val/dog/c.png", noise())
    save(tmp_path / "val/emu/d.png", noise())
    (tmp_path / "README.txt").write_text("split layout")
    train = build_dataset(str(tmp_path), "train", mode="L")
    assert train.classes == ["cat", "dog"] and train[0][0].mode == "L"
    test = build_dataset(str(tmp_path), "test")  # no test/, so val/
    assert [os.path.basename(p) for p in test.paths] == ["c.png", "d.png"]
    both = build_dataset(str(tmp_path))  # merged under one class list
    assert both.classes == ["cat", "dog", "emu"] and both.targets.tolist() == [0, 1, 1, 2]


def test_build_dataset_plain_folder(tmp_path):
    save(tmp_path / "train/a.png", noise())  # a class that happens to be called 'train'
    save(tmp_path / "car/b.png", noise())
    ds = build_dataset(str(tmp_path))
    assert isinstance(ds, ImageFileDataset) and ds.classes == ["car", "train"]
    with pytest.raises(DataError, match="split='all'") as err:
        build_dataset(str(tmp_path), "train")
    assert one_line(err.value)
    with pytest.raises(DataError, match="is a file"):
        build_dataset(str(tmp_path / "car/b.png"))
