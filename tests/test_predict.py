"""``selfclassifier predict``: files and folders in, a CSV out, awkward images handled."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from PIL import Image

from selfclassifier.predict import CSV_COLUMNS, collect_images, write_csv
from tests.helpers import run_cli


def noise(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def awkward_images(root):
    """Each awkward file next to a plain RGB PNG with the pixels it must decode to.

    Returns {awkward file name: reference file name}.
    """
    root.mkdir(parents=True, exist_ok=True)
    pairs = {}

    def pair(name: str, image: Image.Image, reference: Image.Image, **save) -> None:
        image.save(root / name, **save)
        reference.save(root / f"ref_{name.split('.')[0]}.png")
        pairs[name] = f"ref_{name.split('.')[0]}.png"

    rgb = Image.fromarray(noise(14, 14, 1))
    pair("grey.png", rgb.convert("L"), rgb.convert("L").convert("RGB"))
    rgba = Image.fromarray(noise(14, 14, 2)).convert("RGBA")
    pair("opaque_rgba.png", rgba, rgba.convert("RGB"))
    half = np.dstack([noise(14, 14, 3), np.full((14, 14), 128, np.uint8)])
    white = Image.new("RGBA", (14, 14), (255, 255, 255, 255))
    composited = Image.alpha_composite(white, Image.fromarray(half, "RGBA")).convert("RGB")
    pair("translucent.png", Image.fromarray(half, "RGBA"), composited)
    palette = Image.fromarray(noise(14, 14, 4)).quantize(16)
    pair("palette.png", palette, palette.convert("RGB"))
    upright = Image.fromarray(noise(20, 12, 5))  # tall: a wrong rotation changes the crop too
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    pair("exif_rotated.png", stored, upright, exif=exif.tobytes())
    stored.save(root / "exif_ignored.png")  # the same pixels without the tag
    return pairs


def read_csv(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_collect_images_recurses_dedupes_and_reports_missing(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    for name in ("a/1.png", "a/deep/2.JPG", "a/notes.txt", "a/.hidden.png", "b.bin"):
        (tmp_path / name).write_bytes(b"x")
    paths, missing = collect_images(
        [str(tmp_path / "a"), str(tmp_path / "a" / "1.png"), str(tmp_path / "b.bin"), "nope"]
    )
    assert paths == [str(tmp_path / p) for p in ("a/1.png", "a/deep/2.JPG", "b.bin")]
    assert missing == [("nope", "no such file or directory")]


def test_write_csv_columns():
    buffer = io.StringIO()
    assert write_csv([("x, y.png", 2, 7, 0.5)], buffer) == 1
    rows = list(csv.reader(io.StringIO(buffer.getvalue())))
    assert rows == [list(CSV_COLUMNS), ["x, y.png", "2", "7", "0.500000"]]


def test_predict_folder_with_awkward_and_broken_files(folder_run, tmp_path):
    out, _ = folder_run
    images = tmp_path / "in"
    pairs = awkward_images(images / "nested")
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (images / "empty.png").write_bytes(b"")
    (images / "readme.txt").write_text("not an image, and not named like one")
    csv_path = tmp_path / "preds.csv"
    args = ["predict", str(out / "checkpoint.pt"), str(images), "--out", str(csv_path)]
    code, out_text, err = run_cli(*args, "--workers", "0", "--batch-size", "4")
    assert code == 0, err

    # Unreadable files: counted and named on stderr, not fatal.
    assert "warning: 2 unreadable file(s) skipped:" in err
    assert "broken.jpg" in err and "empty.png" in err
    assert "readme.txt" not in err  # not an image name: not looked at

    rows = read_csv(csv_path)
    assert list(rows[0]) == list(CSV_COLUMNS)
    readable = 2 * len(pairs) + 1
    assert len(rows) == readable * 2  # every image, both heads
    assert f"wrote {len(rows)} rows for {readable} images" in out_text
    by_path = {(r["path"], int(r["head"])): r for r in rows}
    for h in (0, 1):
        for name, ref in pairs.items():
            got = by_path[(str(images / "nested" / name), h)]
            want = by_path[(str(images / "nested" / ref), h)]
            # Same pixels, same outputs (up to float noise from the batch they sit in).
            assert got["class"] == want["class"], name
            assert float(got["confidence"]) == pytest.approx(float(want["confidence"]), abs=1e-5)
        confidences = [float(r["confidence"]) for r in rows if int(r["head"]) == h]
        assert all(0 < c <= 1 for c in confidences)
        classes = {int(r["class"]) for r in rows if int(r["head"]) == h}
        assert classes <= set(range([3, 6][h]))
    # The test is sensitive to orientation: ignoring the tag gives other outputs.
    rotated = by_path[(str(images / "nested" / "exif_rotated.png"), 0)]
    ignored = by_path[(str(images / "nested" / "exif_ignored.png"), 0)]
    assert abs(float(rotated["confidence"]) - float(ignored["confidence"])) > 1e-4


def test_predict_one_head_to_stdout(folder_run, tmp_path):
    out, data = folder_run
    files = sorted(str(p) for p in (data / "red").glob("*.png"))[:3]
    code, stdout, err = run_cli(
        "predict", out / "checkpoint.pt", *files, "--head", "1", "--out", "-"
    )
    assert code == 0, err
    rows = list(csv.reader(io.StringIO(stdout)))
    assert rows[0] == list(CSV_COLUMNS)
    assert [r[:2] for r in rows[1:]] == [[f, "1"] for f in files]


def test_predict_at_another_eval_size(folder_run):
    """--eval-size feeds the model larger input (the run trained on 12 px crops): same rows,
    other confidences."""
    out, data = folder_run
    files = sorted(str(p) for p in (data / "red").glob("*.png"))[:3]
    tables = []
    for extra in ([], ["--eval-size", "16"]):
        code, stdout, err = run_cli("predict", out / "checkpoint.pt", *files, "--out", "-", *extra)
        assert code == 0, err
        tables.append(list(csv.DictReader(io.StringIO(stdout))))
    default, larger = tables
    assert [(r["path"], r["head"]) for r in larger] == [(r["path"], r["head"]) for r in default]
    pairs = zip(default, larger, strict=True)
    assert max(abs(float(a["confidence"]) - float(b["confidence"])) for a, b in pairs) > 1e-4


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--head", "2"], "--head 2: the model has heads 0..1"),
        (["--batch-size", "0"], "positive integer"),
    ],
)
def test_predict_bad_arguments(folder_run, tmp_path, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    out, data = folder_run
    code, _, err = run_cli("predict", out / "checkpoint.pt", data, *extra)
    assert code == 2
    assert message in err
    assert not (tmp_path / "preds.csv").exists()


def test_predict_nothing_readable_is_an_error(folder_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out, _ = folder_run
    (tmp_path / "bad.png").write_bytes(b"junk")
    code, _, err = run_cli("predict", out / "checkpoint.pt", tmp_path / "bad.png", "nope")
    assert code == 2 and "error: none of the 2 input file(s) could be read" in err
    assert not (tmp_path / "preds.csv").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli("predict", out / "checkpoint.pt", empty)
    assert code == 2
    assert "no image files found" in err
