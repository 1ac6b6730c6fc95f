"""Datasets: image folders (labelled or flat), MNIST-style IDX files, scikit-learn digits.

Everything here returns one of two dataset types:

* ``TensorImageDataset``: images already in memory as a uint8 tensor (N, C, H, W);
  items are ``(uint8 tensor (C, H, W), label)``.
* ``ImageFileDataset``: image files on disk; items are ``(PIL.Image, label)``, decoded,
  upright (EXIF orientation applied) and in ``dataset.mode`` ('RGB' or 'L').

Labels are ints; -1 means "unknown" (an unlabelled folder), so the same code paths train
on unlabelled data and evaluate on labelled data. Real photo collections contain broken
files, so the file path is defensive: unreadable files are found at scan time and listed
in ``dataset.skipped``, and a file that breaks later never kills a DataLoader worker.

>>> ds = load_digits_dataset("train")
>>> len(ds), ds[0][0].shape, ds.classes[:3]
(1347, torch.Size([1, 8, 8]), ['0', '1', '2'])
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import operator
import os
import warnings
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

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

# Above this many files a full decode at scan time costs minutes, so 'auto' only reads headers.
FULL_VERIFY_LIMIT = 20000

# Decoders we trust with arbitrary user files. Content, not extension, picks the decoder
# (a PNG named .jpg is common and fine), but formats such as EPS would run external
# programs, so only plain raster formats are allowed. MPO is how Pillow opens many camera JPEGs.
_ALLOWED_FORMATS = ("JPEG", "MPO", "PNG", "BMP", "DIB", "GIF", "WEBP", "TIFF", "PPM")
_SUPPORTED = "JPEG, PNG, BMP, GIF, WebP, TIFF, PPM/PGM"
_SPLITS = ("all", "train", "test")
_MODES = ("RGB", "L")


class DataError(ValueError):
    """User-facing error; str(e) is ONE line naming the bad input and how to fix it."""


class UnreadableImage(DataError):
    """One image file cannot be decoded; str(e) is the reason (one line, no path)."""


class UnreadableImageWarning(UserWarning):
    """An image file was skipped; filter this category to silence the notices."""


def _display(path: str) -> str:
    """A path safe to print on one line: undecodable bytes and control characters escaped."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise DataError(f"{name}={value!r} is not valid; use one of {', '.join(choices)}")


# ---------------------------------------------------------------------------------------
# In-memory datasets
# ---------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------
# Decoding one image file
# ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _bomb_is_error() -> Iterator[None]:
    # Pillow only *warns* between 1x and 2x MAX_IMAGE_PIXELS and still decodes the
    # giant image; for untrusted folders both cases must be refusals. catch_warnings is
    # process-wide state, which is fine here: decoding runs in the main thread or in
    # DataLoader worker processes, not in threads of one process.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


@functools.cache
def _allowed_formats() -> tuple[str, ...]:
    # Image.open raises KeyError for a format name whose plugin is not built in (e.g.
    # Pillow without WebP), so ask only for registered ones.
    Image.init()
    return tuple(f for f in _ALLOWED_FORMATS if f in Image.OPEN)


def _unidentified_reason(fp) -> str:
    """Why no allowed decoder accepted the file: a known-but-refused format, text, or junk."""
    try:
        with warnings.catch_warnings(), Image.open(fp) as im:  # header only: nothing decoded
            warnings.simplefilter("ignore")
            kind = im.format
    except Exception:  # noqa: BLE001 - any failure just means "unknown format"
        kind = None
    if kind:
        return f"{kind} images are not supported (convert to one of {_SUPPORTED})"
    fp.seek(0)
    head = fp.read(512)
    if b"\0" not in head and _is_text(head):
        return "not an image: the file holds text"
    return f"not a recognised image format (supported: {_SUPPORTED})"


def _is_text(head: bytes) -> bool:
    # The 512-byte cut may split a multi-byte character, so allow an incomplete tail.
    try:
        head.decode("utf-8")
        return True
    except UnicodeDecodeError as e:
        return e.start >= len(head) - 3 and e.reason == "unexpected end of data"


def _open_header(fp) -> Image.Image:
    """Identify the file and check its claimed size; decodes nothing. Raises UnreadableImage."""
    if os.fstat(fp.fileno()).st_size == 0:
        raise UnreadableImage("empty file (0 bytes)")
    try:
        with _bomb_is_error():
            return Image.open(fp, formats=_allowed_formats())
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UnreadableImage(_bomb_reason(e)) from None
    except Image.UnidentifiedImageError:
        raise UnreadableImage(_unidentified_reason(fp)) from None


def _bomb_reason(e: BaseException) -> str:
    pillow_says = _one_line(e).split(", could be")[0]  # "Image size (N pixels) exceeds ..."
    return (
        f"possible decompression bomb: {pillow_says} "
        "(raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file)"
    )


