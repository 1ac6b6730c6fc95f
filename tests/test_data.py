"""Tests for selfclassifier.data: every file is made tiny in tmp_path; no network."""

from __future__ import annotations

import gzip
import io
import os
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, features

from selfclassifier import data
from selfclassifier.data.arrays import (
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
from selfclassifier.data.folders import ImageFileDataset, load_image_folder, scan_image_files
from selfclassifier.data.sources import build_dataset, is_labelled

# ----------------------------------------------------------------------------- helpers


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


def one_line(err: BaseException) -> bool:
    return "\n" not in str(err) and str(err).strip() != ""


def list_collate(batch):
    return [(im.size, im.mode, label) for im, label in batch]


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


@pytest.mark.skipif(not os.path.isdir(data.FASHION_MNIST_DIR), reason="Fashion-MNIST not installed")
def test_real_fashion_mnist_test_split():
    ds = build_dataset("fashion-mnist", "test")
    assert ds.images.shape == (10000, 1, 28, 28) and ds.classes[9] == "Ankle boot"
    assert torch.bincount(ds.targets).tolist() == [1000] * 10


# ----------------------------------------------------------------------------- image folders


def test_labelled_folder_with_nesting_and_empty_class(tmp_path):
    save(tmp_path / "dog/sub/deep/b.png", noise())
    save(tmp_path / "cat/a.png", noise())
    save(tmp_path / "cat/c.JPG", noise(), format="JPEG")
    (tmp_path / "empty_class").mkdir()
    save(tmp_path / ".hidden/x.png", noise())
    save(tmp_path / "cat/.x.png", noise())
    (tmp_path / "cat/notes.txt").write_text("not an image")
    ds = load_image_folder(tmp_path)
    assert ds.classes == ["cat", "dog"]
    assert [os.path.relpath(p, tmp_path) for p in ds.paths] == [
        "cat/a.png",
        "cat/c.JPG",
        "dog/sub/deep/b.png",
    ]
    assert ds.targets.tolist() == [0, 0, 1] and ds.skipped == [] and is_labelled(ds)
    image, label = ds[2]
    assert image.mode == "RGB" and image.size == (32, 24) and label == 1


def test_flat_folder(tmp_path):
    save(tmp_path / "a.png", noise())
    save(tmp_path / "x/y/b.png", noise())
    ds = load_image_folder(tmp_path, mode="L")
    assert ds.classes is None and ds.targets.tolist() == [-1, -1] and not is_labelled(ds)
    assert ds[1][0].mode == "L" and ds.num_channels == 1


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist") as err:
        load_image_folder(tmp_path / "missing")
    assert one_line(err.value)
    (tmp_path / "empty/sub").mkdir(parents=True)
    with pytest.raises(DataError, match="no image files found") as err:
        load_image_folder(tmp_path / "empty")
    assert one_line(err.value) and ".png" in str(err.value)
    with pytest.raises(DataError, match="verify"):
        load_image_folder(tmp_path, verify="fast")


def test_symlink_loop_and_alias(tmp_path):
    save(tmp_path / "cat/a.png", noise())
    os.symlink(tmp_path, tmp_path / "cat/loop")
    os.symlink(tmp_path / "cat", tmp_path / "alias")  # sorts before 'cat' but must not win
    assert scan_image_files(str(tmp_path)) == [str(tmp_path / "cat/a.png")]
    assert load_image_folder(tmp_path).classes == ["cat"]


def test_symlinked_dir_is_followed(tmp_path):
    save(tmp_path / "elsewhere/a.png", noise())
    (tmp_path / "root").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "root/linked")
    assert scan_image_files(tmp_path / "root") == [str(tmp_path / "root/linked/a.png")]


def test_non_utf8_file_name(tmp_path):
    name = os.fsdecode(b"\xff\xfe.png")
    path = save(os.path.join(tmp_path, "cls", name), noise())
    write_bytes(os.path.join(tmp_path, "cls", os.fsdecode(b"bad\xff.jpg")), b"")
    with pytest.warns(UnreadableImageWarning) as record:
        ds = load_image_folder(tmp_path)
    assert ds.paths == [path] and ds[0][0].size == (32, 24)
    message = str(record[0].message)
    message.encode("utf-8")  # printable: the undecodable byte is escaped, not a surrogate
    assert "\\xff" in message
    with pytest.raises(DataError) as err:
        load_image_folder(tmp_path, strict=True)
    str(err.value).encode("utf-8")


# ----------------------------------------------------------------------------- odd but valid files


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


