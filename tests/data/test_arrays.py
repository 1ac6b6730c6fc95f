"""In-memory datasets (data/arrays.py): sklearn's digits, IDX files (MNIST, Fashion-MNIST),
``TensorImageDataset``."""

from __future__ import annotations

import gzip
import os

import numpy as np
import pytest
import torch

from selfclassifier.data.arrays import (
    TensorImageDataset,
    load_digits_dataset,
    load_idx_dataset,
    read_idx,
    write_idx,
)
from selfclassifier.data.decode import DataError
from selfclassifier.data.sources import build_dataset, is_labelled
from tests.helpers import one_line
from tests.helpers.images import write_bytes

# ----------------------------------------------------------------------------- digits


def test_digits_shapes_range_and_classes():
    ds = load_digits_dataset()
    assert len(ds) == 1797
    assert ds.images.shape == (1797, 1, 8, 8) and ds.images.dtype == torch.uint8
    assert int(ds.images.min()) == 0 and int(ds.images.max()) == 255
    assert ds.classes == [str(d) for d in range(10)]
    assert ds.num_channels == 1 and ds.image_size == 8
    image, label = ds[5]
    assert image.shape == (1, 8, 8) and isinstance(label, int) and 0 <= label <= 9
    from sklearn.datasets import load_digits

    raw = load_digits().images
    assert torch.equal(ds.images[:, 0], torch.from_numpy(np.rint(raw * 255 / 16).astype(np.uint8)))


def test_digits_split_sizes_disjoint_deterministic():
    from sklearn.model_selection import train_test_split

    full, train, test = (load_digits_dataset(s) for s in ("all", "train", "test"))
    assert (len(train), len(test)) == (1347, 450)
    labels = full.targets.numpy()
    tr, te = train_test_split(np.arange(1797), test_size=0.25, stratify=labels, random_state=0)
    tr, te = np.sort(tr), np.sort(te)
    assert not set(tr) & set(te) and len(set(tr) | set(te)) == 1797
    assert torch.equal(train.images, full.images[tr]) and torch.equal(
        test.targets, full.targets[te]
    )
    assert torch.equal(load_digits_dataset("train").images, train.images)
    # stratified: every class in both parts
    assert set(train.targets.tolist()) == set(test.targets.tolist()) == set(range(10))


def test_digits_bad_split():
    with pytest.raises(DataError, match="split"):
        load_digits_dataset("validation")


# ----------------------------------------------------------------------------- IDX


def make_idx_dir(root, n_train=5, n_test=3, gz=True, size=(28, 28)) -> str:
    root = str(root)
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(1)
    suffix = ".gz" if gz else ""
    for prefix, n, offset in (("train", n_train, 0), ("t10k", n_test, 100)):
        images = rng.integers(0, 256, (n, *size), np.uint8)
        images[:, 0, 0] = np.arange(n) + offset  # tells the parts apart after loading
        write_idx(os.path.join(root, f"{prefix}-images-idx3-ubyte{suffix}"), images)
        write_idx(os.path.join(root, f"{prefix}-labels-idx1-ubyte{suffix}"), np.arange(n) % 10)
    return root


