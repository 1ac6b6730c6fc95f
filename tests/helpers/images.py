"""Image files for tests: folders of tiny images, odd but valid files, broken files.

:func:`write_images` is the one image-folder factory (the ``make_images`` fixture wraps it);
:func:`write_arrays` writes given pixels (real digits, Fashion-MNIST) in the same layout.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, features

# One colour per class: noisy images of these separate perfectly on any non-degenerate feature.
CLASS_COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 200, 40),
    "blue": (40, 40, 230),
    "yellow": (220, 210, 40),
    "magenta": (210, 40, 200),
    "cyan": (40, 200, 210),
    "grey": (128, 128, 128),
    "orange": (240, 140, 20),
    "purple": (110, 30, 160),
    "brown": (120, 70, 30),
}


def write_images(
    root,
    classes: int | list[str] | None = 3,
    per_class: int = 8,
    size: int | tuple[int, int] | list = 12,
    *,
    fmt: str = "png",
    mode: str = "RGB",
    seed: int = 0,
    broken: bool = False,
) -> Path:
    """``root/CLASS/NN.png``: ``per_class`` noisy images of one colour per class.

    ``classes``: how many (named red, green, blue, ...) or their names; 0 or None writes
    ``per_class`` images straight into ``root`` (no labels). ``size``: an int (square),
    ``(width, height)``, or a list of them used in turn. ``fmt``: ``png`` or ``jpeg``
    (quality 90). ``mode``: ``RGB`` or ``L``. ``broken``: also write every kind of
    :data:`BROKEN_FILES` (into ``root/broken/``, or ``root`` when flat).
    """
    root = Path(root)
    if not classes:
        names = [None]
    elif isinstance(classes, int):
        names = list(CLASS_COLOURS)[:classes]
    else:
        names = list(classes)
    sizes = size if isinstance(size, list) else [size]
    palette = list(CLASS_COLOURS.values())
    suffix = {"png": "png", "jpeg": "jpg", "jpg": "jpg"}[fmt]
    rng = np.random.default_rng(seed)
    for k, name in enumerate(names):
        folder = root if name is None else root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = _wh(sizes[i % len(sizes)])
            colour = palette[(i if name is None else k) % len(palette)]
            pixels = np.clip(np.array(colour) + rng.integers(-40, 41, (h, w, 3)), 0, 255)
            image = Image.fromarray(pixels.astype(np.uint8)).convert(mode)
            path = folder / f"{i:02d}.{suffix}"
            image.save(path, **({"quality": 90} if suffix == "jpg" else {}))
    if broken:
        for name, (make, _) in BROKEN_FILES.items():
            write_bytes(root / ("broken" if classes else "") / name, make())
    return root


def _wh(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


def write_arrays(root, images: np.ndarray, labels=None, names: list[str] | None = None) -> Path:
    """``root/NAME/NNNNN.png`` for uint8 ``(N, H, W[, C])`` pixels with class ``labels``
    (indices into ``names``), or ``root/NNNNN.png`` without labels."""
    root = Path(root)
    for i, pixels in enumerate(images):
        folder = root if labels is None else root / names[int(labels[i])]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(folder / f"{i:05d}.png")
    return root


# ----------------------------------------------------------------------------- single files


def colourful(width: int = 40, height: int = 32) -> Image.Image:
    """A smooth image with distinct hues, saturations and brightness across it."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 40 + 200 * x / width
    g = 30 + 180 * (y / height) ** 2
    b = 200 - 150 * np.abs(x / width - y / height)
    return Image.fromarray(np.stack([r, g, b], -1).clip(0, 255).astype(np.uint8))


def gradient_jpeg(path, size=(400, 320), exif_orientation=None) -> str:
    """A smooth RGB gradient saved as a JPEG (quality 95), optionally EXIF-rotated."""
    y, x = np.mgrid[0 : size[1], 0 : size[0]].astype(np.float32)
    arr = np.stack([x / size[0] * 255, y / size[1] * 255, 128 + 0 * x], -1).astype(np.uint8)
    im = Image.fromarray(arr)
    kwargs = {"quality": 95}
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif
    im.save(path, "JPEG", **kwargs)
    return str(path)


