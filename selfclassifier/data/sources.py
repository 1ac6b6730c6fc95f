"""One entry point, ``build_dataset(spec, split)``: a folder (with or without train/test
subfolders, IDX files inside), ``digits`` or ``fashion_mnist``; splits and labels.
"""

from __future__ import annotations

import os

import torch

from selfclassifier.data.arrays import (
    FASHION_MNIST_DIR,
    _has_idx_files,
    load_digits_dataset,
    load_idx_dataset,
)
from selfclassifier.data.decode import _MODES, _SPLITS, DataError, _check_choice
from selfclassifier.data.folders import (
    ImageFileDataset,
    _has_image_extension,
    _sorted_entries,
    load_image_folder,
)
from selfclassifier.errors import printable

_SPLIT_DIRS = {"train": ("train",), "test": ("test", "val"), "val": ("val", "test")}


def _split_dirs(root: str) -> dict[str, str]:
    """{name: path} of train/test/val subfolders, when those are ALL the subfolders and no
    image sits in ``root``; otherwise {} (a class may well be called 'train')."""
    entries = _sorted_entries(root)
    dirs = [e for e in entries if _is_dir(e)]
    if not dirs or any(e.name not in _SPLIT_DIRS for e in dirs):
        return {}
    if any(_has_image_extension(e.name) for e in entries if not _is_dir(e)):
        return {}
    return {e.name: e.path for e in dirs}


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _merge_folders(parts: list[ImageFileDataset], name: str) -> ImageFileDataset:
    """Concatenate split folders under one class list (labelled only if every part is)."""
    paths = [p for ds in parts for p in ds.paths]
    skipped = [s for ds in parts for s in ds.skipped]
    mode = parts[0].mode
    if any(ds.classes is None for ds in parts):
        return ImageFileDataset(paths, None, None, mode, skipped, name=name)
    classes = sorted({c for ds in parts for c in ds.classes})
    index = {c: k for k, c in enumerate(classes)}
    targets = [index[ds.classes[int(t)]] for ds in parts for t in ds.targets]
    return ImageFileDataset(paths, targets, classes, mode, skipped, name=name)


def _build_folder(root: str, split: str, mode: str, strict: bool) -> ImageFileDataset:
    splits = _split_dirs(root)
    if not splits:
        if split != "all":
            raise DataError(
                f"split={split!r} needs {printable(root)} to have train/ and test/ (or val/) "
                "subfolders; it has none, so use split='all'"
            )
        return load_image_folder(root, mode, strict)
    if split == "all":
        parts = [load_image_folder(splits[s], mode, strict) for s in sorted(splits)]
        return _merge_folders(parts, name=printable(root))
    for candidate in _SPLIT_DIRS[split]:
        if candidate in splits:
            return load_image_folder(splits[candidate], mode, strict)
    raise DataError(
        f"split={split!r}: {printable(root)} has no {' or '.join(_SPLIT_DIRS[split])}/ "
        f"subfolder (found {', '.join(sorted(splits))}/)"
    )


def build_dataset(spec: str, split: str = "all", mode: str = "RGB", strict: bool = False):
    """Dataset named by ``spec``; returns a TensorImageDataset or an ImageFileDataset.

    spec: 'digits'; 'fashion_mnist' / 'fashion-mnist' (IDX files in FASHION_MNIST_DIR);
    a directory holding MNIST-style IDX files; any other directory = image folder. For a
    folder, split must be 'all' unless it has train/, test/ or val/ subfolders, which the
    split then selects ('test' falls back to val/ and back); 'all' merges them.
    mode ('RGB' | 'L') and strict apply to image folders; in-memory sets keep their channels.
    """
    _check_choice("split", split, (*_SPLITS, "val"))
    _check_choice("mode", mode, _MODES)
    spec = os.fsdecode(os.fspath(spec))
    key = spec.strip().lower()
    if key == "digits":
        return load_digits_dataset(_fixed_split(split, spec))
    if key in ("fashion_mnist", "fashion-mnist"):
        return load_idx_dataset(FASHION_MNIST_DIR, _fixed_split(split, spec))
    if os.path.isdir(spec):
        if _has_idx_files(spec):
            return load_idx_dataset(spec, _fixed_split(split, spec))
        return _build_folder(spec, split, mode, strict)
    problem = "is a file, not a directory" if os.path.isfile(spec) else "is not a known dataset"
    raise DataError(
        f"dataset {printable(spec)!r} {problem}; use 'digits', 'fashion_mnist', a directory of "
        "MNIST-style IDX files, or a directory of images (root/CLASS/*.jpg or any nesting)"
    )


def has_splits(spec: str) -> bool:
    """True when ``spec`` names data with its own train/test split: digits, Fashion-MNIST,
    an IDX folder, or an image folder whose subfolders are train/ and test/ (or val/).
    Looks at names only (nothing is decoded), so it is cheap on large folders."""
    spec = os.fsdecode(os.fspath(spec))
    if spec.strip().lower() in ("digits", "fashion_mnist", "fashion-mnist"):
        return True
    if not os.path.isdir(spec):
        return False
    if _has_idx_files(spec):
        return True
    splits = _split_dirs(spec)
    return "train" in splits and ("test" in splits or "val" in splits)


def _fixed_split(split: str, spec: str) -> str:
    if split == "val":
        raise DataError(f"dataset {printable(spec)!r} has only train and test splits; use test")
    return split


def dataset_targets(ds) -> torch.Tensor:
    """Every sample's label as a (len(ds),) int64 tensor, -1 where unknown; looks through
    ``torch.utils.data.Subset``."""
    if isinstance(ds, torch.utils.data.Subset):
        return dataset_targets(ds.dataset)[torch.as_tensor(list(ds.indices), dtype=torch.long)]
    targets = getattr(ds, "targets", None)
    if targets is None:
        return torch.full((len(ds),), -1, dtype=torch.long)
    return torch.as_tensor(targets, dtype=torch.long).reshape(-1)


def is_labelled(ds) -> bool:
    """True when any target is known (>= 0); looks through ``torch.utils.data.Subset``."""
    if isinstance(ds, torch.utils.data.Subset):
        targets = getattr(ds.dataset, "targets", None)
        if targets is None:
            return False
        return bool((torch.as_tensor(targets)[list(ds.indices)] >= 0).any())
    targets = getattr(ds, "targets", None)
    return targets is not None and bool((torch.as_tensor(targets) >= 0).any())
