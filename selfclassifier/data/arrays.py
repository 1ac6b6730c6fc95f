"""In-memory datasets: ``TensorImageDataset`` and its sources, scikit-learn's digits and
MNIST-style IDX files (Fashion-MNIST).

>>> ds = load_digits_dataset("train")
>>> len(ds), ds[0][0].shape, ds.classes[:3]
(1347, torch.Size([1, 8, 8]), ['0', '1', '2'])
"""

from __future__ import annotations

import gzip
import os

import numpy as np
import torch

from selfclassifier.data.decode import _SPLITS, DataError, _check_choice, _reason
from selfclassifier.errors import printable

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


DIGIT_CLASSES = [str(d) for d in range(10)]


class TensorImageDataset(torch.utils.data.Dataset):
    """In-memory images.

    images: uint8 tensor (N, C, H, W); targets: int64 tensor (N,), -1 = unknown;
    classes: list[str] | None (names for targets 0..len-1).
    Items are ``(images[i], int(targets[i]))``; the image is a view, not a copy.
    """

    def __init__(self, images, targets, classes=None, name="tensor"):
        images = torch.as_tensor(images)
        targets = torch.as_tensor(targets, dtype=torch.int64)
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise DataError(
                f"dataset {name!r}: images must be a uint8 tensor (N, C, H, W), "
                f"got {images.dtype} with shape {tuple(images.shape)}"
            )
        if targets.shape != (images.shape[0],):
            raise DataError(
                f"dataset {name!r}: targets must have shape ({images.shape[0]},) to match the "
                f"images, got {tuple(targets.shape)}"
            )
        if classes is not None and len(targets) and int(targets.max()) >= len(classes):
            raise DataError(
                f"dataset {name!r}: label {int(targets.max())} has no name among "
                f"{len(classes)} classes; pass a longer class list or classes=None"
            )
        self.images = images
        self.targets = targets
        self.classes = None if classes is None else list(classes)
        self.name = name

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.targets[i])

    @property
    def num_channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[2])

    def __repr__(self) -> str:
        return (
            f"TensorImageDataset(name={self.name!r}, n={len(self)}, "
            f"shape={tuple(self.images.shape[1:])}, classes={_count(self.classes)})"
        )


def _count(classes) -> int | None:
    return None if classes is None else len(classes)


