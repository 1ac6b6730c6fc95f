"""Image folders (data/folders.py): scanning (classes, nesting, hidden files, symlinks,
undecodable names), verifying (broken files skipped and listed, or --strict), and files that
break after the scan."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

from selfclassifier.data.decode import DataError, UnreadableImageWarning
from selfclassifier.data.folders import ImageFileDataset, load_image_folder, scan_image_files
from selfclassifier.data.sources import is_labelled
from tests.helpers import one_line
from tests.helpers.images import BROKEN_FILES, noise, save, write_bytes


def list_collate(batch):
    return [(im.size, im.mode, label) for im, label in batch]


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


# ----------------------------------------------------------------------------- broken files


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
