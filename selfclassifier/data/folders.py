"""Image folders: scanning, ``ImageFileDataset`` and its up-front verification.

Real photo collections contain broken files, so this path is defensive: unreadable files
are found at scan time and listed in ``dataset.skipped``, and a file that breaks later never
kills a DataLoader worker.
"""

from __future__ import annotations

import operator
import os
import warnings
from collections.abc import Callable, Sequence

import torch
from PIL import Image

from selfclassifier.data.arrays import _count
from selfclassifier.data.decode import (
    _MODES,
    DataError,
    UnreadableImage,
    UnreadableImageWarning,
    _check_choice,
    _check_header,
    decode_image,
    open_image,
)
from selfclassifier.errors import printable

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".webp",
    ".tif",
    ".tiff",
    ".ppm",
    ".pgm",
)


# Above this many files a full decode at scan time costs minutes, so 'auto' only reads headers.
FULL_VERIFY_LIMIT = 20000


def _has_image_extension(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _dir_key(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)  # follows symlinks: identifies the directory actually listed
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def scan_image_files(root: str) -> list[str]:
    """All image files under ``root`` (by extension, case-insensitive), recursive, sorted.

    Directory symlinks are followed, but each real directory is listed once, so symlink
    loops terminate and aliased folders do not duplicate images; directories reachable
    without symlinks are claimed first, so an alias never steals a real folder's files
    (and hence its class name). Names starting with '.' are ignored. Paths are str;
    undecodable bytes survive as surrogate escapes, which ``open()`` maps back.
    """
    root = os.fsdecode(os.fspath(root))
    found: list[str] = []
    visited: set[tuple[int, int]] = set()
    direct, via_symlink = [root], []
    while direct or via_symlink:
        directory = direct.pop() if direct else via_symlink.pop(0)
        key = _dir_key(directory)
        if key is None or key in visited:
            continue
        visited.add(key)
        for entry in _sorted_entries(directory):
            try:
                if entry.is_dir():  # follows symlinks
                    (via_symlink if entry.is_symlink() else direct).append(entry.path)
                elif entry.is_file() and _has_image_extension(entry.name):
                    found.append(entry.path)
            except OSError:  # vanished or unreadable entry: nothing to find there
                continue
    return sorted(found)


def _sorted_entries(directory: str) -> list[os.DirEntry]:
    """Non-hidden entries by name, so traversal (and which alias wins) is reproducible."""
    try:
        with os.scandir(directory) as entries:
            return sorted((e for e in entries if not e.name.startswith(".")), key=_name)
    except OSError:  # unreadable directory: nothing to find there
        return []


def _name(entry: os.DirEntry) -> str:
    return entry.name


class ImageFileDataset(torch.utils.data.Dataset):
    """Image files on disk.

    paths: list[str]; targets: int64 tensor (N,), -1 = unknown; classes: list[str] | None;
    skipped: list of (path, reason) for files found unreadable at scan time;
    mode: 'RGB' or 'L'. Items are ``(PIL.Image in mode, label)``.

    A file that fails to decode later (changed after the scan, or never verified) does not
    raise: it is appended to ``runtime_skipped`` as (path, reason), warned about once, and
    the next readable index (i+1, i+2, ... wrapping) is returned instead. DataLoader
    workers each keep their own copy of ``runtime_skipped``.
    """

    def __init__(
        self,
        paths: Sequence[str],
        targets=None,
        classes: Sequence[str] | None = None,
        mode: str = "RGB",
        skipped: Sequence[tuple[str, str]] = (),
        name: str = "images",
    ):
        _check_choice("mode", mode, _MODES)
        self.paths = list(paths)
        if targets is None:
            targets = torch.full((len(self.paths),), -1, dtype=torch.int64)
        self.targets = torch.as_tensor(targets, dtype=torch.int64)
        if self.targets.shape != (len(self.paths),):
            raise DataError(
                f"dataset {name!r}: {len(self.paths)} paths but targets of shape "
                f"{tuple(self.targets.shape)}; pass one label per path"
            )
        self.classes = None if classes is None else list(classes)
        self.mode = mode
        self.skipped = list(skipped)
        self.runtime_skipped: list[tuple[str, str]] = []
        self.name = name
        self._bad: set[str] = set()

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_channels(self) -> int:
        return 3 if self.mode == "RGB" else 1

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        image, label, _ = self.load(i)
        return image, label

    def load(
        self, i: int, reduction: Callable[[tuple[int, int]], int] | None = None
    ) -> tuple[Image.Image, int, int]:
        """(image, label, factor): item ``i`` decoded as ``decode_image(..., reduction)``.

        An unreadable file is skipped as in ``__getitem__``; ``reduction`` is then asked
        again for the replacement image's size.
        """
        i, n = operator.index(i), len(self.paths)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} images")
        for step in range(n):
            j = (i + step) % n
            path = self.paths[j]
            if path in self._bad:  # known broken: don't pay for decoding it again
                continue
            try:
                image, factor = decode_image(path, self.mode, reduction)
                return image, int(self.targets[j]), factor
            except UnreadableImage as e:
                self._mark_bad(path, str(e))
        raise DataError(
            f"dataset {self.name!r}: none of its {n} image files can be decoded any more; "
            "check that the files still exist and are readable"
        )

    def _mark_bad(self, path: str, reason: str) -> None:
        self._bad.add(path)
        self.runtime_skipped.append((path, reason))
        warnings.warn(
            f"skipping unreadable image {printable(path)}: {reason}",
            UnreadableImageWarning,
            stacklevel=3,
        )

    def __repr__(self) -> str:
        return (
            f"ImageFileDataset(name={self.name!r}, n={len(self)}, mode={self.mode!r}, "
            f"classes={_count(self.classes)}, skipped={len(self.skipped)})"
        )


