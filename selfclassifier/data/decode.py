"""Decoding one image file safely: format allow-list, decompression-bomb and truncation
checks, EXIF orientation, high-bit-depth and palette modes, reduced (draft) JPEG decoding.

Every failure is an ``UnreadableImage`` with a one-line reason naming the file.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps

from selfclassifier.errors import DataError, UnreadableImage, one_line

# Decoders we trust with arbitrary user files. Content, not extension, picks the decoder
# (a PNG named .jpg is common and fine), but formats such as EPS would run external
# programs, so only plain raster formats are allowed. MPO is how Pillow opens many camera JPEGs.
_ALLOWED_FORMATS = ("JPEG", "MPO", "PNG", "BMP", "DIB", "GIF", "WEBP", "TIFF", "PPM")


_SUPPORTED = "JPEG, PNG, BMP, GIF, WebP, TIFF, PPM/PGM"


_SPLITS = ("all", "train", "test")


_MODES = ("RGB", "L")


class UnreadableImageWarning(UserWarning):
    """An image file was skipped; filter this category to silence the notices."""


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise DataError(f"{name}={value!r} is not valid; use one of {', '.join(choices)}")


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
    pillow_says = one_line(e, 300).split(", could be")[0]  # "Image size (N pixels) exceeds ..."
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
    return one_line(f"cannot decode ({type(e).__name__}: {e})", 300)


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
