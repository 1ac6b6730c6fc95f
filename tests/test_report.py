"""The cluster gallery: files, links, class order, escaping, and a real headless browser."""

import os
import pathlib
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from selfclassifier.report import write_report

NAMES = ["zero", "one", "<b>&x", "three", "four"]
NUM_CLASSES = 7  # labels use 0..4, so classes 5 and 6 stay empty


def synthetic(n=60, seed=0):
    """8x8 grey images around one random prototype per label; preds mostly follow labels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(NAMES)
    preds = np.where(rng.random(n) < 0.8, labels, rng.integers(0, len(NAMES), n))
    prototypes = rng.integers(0, 256, (len(NAMES), 8, 8))
    noise = rng.integers(-30, 31, (n, 8, 8))
    images = np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8)
    confidences = rng.uniform(0.2, 1.0, n)
    return images, preds, confidences, labels


def make_report(out_dir, images=None, **kwargs):
    default_images, preds, confidences, labels = synthetic()
    kwargs.setdefault("labels", labels)
    kwargs.setdefault("class_names", NAMES)
    return write_report(
        out_dir,
        default_images if images is None else images,
        preds,
        confidences,
        NUM_CLASSES,
        **kwargs,
    )


class _PageParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.sections = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.imgs.append(attrs)
        elif tag == "section":
            self.sections.append(attrs)


def parse(index: pathlib.Path) -> _PageParser:
    parser = _PageParser()
    parser.feed(index.read_text(encoding="utf-8"))
    return parser


def assert_img_srcs_resolve(index: pathlib.Path) -> list[dict]:
    imgs = parse(index).imgs
    assert imgs
    for img in imgs:
        src = img["src"]
        assert not src.startswith(("/", "file:", "http")), src  # relative, so the folder moves
        assert (index.parent / src).is_file(), src
    return imgs


# ----------------------------------------------------------------------------- content


def test_writes_files_and_every_img_src_resolves(tmp_path):
    index = make_report(tmp_path / "report", metrics={"nmi": 0.51234, "acc": 0.7})
    assert index == tmp_path / "report" / "index.html"
    assert (tmp_path / "report" / "grid.png").is_file()
    imgs = assert_img_srcs_resolve(index)
    assert len(imgs) == 60  # every class has <= per_class members, so all are shown
    page = index.read_text(encoding="utf-8")
    assert "60" in page and "5 of 7" in page
    assert "nmi" in page and "0.5123" in page
    assert "<svg" in page and page.count("<rect") == 5


def test_tiny_images_are_upscaled_with_nearest_neighbour(tmp_path):
    images, *_ = synthetic()
    make_report(tmp_path)
    thumb = np.asarray(Image.open(tmp_path / "thumbs" / "000000.png"))
    assert min(thumb.shape[:2]) >= 64
    k = thumb.shape[0] // 8
    assert thumb.shape[:2] == (8 * k, 8 * k)
    np.testing.assert_array_equal(thumb[::k, ::k], images[0])
    assert np.all(thumb == np.kron(images[0], np.ones((k, k), dtype=np.uint8)))


def test_classes_are_ordered_by_mean_confidence(tmp_path):
    _, preds, confidences, _ = synthetic()
    sections = parse(make_report(tmp_path)).sections
    order = [int(s["data-class"]) for s in sections]
    means = {c: confidences[preds == c].mean() for c in np.unique(preds)}
    assert order == sorted(means, key=lambda c: -means[c])
    shown = [float(s["data-mean-confidence"]) for s in sections]
    assert shown == sorted(shown, reverse=True)


def test_images_within_a_class_are_most_confident_first(tmp_path):
    _, preds, confidences, _ = synthetic()
    imgs = parse(make_report(tmp_path, per_class=3)).imgs
    first_class = int(parse(tmp_path / "index.html").sections[0]["data-class"])
    shown = [int(re.search(r"(\d+)\.png", img["src"]).group(1)) for img in imgs[:3]]
    members = np.flatnonzero(preds == first_class)
    assert shown == list(members[np.argsort(-confidences[members], kind="stable")][:3])
    assert all(img["title"].startswith("confidence ") for img in imgs)


def test_user_strings_are_escaped(tmp_path):
    page = make_report(
        tmp_path, title="<script>alert(1)</script>", metrics={"<k>": "&v"}, head_name="<h>"
    ).read_text(encoding="utf-8")
    assert "<b>&x" not in page and "&lt;b&gt;&amp;x" in page
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)" in page
    assert "<k>" not in page and "&amp;v" in page and "<h>" not in page


def test_empty_and_hidden_classes_are_listed(tmp_path):
    page = make_report(tmp_path, max_classes=2).read_text(encoding="utf-8")
    assert len(parse(tmp_path / "index.html").sections) == 2
    assert "3 more non-empty classes" in page
    assert re.search(r'id="empty-classes">Empty classes \(2\): 5\u20136<', page)


def test_path_list_input(tmp_path):
    rng = np.random.default_rng(1)
    paths = []
    for i in range(60):
        size = (200, 150) if i == 0 else (20, 30)  # one big image gets shrunk, not blown up
        path = tmp_path / "in" / f"img & <{i}>.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    index = make_report(tmp_path / "out", images=paths, labels=None, class_names=None)
    imgs = assert_img_srcs_resolve(index)
    assert len(imgs) == 60
    page = index.read_text(encoding="utf-8")
    assert "img &amp; &lt;0&gt;.png" in page and "img & <" not in page
    assert max(Image.open(tmp_path / "out" / "thumbs" / "000000.png").size) == 96
    assert "majority label" not in page


@pytest.mark.parametrize("kind", ["NHW1", "NHW3", "callable"])
def test_other_image_inputs(tmp_path, kind):
    images, *_ = synthetic()
    if kind == "NHW1":
        images = images[..., None]
    elif kind == "NHW3":
        images = np.repeat(images[..., None], 3, axis=-1)
    else:
        arrays = images

        def images(i):
            return Image.fromarray(arrays[i])

    assert_img_srcs_resolve(make_report(tmp_path, images=images))


def test_grid_png_has_one_row_per_class(tmp_path):
    make_report(tmp_path)
    grid = Image.open(tmp_path / "grid.png")
    assert grid.height == 5 * 100  # 5 non-empty classes, 96 px thumbnails + 4 px padding
    assert grid.width > 10 * 96


def test_output_is_deterministic(tmp_path):
    make_report(tmp_path / "a", metrics={"nmi": 0.5})
    make_report(tmp_path / "b", metrics={"nmi": 0.5})
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*"))
    assert len(files) == 62
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


@pytest.mark.parametrize(
    "change, message",
    [
        ({"preds": np.full(60, 7)}, "preds must lie in"),
        ({"confidences": np.ones(59)}, "confidences shape"),
        ({"confidences": np.full(60, 1.5)}, "probabilities"),
        ({"images": np.zeros((60, 8, 8), dtype=np.float32)}, "uint8"),
        ({"images": np.zeros((60, 3, 8, 8), dtype=np.uint8)}, "channels-first"),
        ({"images": np.zeros((59, 8, 8), dtype=np.uint8)}, "59 images"),
    ],
)
def test_invalid_inputs_raise_clear_errors(tmp_path, change, message):
    images, preds, confidences, labels = synthetic()
    args = {"images": images, "preds": preds, "confidences": confidences} | change
    with pytest.raises(ValueError, match=message):
        write_report(tmp_path, num_classes=NUM_CLASSES, labels=labels, **args)


# ----------------------------------------------------------------------------- browser


def find_chromium() -> str | None:
    """The first Chromium-like browser on PATH, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def require_chromium() -> str:
    """Chromium's path; skip without one, except under CI, which must run the browser test."""
    path = find_chromium()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but no chromium on PATH: install the Debian package `chromium`")
        pytest.skip("no chromium on PATH (apt-get install -y chromium)")
    return path