def load_digits_dataset(split: str = "all") -> TensorImageDataset:
    """scikit-learn's 1797 8x8 digits as uint8 images (N, 1, 8, 8) in 0..255, classes '0'..'9'.

    Pixel values 0..16 map to round(v * 255 / 16). The split is fixed so results are
    comparable: ``train_test_split(arange(1797), test_size=0.25, stratify=labels,
    random_state=0)`` with indices sorted in each part -> 1347 train, 450 test.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    _check_choice("split", split, _SPLITS)
    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = digits.target.astype(np.int64)
    if split != "all":
        train, test = train_test_split(
            np.arange(len(labels)), test_size=0.25, stratify=labels, random_state=0
        )
        keep = np.sort(train if split == "train" else test)
        images, labels = images[keep], labels[keep]
    return TensorImageDataset(
        torch.from_numpy(np.ascontiguousarray(images)),
        torch.from_numpy(labels),
        DIGIT_CLASSES,
        name=f"digits-{split}",
    )


# IDX type byte <-> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/).
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


_IDX_HELP = (
    "install Debian package dataset-fashion-mnist (apt-get install dataset-fashion-mnist) "
    "or pass --data DIR holding the four IDX files"
)


def _read_maybe_gzip(path: str) -> bytes:
    with open(path, "rb") as f:
        raw = f.read()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def read_idx(path: str, expect_ndim: int | None = None) -> np.ndarray:
    """Parse one IDX file (gzipped or not) into a native-endian numpy array.

    Header: two zero bytes, a type byte (0x08 = uint8 ...), the number of dimensions, then
    that many big-endian uint32 sizes. ``expect_ndim`` checks the magic (3 -> 0x00000803).
    """
    try:
        data = _read_maybe_gzip(path)
    except Exception as e:  # noqa: BLE001 - gzip/zlib/OS errors all mean "cannot read"
        raise DataError(f"cannot read IDX file {printable(path)}: {_reason(e)}") from None
    magic = int.from_bytes(data[:4], "big") if len(data) >= 4 else -1
    ndim, type_byte = magic & 0xFF, (magic >> 8) & 0xFF
    wanted = f"0x{0x800 | expect_ndim:08x}" if expect_ndim else "0x000008nn"
    if (
        magic < 0
        or magic >> 16 != 0
        or type_byte not in _IDX_DTYPES
        or ndim == 0
        or (expect_ndim is not None and (ndim != expect_ndim or type_byte != 0x08))
    ):
        raise DataError(
            f"{printable(path)} is not a valid IDX file (magic 0x{max(magic, 0):08x}, "
            f"expected {wanted}); re-download it or point to the right directory"
        )
    dims_end = 4 + 4 * ndim
    dims = tuple(int(d) for d in np.frombuffer(data[4:dims_end], dtype=">u4"))
    dtype = _IDX_DTYPES[type_byte]
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(dims) != ndim or len(data) - dims_end != expected:
        raise DataError(
            f"IDX file {printable(path)} is truncated or padded: header says {dims} "
            f"({expected} data bytes) but it holds {max(len(data) - dims_end, 0)}; re-download it"
        )
    array = np.frombuffer(data, dtype=dtype, offset=dims_end).reshape(dims)
    return array.astype(dtype.newbyteorder("="))


def write_idx(path: str, array) -> None:
    """Write ``array`` as an IDX file (gzipped when ``path`` ends with .gz).

    Supported dtypes: uint8, int8, int16, int32, float32, float64.
    """
    array = _idx_compatible(np.asarray(array), path)
    code = {dt.newbyteorder("="): c for c, dt in _IDX_DTYPES.items()}[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(array, dtype=_IDX_DTYPES[code]).tobytes()
    if path.endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=6)
    with open(path, "wb") as f:
        f.write(payload)


def _idx_compatible(array: np.ndarray, path: str) -> np.ndarray:
    """``array`` in a native dtype IDX can store; other integer arrays (int64 labels, say)
    are narrowed to the smallest IDX integer type that holds their values."""
    native = array.dtype.newbyteorder("=")
    if native in [dt.newbyteorder("=") for dt in _IDX_DTYPES.values()]:
        return array.astype(native, copy=False)
    if array.dtype.kind in "biu":
        lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
        for dtype in (np.uint8, np.int8, np.int16, np.int32):
            if np.iinfo(dtype).min <= lo and hi <= np.iinfo(dtype).max:
                return array.astype(dtype)
    raise DataError(
        f"write_idx({printable(path)!r}): dtype {array.dtype} has no IDX code; "
        "cast to uint8, int8, int16, int32, float32 or float64"
    )


def _find_idx(root: str, stem: str) -> str | None:
    """The file for ``stem`` in ``root``: raw or .gz, also the 'train-images.idx3-ubyte'
    spelling some mirrors use."""
    for name in (stem, stem.replace("-idx", ".idx")):
        for suffix in ("", ".gz"):
            path = os.path.join(root, name + suffix)
            if os.path.isfile(path):
                return path
    return None


def _has_idx_files(root: str) -> bool:
    return any(_find_idx(root, images) for images, _ in _IDX_FILES.values())


def _load_idx_part(root: str, part: str) -> tuple[np.ndarray, np.ndarray]:
    paths = []
    for stem in _IDX_FILES[part]:
        path = _find_idx(root, stem)
        if path is None:
            raise DataError(f"missing IDX file {stem}[.gz] in {printable(root)}; {_IDX_HELP}")
        paths.append(path)
    images, labels = read_idx(paths[0], expect_ndim=3), read_idx(paths[1], expect_ndim=1)
    if len(images) != len(labels):
        raise DataError(
            f"{printable(paths[0])} has {len(images)} images but {printable(paths[1])} has "
            f"{len(labels)} labels; the files come from different sets, re-download them"
        )
    return images, labels


def load_idx_dataset(root: str, split: str = "all") -> TensorImageDataset:
    """MNIST-style IDX files in ``root`` as uint8 images (N, 1, H, W) with labels.

    split: 'train' (train-*), 'test' (t10k-*), 'all' (train then test). Classes are the
    Fashion-MNIST names when the directory name contains 'fashion', else '0'..'9'.
    """
    _check_choice("split", split, _SPLITS)
    root = os.fsdecode(os.fspath(root))
    if not os.path.isdir(root):
        raise DataError(f"IDX directory {printable(root)} does not exist; {_IDX_HELP}")
    parts = ["train", "test"] if split == "all" else [split]
    loaded = [_load_idx_part(root, part) for part in parts]
    images = np.concatenate([im for im, _ in loaded])[:, None]
    labels = np.concatenate([lab for _, lab in loaded]).astype(np.int64)
    is_fashion = "fashion" in os.path.basename(os.path.normpath(os.path.abspath(root))).lower()
    classes = FASHION_MNIST_CLASSES if is_fashion else DIGIT_CLASSES
    if len(labels) and labels.max() >= len(classes):
        classes = [str(k) for k in range(int(labels.max()) + 1)]
    name = ("fashion_mnist" if is_fashion else "idx") + f"-{split}"
    return TensorImageDataset(torch.from_numpy(images), torch.from_numpy(labels), classes, name)