def truncated(payload: bytes) -> bytes:
    return payload[: len(payload) // 2]


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


def make_folder_with_broken_files(root) -> str:
    save(root / "good/ok.png", noise())
    for name, (make, _) in BROKEN_FILES.items():
        write_bytes(root / "bad" / name, make())
    return str(root)


def test_folder_skips_broken_files(tmp_path):
    root = make_folder_with_broken_files(tmp_path)
    with pytest.warns(UnreadableImageWarning, match=f"skipped {len(BROKEN_FILES)}"):
        ds = load_image_folder(root)
    assert ds.paths == [f"{root}/good/ok.png"] and ds.targets.tolist() == [1]
    assert ds.classes == ["bad", "good"]  # labels follow the listing, not decode luck
    assert sorted(os.path.basename(p) for p, _ in ds.skipped) == sorted(BROKEN_FILES)
    assert all(reason and "\n" not in reason for _, reason in ds.skipped)


def test_folder_header_verify_is_cheaper_but_catches_non_images(tmp_path):
    root = make_folder_with_broken_files(tmp_path)
    with pytest.warns(UnreadableImageWarning):
        ds = load_image_folder(root, verify="header")
    kept = sorted(os.path.basename(p) for p in ds.paths)
    assert kept == ["ok.png", "truncated.jpg", "truncated.png"]  # only decoding finds these
    assert len(load_image_folder(root, verify="none")) == len(BROKEN_FILES) + 1


def test_strict_raises_one_line(tmp_path):
    root = make_folder_with_broken_files(tmp_path)
    with pytest.raises(DataError, match=f"^{len(BROKEN_FILES)} unreadable") as err:
        load_image_folder(root, strict=True)
    assert one_line(err.value) and "and 5 more" in str(err.value)


def test_folder_of_only_broken_files(tmp_path):
    write_bytes(tmp_path / "x.png", b"")
    with pytest.raises(DataError, match="none of the 1 image files") as err:
        load_image_folder(tmp_path)
    assert one_line(err.value)


# --------------------------------------------------------------- breakage after scanning


def folder_of_four(root) -> ImageFileDataset:
    for k in range(4):
        save(root / f"c{k % 2}" / f"{k}.png", noise((8 + k, 8), seed=k))
    return load_image_folder(root)


def test_getitem_skips_file_broken_after_scan(tmp_path):
    ds = folder_of_four(tmp_path)  # paths sorted: c0/0, c0/2, c1/1, c1/3
    write_bytes(ds.paths[1], b"now junk")
    os.remove(ds.paths[3])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        image, label = ds[1]
        assert (image.size, label) == ((9, 8), 1)  # the next index: c1/1.png
        image, label = ds[3]
        assert (image.size, label) == ((8, 8), 0)  # wraps around to c0/0.png
        ds[1], ds[-1]  # noqa: B018 - asked again: no new warnings
    assert [w.category for w in record] == [UnreadableImageWarning] * 2
    assert [p for p, _ in ds.runtime_skipped] == [ds.paths[1], ds.paths[3]]
    with pytest.raises(IndexError):
        ds[4]


def test_getitem_when_everything_broke(tmp_path):
    ds = folder_of_four(tmp_path)
    for path in ds.paths:
        write_bytes(path, b"")
    with pytest.warns(UnreadableImageWarning), pytest.raises(DataError, match="none of its 4"):
        ds[0]


def test_dataloader_workers_survive_broken_file(tmp_path):
    ds = folder_of_four(tmp_path)
    write_bytes(ds.paths[2], b"\x89PNG broken")
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=list_collate)
    items = [item for batch in loader for item in batch]
    assert [label for _, _, label in items] == [0, 0, 1, 1]
    assert [size for size, _, _ in items] == [(8, 8), (10, 8), (11, 8), (11, 8)]
    assert all(mode == "RGB" for _, mode, _ in items)


# ----------------------------------------------------------------------------- build_dataset


def test_build_dataset_named_sets():
    assert len(build_dataset("digits", "test")) == 450
    with pytest.raises(DataError) as err:
        build_dataset("imagenet-21k")
    msg = str(err.value)
    assert one_line(err.value) and "'digits'" in msg and "fashion_mnist" in msg
    assert "directory of images" in msg
    with pytest.raises(DataError, match="only train and test"):
        build_dataset("digits", "val")


def test_build_dataset_folder_splits(tmp_path):
    save(tmp_path / "train/cat/a.png", noise())
    save(tmp_path / "train/dog/b.png", noise())
    save(tmp_path / "val/dog/c.png", noise())
    save(tmp_path / "val/emu/d.png", noise())
    (tmp_path / "README.txt").write_text("split layout")
    train = build_dataset(str(tmp_path), "train", mode="L")
    assert train.classes == ["cat", "dog"] and train[0][0].mode == "L"
    test = build_dataset(str(tmp_path), "test")  # no test/, so val/
    assert [os.path.basename(p) for p in test.paths] == ["c.png", "d.png"]
    both = build_dataset(str(tmp_path))  # merged under one class list
    assert both.classes == ["cat", "dog", "emu"] and both.targets.tolist() == [0, 1, 1, 2]


def test_build_dataset_plain_folder(tmp_path):
    save(tmp_path / "train/a.png", noise())  # a class that happens to be called 'train'
    save(tmp_path / "car/b.png", noise())
    ds = build_dataset(str(tmp_path))
    assert isinstance(ds, ImageFileDataset) and ds.classes == ["car", "train"]
    with pytest.raises(DataError, match="split='all'") as err:
        build_dataset(str(tmp_path), "train")
    assert one_line(err.value)
    with pytest.raises(DataError, match="is a file"):
        build_dataset(str(tmp_path / "car/b.png"))


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