@pytest.mark.parametrize("name", ["x.idx", "x.idx.gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_idx_roundtrip(tmp_path, name, dtype):
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    if dtype == np.uint8:
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = str(tmp_path / name)
    write_idx(path, array)
    with open(path, "rb") as f:
        assert (f.read(2) == b"\x1f\x8b") == name.endswith(".gz")
    back = read_idx(path)
    assert back.dtype == array.dtype and np.array_equal(back, array)


def test_idx_header_is_standard(tmp_path):
    path = str(tmp_path / "labels")
    write_idx(path, np.array([3, 1, 4], dtype=np.int64))  # int64 labels narrow to ubyte
    with open(path, "rb") as f:
        assert f.read() == bytes([0, 0, 8, 1, 0, 0, 0, 3, 3, 1, 4])


@pytest.mark.parametrize("gz", [True, False])
def test_idx_splits(tmp_path, gz):
    root = make_idx_dir(tmp_path / "mnist", gz=gz)
    train, test, both = (load_idx_dataset(root, s) for s in ("train", "test", "all"))
    assert (len(train), len(test), len(both)) == (5, 3, 8)
    assert both.images.shape == (8, 1, 28, 28) and both.images.dtype == torch.uint8
    assert both.images[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4, 100, 101, 102]
    assert torch.equal(both.targets, torch.tensor([0, 1, 2, 3, 4, 0, 1, 2]))
    assert both.classes == [str(d) for d in range(10)]
    assert isinstance(build_dataset(root, "test"), TensorImageDataset)


def test_idx_fashion_names_and_alt_spelling(tmp_path):
    root = make_idx_dir(tmp_path / "Fashion-set", gz=False)
    for stem in ("train-images", "train-labels"):
        kind = "idx3" if "images" in stem else "idx1"
        os.rename(f"{root}/{stem}-{kind}-ubyte", f"{root}/{stem}.{kind}-ubyte")
    ds = load_idx_dataset(root, "train")
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"


def test_idx_wrong_magic(tmp_path):
    root = make_idx_dir(tmp_path / "m", gz=False)
    path = f"{root}/train-images-idx3-ubyte"
    with open(path, "r+b") as f:
        f.write(bytes([0, 0, 8, 1]))  # a labels header on an images file
    with pytest.raises(DataError, match="magic 0x00000801") as err:
        load_idx_dataset(root, "train")
    assert one_line(err.value) and "0x00000803" in str(err.value)
    load_idx_dataset(root, "test")  # the other part is unaffected


def test_idx_bad_files(tmp_path):
    root = make_idx_dir(tmp_path / "m", gz=True)
    write_idx(f"{root}/t10k-labels-idx1-ubyte.gz", np.zeros(2, np.uint8))
    with pytest.raises(DataError, match="3 images but .* 2 labels"):
        load_idx_dataset(root, "test")
    write_bytes(f"{root}/t10k-labels-idx1-ubyte.gz", b"\x1f\x8b garbage")
    with pytest.raises(DataError, match="cannot read"):
        load_idx_dataset(root, "test")
    with open(f"{root}/train-images-idx3-ubyte.gz", "rb") as f:
        raw = gzip.decompress(f.read())
    write_bytes(f"{root}/train-images-idx3-ubyte.gz", raw[:-10])
    with pytest.raises(DataError, match="truncated"):
        load_idx_dataset(root, "train")


def test_idx_missing_file_message(tmp_path):
    root = make_idx_dir(tmp_path / "m")
    os.remove(f"{root}/t10k-labels-idx1-ubyte.gz")
    load_idx_dataset(root, "train")  # only the needed files are required
    with pytest.raises(DataError) as err:
        load_idx_dataset(root, "all")
    msg = str(err.value)
    assert one_line(err.value) and "t10k-labels-idx1-ubyte" in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "--data DIR" in msg
    with pytest.raises(DataError, match="does not exist"):
        load_idx_dataset(tmp_path / "nowhere")


# ----------------------------------------------------------------------------- small pieces


def test_tensor_dataset_validation_and_is_labelled():
    images = torch.zeros(3, 1, 4, 4, dtype=torch.uint8)
    ds = TensorImageDataset(images, torch.tensor([-1, -1, 2]), ["a", "b", "c"])
    assert is_labelled(ds) and not is_labelled(torch.utils.data.Subset(ds, [0, 1]))
    assert ds[2][0].data_ptr() == images[2].data_ptr()  # a view, not a copy
    with pytest.raises(DataError, match="uint8"):
        TensorImageDataset(images.float(), torch.zeros(3))
    with pytest.raises(DataError, match=r"shape \(3,\)"):
        TensorImageDataset(images, torch.zeros(2))
    with pytest.raises(DataError, match="no name"):
        TensorImageDataset(images, torch.tensor([0, 1, 5]), ["a", "b"])
    assert not is_labelled(object())