def _reason(e: BaseException) -> str:
    if isinstance(e, FileNotFoundError):
        return "file not found (deleted or moved after scanning?)"
    if isinstance(e, PermissionError):
        return "permission denied"
    if isinstance(e, IsADirectoryError):
        return "is a directory"
    return _one_line(f"cannot decode ({type(e).__name__}: {e})")


def _high_depth_to_l(im: Image.Image) -> Image.Image:
    """16/32-bit integer or float grey image -> 8-bit 'L' without clipping.

    16-bit data keeps its top byte (>> 8), so brightness is preserved. Pillow's own
    conversion clips everything above 255 to white, which ruins scientific/medical scans.
    Values outside 0..65535 ('I' from exotic TIFFs) and floats are rescaled min..max,
    except floats already in 0..1, which are taken as intensities.
    """
    arr = np.asarray(im)
    if im.mode.startswith("I;16"):
        out = arr.astype(np.uint16) >> 8
    elif im.mode == "I" and arr.size and arr.min() >= 0 and arr.max() <= 0xFFFF:
        out = arr >> 8
    else:
        arr = np.nan_to_num(arr.astype(np.float64))
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if im.mode == "F" and lo >= 0.0 and hi <= 1.0:
            lo, hi = 0.0, 1.0
        out = np.rint((arr - lo) * (255.0 / (hi - lo))) if hi > lo else np.zeros_like(arr)
    return Image.fromarray(out.astype(np.uint8))


def _to_mode(im: Image.Image, mode: str) -> Image.Image:
    """Any decoded Pillow image -> ``mode`` ('RGB' or 'L'); transparency becomes white."""
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        im = _high_depth_to_l(im)
    if im.mode in ("P", "PA"):
        # Via RGBA so palette transparency is honoured (and Pillow does not warn about it).
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "RGBa", "LA", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba).convert("RGB")
    return im if im.mode == mode else im.convert(mode)