def _class_layout(root: str, paths: list[str]) -> list[str] | None:
    """Class of each path when every image sits inside a first-level subdirectory, else None."""
    first_dirs = []
    for path in paths:
        parts = os.path.relpath(path, root).split(os.sep)
        if len(parts) < 2:
            return None
        first_dirs.append(parts[0])
    return first_dirs


def _verify(paths: list[str], how: str, mode: str) -> tuple[list[int], list[tuple[str, str]]]:
    """Indices of the files that pass ``how`` ('full' | 'header' | 'none') and the failures."""
    if how == "none":
        return list(range(len(paths))), []
    good, bad = [], []
    for i, path in enumerate(paths):
        try:
            if how == "full":
                open_image(path, mode)
            else:
                _check_header(path)
            good.append(i)
        except UnreadableImage as e:
            bad.append((path, str(e)))
    return good, bad


def _summarise(root: str, bad: list[tuple[str, str]], show: int = 3) -> str:
    listed = "; ".join(f"{printable(os.path.relpath(p, root))} ({why})" for p, why in bad[:show])
    more = f"; and {len(bad) - show} more" if len(bad) > show else ""
    return listed + more


def load_image_folder(
    root: str, mode: str = "RGB", strict: bool = False, verify: str = "auto"
) -> ImageFileDataset:
    """A folder of images as an ``ImageFileDataset``.

    Labelled (ImageFolder layout) when every image is inside a first-level subdirectory
    of ``root``: the class is that subdirectory's name (images nested deeper belong to
    it), ``classes`` is the sorted list of subdirectories holding at least one image file
    (decided by the listing, not by decoding, so labels never depend on ``verify``).
    Otherwise flat: targets all -1, ``classes`` None, any nesting.

    verify: 'full' decodes every file now, 'header' only identifies it, 'none' trusts the
    names, 'auto' = 'full' below 20000 files else 'header'. Unreadable files are left out
    and listed in ``skipped`` (one warning sums them up); ``strict=True`` raises instead.
    """
    _check_choice("mode", mode, _MODES)
    _check_choice("verify", verify, ("auto", "full", "header", "none"))
    root = os.fsdecode(os.fspath(root))
    if not os.path.isdir(root):
        what = "is not a directory" if os.path.exists(root) else "does not exist"
        raise DataError(
            f"image folder {printable(root)} {what}; pass a directory of images "
            "(root/CLASS/*.jpg for labelled data, or any nesting for unlabelled)"
        )
    paths = scan_image_files(root)
    if not paths:
        raise DataError(
            f"no image files found under {printable(root)} (looked recursively for "
            f"{' '.join(IMAGE_EXTENSIONS)}, case-insensitive, hidden files ignored)"
        )
    if verify == "auto":
        verify = "full" if len(paths) < FULL_VERIFY_LIMIT else "header"
    good, bad = _verify(paths, verify, mode)
    if bad and strict:
        raise DataError(
            f"{len(bad)} unreadable image file(s) under {printable(root)}: "
            f"{_summarise(root, bad)}; "
            "fix or remove them, or run without strict to skip them"
        )
    if not good:
        raise DataError(
            f"none of the {len(paths)} image files under {printable(root)} can be decoded: "
            f"{_summarise(root, bad)}"
        )
    if bad:
        warnings.warn(
            f"skipped {len(bad)} unreadable image file(s) under {printable(root)}: "
            f"{_summarise(root, bad)} (listed in dataset.skipped)",
            UnreadableImageWarning,
            stacklevel=2,
        )
    first_dirs = _class_layout(root, paths)
    kept = [paths[i] for i in good]
    if first_dirs is None:
        return ImageFileDataset(kept, None, None, mode, bad, name=printable(root))
    classes = sorted(set(first_dirs))
    index = {c: k for k, c in enumerate(classes)}
    targets = torch.tensor([index[first_dirs[i]] for i in good], dtype=torch.int64)
    return ImageFileDataset(kept, targets, classes, mode, bad, name=printable(root))