def run_headless(chromium: str, profile: pathlib.Path, *args: str) -> str:
    flags = [
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-gpu",
        "--allow-file-access-from-files",
        f"--user-data-dir={profile}",  # a fresh profile: no first-run state, no lock clashes
        "--virtual-time-budget=5000",  # let window.onload run before dumping
    ]
    result = subprocess.run(
        [chromium, *flags, *args], capture_output=True, text=True, timeout=90, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_every_image_loads_in_headless_chromium(tmp_path):
    chromium = require_chromium()
    index = make_report(tmp_path / "report", metrics={"nmi": 0.5123, "acc": 0.7})
    url = index.resolve().as_uri()

    dom = run_headless(chromium, tmp_path / "profile", "--dump-dom", url)
    body = re.search(r"<body([^>]*)>", dom)
    assert body, dom[:2000]
    counts = dict(re.findall(r'data-([a-z-]+)-images="(\d+)"', body.group(1)))
    assert counts == {"total": "60", "loaded": "60", "lazy-pending": "0", "broken": "0"}

    shot = tmp_path / "report.png"
    run_headless(
        chromium, tmp_path / "profile", "--hide-scrollbars", "--window-size=1280,2000",
        f"--screenshot={shot}", url,
    )  # fmt: skip
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 2000)
    colours = image.getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50  # text, bars and thumbnails, not a blank page
    assert shot.stat().st_size > 20_000
