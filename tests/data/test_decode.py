"""Decoding one image file safely (data/decode.py): odd but valid files decode to the right
pixels, broken ones raise a one-line ``UnreadableImage``, JPEGs decode at a reduced size."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from selfclassifier.data.decode import (
    DataError,
    UnreadableImage,
    decode_image,
    open_image,
)
from tests.helpers import one_line
from tests.helpers.images import (
    BROKEN_FILES,
    VALID_FILES,
    colourful,
    gradient_jpeg,
    rgba_png,
    save,
    transparent_palette_png,
    write_bytes,
)

# ----------------------------------------------------------------------------- odd but valid files


@pytest.mark.parametrize("name", sorted(VALID_FILES))
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_valid_files_decode(tmp_path, name, mode):
    make, size = VALID_FILES[name]
    path = write_bytes(tmp_path / name, make())
    im = open_image(path, mode)
    assert im.mode == mode and im.size == size
    np.asarray(im)  # fully decoded, not closed


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 0x00FF, 0x8000, 0xFFFF]], dtype=np.uint16)
    path = save(tmp_path / "g.png", Image.fromarray(arr))
    assert np.asarray(open_image(path, "L")).tolist() == [[0, 0, 128, 255]]
    assert np.asarray(open_image(path, "RGB"))[0, 2].tolist() == [128, 128, 128]


def test_transparency_becomes_white(tmp_path):
    rgba = np.asarray(open_image(write_bytes(tmp_path / "a.png", rgba_png())))
    assert rgba[0, 0].tolist() == [255, 255, 255] and rgba[0, 1].tolist() == [0, 0, 255]
    pal = np.asarray(open_image(write_bytes(tmp_path / "p.png", transparent_palette_png())))
    assert pal[0, 0].tolist() == [255, 255, 255] and pal[0, 1].tolist() == [255, 0, 0]


def test_exif_rotation_moves_pixels(tmp_path):
    im = Image.new("L", (4, 2), 0)
    im.putpixel((0, 0), 255)  # top-left; orientation 6 puts it top-right
    exif = Image.Exif()
    exif[0x0112] = 6
    path = save(tmp_path / "r.png", im, exif=exif.tobytes())
    out = np.asarray(open_image(path, "L"))
    assert out.shape == (4, 2) and out[0, 1] == 255 and out[0, 0] == 0


# ----------------------------------------------------------------------------- broken files


@pytest.mark.parametrize("name", sorted(BROKEN_FILES))
def test_broken_file_raises_unreadable(tmp_path, name):
    make, reason = BROKEN_FILES[name]
    path = write_bytes(tmp_path / name, make())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no Pillow warning may leak either
        with pytest.raises(UnreadableImage, match=reason) as err:
            open_image(path)
    assert one_line(err.value) and isinstance(err.value, DataError)


def test_missing_file_and_bad_mode(tmp_path):
    with pytest.raises(UnreadableImage, match="not found"):
        open_image(str(tmp_path / "gone.png"))
    with pytest.raises(DataError, match="mode"):
        open_image(str(tmp_path / "gone.png"), mode="CMYK")


# ----------------------------------------------------------------------------- reduced JPEGs


def test_jpeg_decodes_at_the_reduction_the_crops_allow(tmp_path):
    path = gradient_jpeg(tmp_path / "a.jpg")
    seen = []
    image, factor = decode_image(path, "RGB", lambda size: seen.append(size) or 4)
    assert seen == [(400, 320)] and factor == 4 and image.size == (100, 80)
    gray, factor = decode_image(path, "L", lambda size: 2)
    assert factor == 2 and gray.mode == "L" and gray.size == (200, 160)


def test_reduction_sees_the_upright_size_of_rotated_jpegs(tmp_path):
    path = gradient_jpeg(tmp_path / "r.jpg", exif_orientation=6)  # stored 400x320, shown 320x400
    seen = []
    image, factor = decode_image(path, "RGB", lambda size: seen.append(size) or 2)
    assert seen == [(320, 400)] and factor == 2 and image.size == (160, 200)


def test_png_ignores_the_reduction(tmp_path):
    path = tmp_path / "a.png"
    colourful().save(path)
    image, factor = decode_image(str(path), "RGB", lambda size: 8)
    assert factor == 1 and image.size == (40, 32)