def _upright(im: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - a corrupt EXIF block should not cost good pixels
        return im.copy()  # the caller closes the original


def open_image(path: str, mode: str = "RGB") -> Image.Image:
    """Fully decode one image file into an upright ``mode`` ('RGB' or 'L') image.

    EXIF orientation is applied; palette, alpha (composited on white), CMYK and 16-bit
    (scaled by >> 8, not clipped) images are converted. Raises ``UnreadableImage(reason)``
    for empty, truncated, non-image, unsupported or oversized (decompression bomb) files;
    no raw Pillow/OS error escapes.
    """
    return decode_image(path, mode)[0]


# EXIF orientations 5-8 turn the stored image by 90 degrees: width and height swap.
_TRANSPOSED = {5, 6, 7, 8}


def _upright_size(im: Image.Image) -> tuple[int, int]:
    try:
        turned = im.getexif().get(0x0112, 1) in _TRANSPOSED
    except Exception:  # noqa: BLE001 - a corrupt EXIF block is ignored, as in _upright
        turned = False
    return (im.height, im.width) if turned else im.size


def _draft(im: Image.Image, mode: str, factor: int) -> int:
    """Ask a JPEG decoder for 1/``factor`` resolution (and grayscale output for 'L').

    Returns the factor it will actually decode at: 1 for formats without reduced decoding.
    """
    if factor <= 1 and mode != "L":
        return 1
    width, height = im.size
    request = (max(1, width // factor), max(1, height // factor))
    got = im.draft("L" if mode == "L" else None, request)
    if got is None or not got[1][2]:
        return 1
    return max(1, round(width / got[1][2]))  # the box is the full image in draft pixels


def decode_image(
    path: str, mode: str = "RGB", reduction: Callable[[tuple[int, int]], int] | None = None
) -> tuple[Image.Image, int]:
    """Like ``open_image``, optionally at reduced resolution: (image, factor).

    ``reduction`` is called with the upright full-resolution (width, height) before anything
    is decoded and returns the largest factor (1, 2, 4 or 8) the caller can use; JPEGs are
    then decoded at 1/factor by the decoder itself (much cheaper than decoding and resizing),
    other formats at full size. ``factor`` says which one happened: pixel (x, y) of the full
    image is at (x / factor, y / factor) in the returned one.
    """
    _check_choice("mode", mode, _MODES)
    try:
        with open(path, "rb") as fp, _open_header(fp) as im:
            factor = 1
            if reduction is not None:
                wanted = reduction(_upright_size(im))
                # The draft keeps the full-size pixel grid scaled by exactly 1/factor.
                factor = _draft(im, mode, wanted)
            with _bomb_is_error():
                im.load()
            return _to_mode(_upright(im), mode), factor
    except UnreadableImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UnreadableImage(_bomb_reason(e)) from None
    except Exception as e:  # noqa: BLE001 - decoders raise a zoo of types on bad data
        raise UnreadableImage(_reason(e)) from None


def _check_header(path: str) -> None:
    """Cheap verification: the file opens and identifies as an allowed format."""
    try:
        with open(path, "rb") as fp, _open_header(fp):
            pass
    except UnreadableImage:
        raise
    except Exception as e:  # noqa: BLE001
        raise UnreadableImage(_reason(e)) from None


# ---------------------------------------------------------------------------------------
# Finding image files
# ---------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------
# Image files on disk
# ---------------------------------------------------------------------------------------


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
            f"skipping unreadable image {_display(path)}: {reason}",
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
    listed = "; ".join(f"{_display(os.path.relpath(p, root))} ({why})" for p, why in bad[:show])
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
            f"image folder {_display(root)} {what}; pass a directory of images "
            "(root/CLASS/*.jpg for labelled data, or any nesting for unlabelled)"
        )
    paths = scan_image_files(root)
    if not paths:
        raise DataError(
            f"no image files found under {_display(root)} (looked recursively for "
            f"{' '.join(IMAGE_EXTENSIONS)}, case-insensitive, hidden files ignored)"
        )
    if verify == "auto":
        verify = "full" if len(paths) < FULL_VERIFY_LIMIT else "header"
    good, bad = _verify(paths, verify, mode)
    if bad and strict:
        raise DataError(
            f"{len(bad)} unreadable image file(s) under {_display(root)}: {_summarise(root, bad)}; "
            "fix or remove them, or run without strict to skip them"
        )
    if not good:
        raise DataError(
            f"none of the {len(paths)} image files under {_display(root)} can be decoded: "
            f"{_summarise(root, bad)}"
        )
    if bad:
        warnings.warn(
            f"skipped {len(bad)} unreadable image file(s) under {_display(root)}: "
            f"{_summarise(root, bad)} (listed in dataset.skipped)",
            UnreadableImageWarning,
            stacklevel=2,
        )
    first_dirs = _class_layout(root, paths)
    kept = [paths[i] for i in good]
    if first_dirs is None:
        return ImageFileDataset(kept, None, None, mode, bad, name=_display(root))
    classes = sorted(set(first_dirs))
    index = {c: k for k, c in enumerate(classes)}
    targets = torch.tensor([index[first_dirs[i]] for i in good], dtype=torch.int64)
    return ImageFileDataset(kept, targets, classes, mode, bad, name=_display(root))


# ---------------------------------------------------------------------------------------
# scikit-learn digits
# ---------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------
# IDX files (MNIST, Fashion-MNIST)
# ---------------------------------------------------------------------------------------

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
        raise DataError(f"cannot read IDX file {_display(path)}: {_reason(e)}") from None
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
            f"{_display(path)} is not a valid IDX file (magic 0x{max(magic, 0):08x}, "
            f"expected {wanted}); re-download it or point to the right directory"
        )
    dims_end = 4 + 4 * ndim
    dims = tuple(int(d) for d in np.frombuffer(data[4:dims_end], dtype=">u4"))
    dtype = _IDX_DTYPES[type_byte]
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(dims) != ndim or len(data) - dims_end != expected:
        raise DataError(
            f"IDX file {_display(path)} is truncated or padded: header says {dims} "
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
        f"write_idx({_display(path)!r}): dtype {array.dtype} has no IDX code; "
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
            raise DataError(f"missing IDX file {stem}[.gz] in {_display(root)}; {_IDX_HELP}")
        paths.append(path)
    images, labels = read_idx(paths[0], expect_ndim=3), read_idx(paths[1], expect_ndim=1)
    if len(images) != len(labels):
        raise DataError(
            f"{_display(paths[0])} has {len(images)} images but {_display(paths[1])} has "
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
        raise DataError(f"IDX directory {_display(root)} does not exist; {_IDX_HELP}")
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


# ---------------------------------------------------------------------------------------
# One entry point
# ---------------------------------------------------------------------------------------

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
                f"split={split!r} needs {_display(root)} to have train/ and test/ (or val/) "
                "subfolders; it has none, so use split='all'"
            )
        return load_image_folder(root, mode, strict)
    if split == "all":
        parts = [load_image_folder(splits[s], mode, strict) for s in sorted(splits)]
        return _merge_folders(parts, name=_display(root))
    for candidate in _SPLIT_DIRS[split]:
        if candidate in splits:
            return load_image_folder(splits[candidate], mode, strict)
    raise DataError(
        f"split={split!r}: {_display(root)} has no {' or '.join(_SPLIT_DIRS[split])}/ "
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
        f"dataset {_display(spec)!r} {problem}; use 'digits', 'fashion_mnist', a directory of "
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
        raise DataError(f"dataset {_display(spec)!r} has only train and test splits; use test")
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
