"""Class predictions for new images: files and folders in, one CSV row per image and head out.

Photos from the wild come grayscale, RGBA, palette-based or stored sideways with an EXIF
orientation; :func:`selfclassifier.data.open_image` decodes them all into the model's mode,
upright, with transparency composited on white. A file that cannot be decoded is listed in
:attr:`Predictions.unreadable` with its reason and does not stop the others.

>>> rows = [("a.png", 0, 3, 0.91), ("a.png", 1, 17, 0.55)]
>>> import io
>>> buffer = io.StringIO()
>>> write_csv(rows, buffer)
2
>>> print(buffer.getvalue().strip())
path,head,class,confidence
a.png,0,3,0.910000
a.png,1,17,0.550000
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

import torch
from torch.utils.data import DataLoader, Dataset

from selfclassifier.data.decode import DataError, UnreadableImage, open_image
from selfclassifier.data.folders import scan_image_files
from selfclassifier.errors import printable
from selfclassifier.inference import LoadedRun

__all__ = [
    "CSV_COLUMNS",
    "Predictions",
    "collect_images",
    "predict_files",
    "printable",
    "write_csv",
]

CSV_COLUMNS = ("path", "head", "class", "confidence")


def collect_images(inputs: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Image files named by ``inputs``: files as given, folders searched recursively.

    Folders contribute files with an image extension (``data.scan_image_files``); a file
    named explicitly is tried whatever its extension. Duplicates keep their first position.

    Returns:
        (paths, missing): the files to decode, and (input, reason) for inputs that do not exist.
    """
    paths: list[str] = []
    missing: list[tuple[str, str]] = []
    seen: set[str] = set()
    for item in inputs:
        if os.path.isdir(item):
            found = scan_image_files(item)
        elif os.path.exists(item):
            found = [item]
        else:
            missing.append((item, "no such file or directory"))
            continue
        for path in found:
            key = os.path.normpath(os.path.abspath(path))
            if key not in seen:
                seen.add(key)
                paths.append(path)
    return paths, missing


class _ImageFiles(Dataset):
    """Items are (image tensor or None, index, failure reason or None): never raises."""

    def __init__(self, paths: Sequence[str], mode: str, transform):
        self.paths, self.mode, self.transform = list(paths), mode, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return self.transform(open_image(self.paths[i], self.mode)), i, None
        except UnreadableImage as e:
            return None, i, str(e)


def _collate(items):
    """Stack the decoded images; pass failures through as (index, reason) pairs."""
    good = [(image, i) for image, i, _ in items if image is not None]
    failed = [(i, reason) for image, i, reason in items if image is None]
    images = torch.stack([image for image, _ in good]) if good else None
    return images, torch.tensor([i for _, i in good], dtype=torch.long), failed


@dataclass
class Predictions:
    """``paths`` (N,) of the decoded images; ``classes[h]`` / ``confidences[h]`` (N,) per head;
    ``unreadable``: (path, reason) for inputs that could not be read."""

    paths: list[str]
    classes: list[torch.Tensor]
    confidences: list[torch.Tensor]
    unreadable: list[tuple[str, str]] = field(default_factory=list)

    def rows(self, heads: Iterable[int] | None = None) -> Iterable[tuple[str, int, int, float]]:
        """(path, head, class, confidence), image by image, head by head."""
        heads = range(len(self.classes)) if heads is None else list(heads)
        for n, path in enumerate(self.paths):
            for h in heads:
                yield path, h, int(self.classes[h][n]), float(self.confidences[h][n])


@torch.no_grad()
def predict_files(
    run: LoadedRun, inputs: Sequence[str], batch_size: int = 256, workers: int = 0
) -> Predictions:
    """Predict every image under ``inputs`` with every head of ``run``'s model.

    Confidence is the head's row-softmax probability (at the training ``loss.row_tau``) of
    the predicted class. Raises DataError when no input yields an image file at all.
    """
    paths, missing = collect_images(inputs)
    if not paths and not missing:
        raise DataError(
            f"no image files found in {', '.join(inputs)} (folders are searched recursively "
            "for .jpg .png .bmp .gif .webp .tif .ppm .pgm files)"
        )
    loader = DataLoader(
        _ImageFiles(paths, run.mode, run.transform(from_files=True)),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
    )
    run.model.eval()
    kept: list[torch.Tensor] = []
    probs: list[list[torch.Tensor]] = [[] for _ in run.model.heads]
    unreadable = list(missing)
    for images, index, failed in loader:
        unreadable += [(paths[i], reason) for i, reason in failed]
        if images is None:
            continue
        for h, p in enumerate(run.batch_probabilities(images)):
            probs[h].append(p)
        kept.append(index)
    order = torch.cat(kept).tolist() if kept else []
    confidences, classes = [], []
    for per_head in probs:
        conf, pred = torch.cat(per_head).max(dim=1) if per_head else (torch.empty(0),) * 2
        confidences.append(conf)
        classes.append(pred.long())
    return Predictions([paths[i] for i in order], classes, confidences, unreadable)


def write_csv(rows: Iterable[tuple[str, int, int, float]], f: TextIO) -> int:
    """Write the header and ``rows`` as CSV to ``f``; returns the number of rows."""
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    count = 0
    for path, head, cls, conf in rows:
        writer.writerow([path, head, cls, f"{conf:.6f}"])
        count += 1
    return count