def save(path, im: Image.Image, **kwargs) -> str:
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    im.save(path, **kwargs)
    return path


def write_bytes(path, payload: bytes) -> str:
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(payload)
    return path


def noise(size=(32, 24), mode="RGB", seed=0) -> Image.Image:
    channels = len(mode)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], channels), np.uint8)
    return Image.fromarray(arr.squeeze(-1) if channels == 1 else arr)


def encoded(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def png_claiming_size(width: int, height: int) -> bytes:
    """A 1x1 PNG whose IHDR is patched to claim width x height (CRC fixed), so it is cheap."""
    png = bytearray(encoded(Image.new("L", (1, 1)), "PNG"))
    png[16:24] = struct.pack(">II", width, height)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


# ----------------------------------------------------------------------------- odd but valid


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    return encoded(noise((20, 10)), "JPEG", exif=exif.tobytes())


def transparent_palette_png() -> bytes:
    im = Image.new("P", (4, 2), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.putpixel((1, 0), 1)
    return encoded(im, "PNG", transparency=0)


def rgba_png() -> bytes:
    im = Image.new("RGBA", (3, 2), (255, 0, 0, 0))
    im.putpixel((1, 0), (0, 0, 255, 255))
    return encoded(im, "PNG")


# name: (bytes maker, decoded (width, height))
VALID_FILES = {
    "one_pixel.png": (lambda: encoded(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), (1, 1)),
    "gray16.png": (
        lambda: encoded(Image.fromarray(np.full((3, 5), 40000, np.uint16)), "PNG"),
        (5, 3),
    ),
    "cmyk.jpg": (lambda: encoded(Image.new("CMYK", (6, 4), (0, 50, 0, 0)), "JPEG"), (6, 4)),
    "palette.png": (transparent_palette_png, (4, 2)),
    "rgba.png": (rgba_png, (3, 2)),
    "la.png": (lambda: encoded(Image.new("LA", (2, 2), (10, 0)), "PNG"), (2, 2)),
    "exif6.jpg": (exif_rotated_jpeg, (10, 20)),
    "anim.gif": (lambda: encoded(noise((7, 5)).convert("P"), "GIF"), (7, 5)),
    "bitmap.bmp": (lambda: encoded(noise((7, 5)), "BMP"), (7, 5)),
    "bilevel.tif": (lambda: encoded(noise((7, 5)).convert("1"), "TIFF"), (7, 5)),
    "float.tiff": (
        lambda: encoded(Image.fromarray(np.eye(4, dtype=np.float32) * 1e6), "TIFF"),
        (4, 4),
    ),
    "gray.pgm": (lambda: encoded(noise((7, 5), "L"), "PPM"), (7, 5)),
    "png_named.jpg": (lambda: encoded(noise((7, 5)), "PNG"), (7, 5)),
}
if features.check("webp"):
    VALID_FILES["pic.webp"] = (lambda: encoded(noise((7, 5)), "WEBP"), (7, 5))


# ----------------------------------------------------------------------------- broken


def truncated(payload: bytes) -> bytes:
    return payload[: len(payload) // 2]


# name: (bytes maker, what the one-line reason says)
BROKEN_FILES = {
    "zero.jpg": (lambda: b"", "empty"),
    "truncated.jpg": (lambda: truncated(encoded(noise((64, 64)), "JPEG", quality=95)), "decode"),
    "truncated.png": (lambda: truncated(encoded(noise((64, 64)), "PNG")), "decode"),
    "text.jpg": (lambda: b"hello, I am not a picture\n", "text"),
    "junk.png": (lambda: bytes(range(256)) * 4, "not a recognised image"),
    "pcx_named.png": (lambda: encoded(noise((8, 8)), "PCX"), "PCX images are not supported"),
    "bomb.png": (lambda: png_claiming_size(20000, 20000), "decompression bomb"),
    "bomb_warning_range.png": (lambda: png_claiming_size(10000, 10000), "decompression bomb"),
}
