"""Datasets: image folders (labelled or flat), MNIST-style IDX files, scikit-learn digits.

Everything here returns one of two dataset types:

* ``TensorImageDataset`` (``arrays.py``): images already in memory as a uint8 tensor
  (N, C, H, W); items are ``(uint8 tensor (C, H, W), label)``.
* ``ImageFileDataset`` (``folders.py``): image files on disk; items are ``(PIL.Image, label)``,
  decoded safely (``decode.py``), upright and in ``dataset.mode`` ('RGB' or 'L').

``sources.build_dataset(spec, split)`` picks the right one. Labels are ints; -1 means
"unknown" (an unlabelled folder), so the same code paths train on unlabelled data and
evaluate on labelled data.
"""

from selfclassifier.data.arrays import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    TensorImageDataset,
    load_digits_dataset,
    load_idx_dataset,
    read_idx,
    write_idx,
)
from selfclassifier.data.decode import (
    DataError,
    UnreadableImage,
    UnreadableImageWarning,
    open_image,
)
from selfclassifier.data.folders import (
    IMAGE_EXTENSIONS,
    ImageFileDataset,
    load_image_folder,
    scan_image_files,
)
from selfclassifier.data.sources import build_dataset, dataset_targets, has_splits, is_labelled

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "IMAGE_EXTENSIONS",
    "DataError",
    "ImageFileDataset",
    "TensorImageDataset",
    "UnreadableImage",
    "UnreadableImageWarning",
    "build_dataset",
    "dataset_targets",
    "has_splits",
    "is_labelled",
    "load_digits_dataset",
    "load_idx_dataset",
    "load_image_folder",
    "open_image",
    "read_idx",
    "scan_image_files",
    "write_idx",
]
