"""The cluster gallery (``write_report``): files, links, class order, escaping, the embedding
map, the heads table, and a real headless browser."""

import re

import numpy as np
import pytest
from PIL import Image

from selfclassifier.report.embedding_map import (
    MAP_PX,
    class_colours,
    layout_2d,
    render_map,
    to_pixels,
)
from selfclassifier.report.gallery import summarize_classes, write_report
from tests.helpers.pages import (
    assert_img_srcs_resolve,
    body_counts,
    parse,
    require_chromium,
    run_headless,
)

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


def clustered_embeddings(labels, dim=16, seed=0):
    """One tight group of embeddings per label, so a map has something to separate."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(labels.max() + 1, dim))
    return centres[labels] + 0.2 * rng.normal(size=(len(labels), dim))


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


# ----------------------------------------------------------------------------- embedding map


def map_report(out_dir, **kwargs):
    _, _, _, labels = synthetic()
    return make_report(out_dir, embeddings=clustered_embeddings(labels), **kwargs)


def test_map_png_has_its_size_and_one_colour_per_class(tmp_path):
    _, preds, confidences, labels = synthetic()
    index = map_report(tmp_path)
    image = Image.open(tmp_path / "map.png")
    assert image.size == (MAP_PX, MAP_PX) and image.mode == "RGB"
    # Where t-SNE put each image, the dot carries the colour of the image's class.
    layout = layout_2d(clustered_embeddings(labels), seed=0, method="tsne")
    points = to_pixels(layout.xy, MAP_PX, pad=4 * 3 + 8)
    colours = class_colours(c.class_id for c in summarize_classes(preds, confidences))
    pixels = np.asarray(image)
    classes = preds[layout.indices]
    drawn = render_map(layout.xy, classes, colours, seed=0)
    assert np.array_equal(np.asarray(drawn.image), pixels)  # the file is this drawing
    # A dot keeps its colour unless a dot of another colour drawn after it, or a class id,
    # covers its centre; every other dot must show its class's colour.
    order = np.empty(len(points), int)
    order[np.random.default_rng(0).permutation(len(points))] = np.arange(len(points))
    covered = 0
    for k, (x, y) in enumerate(points):
        dist = np.hypot(*(points - (x, y)).T)
        later = (dist <= drawn.radius) & (classes != classes[k]) & (order > order[k])
        near_id = any(abs(x - ax) <= 14 and abs(y - ay) <= 14 for ax, ay in drawn.anchors.values())
        if later.any() or near_id:
            covered += 1
        else:
            assert tuple(pixels[y, x]) == colours[int(classes[k])], f"dot {k}"
    assert len(points) - covered >= 10  # enough dots checked for the test to mean something
    counts = {c: int(np.all(pixels == c, axis=-1).sum()) for c in colours.values()}
    assert all(n > 100 for n in counts.values()), counts
    page = index.read_text(encoding="utf-8")
    assert "t-SNE of the embeddings of 60 of 60 images" in page
    for c, (r, g, b) in colours.items():  # the legend shows the same colours
        assert f'<a href="#class-{c}"><i style="background:#{r:02x}{g:02x}{b:02x}">' in page


def test_map_links_lead_to_class_sections(tmp_path):
    page = parse(map_report(tmp_path, max_classes=3))
    sections = {f"class-{s['data-class']}" for s in page.sections}
    assert len(sections) == 3
    area_targets = {a["href"][1:] for a in page.areas}
    assert area_targets == sections  # only classes with a section are clickable
    for area in page.areas:
        x, y, r = map(int, area["coords"].split(","))
        assert 0 <= x < MAP_PX and 0 <= y < MAP_PX and r > 0
    map_img = next(i for i in page.imgs if i.get("id") == "embedding-map-image")
    assert map_img["usemap"] == "#class-map" and (tmp_path / map_img["src"]).is_file()
    assert all(link[1:] in page.ids for link in page.links if link.startswith("#"))
    text = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "2 more classes without a section" in text
    assert_img_srcs_resolve(tmp_path / "index.html")


def test_map_is_deterministic_for_a_seed(tmp_path):
    map_report(tmp_path / "a", map_points=40, map_seed=5)
    map_report(tmp_path / "b", map_points=40, map_seed=5)
    map_report(tmp_path / "c", map_points=40, map_seed=6)
    first = (tmp_path / "a" / "map.png").read_bytes()
    assert first == (tmp_path / "b" / "map.png").read_bytes()
    assert first != (tmp_path / "c" / "map.png").read_bytes()
    page = (tmp_path / "a" / "index.html").read_text(encoding="utf-8")
    assert "40 of 60 images (a random subset, seed 5)" in page
    assert page == (tmp_path / "b" / "index.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("embeddings, points", [(False, 3000), (True, 0), (True, 4)])
def test_no_map_without_embeddings_or_points(tmp_path, embeddings, points):
    emb = clustered_embeddings(synthetic()[3]) if embeddings else None
    page = make_report(tmp_path, embeddings=emb, map_points=points).read_text(encoding="utf-8")
    assert not (tmp_path / "map.png").exists() and 'id="embedding-map"' not in page


def test_heads_table_compares_every_head(tmp_path):
    heads = [
        {"classes": 5, "active_classes": 5, "size_entropy": 0.97, "silhouette": 0.31},
        {"classes": 10, "active_classes": 9, "size_entropy": 0.9, "silhouette": 0.42,
         "nmi": 0.8, "selection_loss": 0.2, "selected": True},
        {"classes": 40, "active_classes": 1, "size_entropy": 0.0, "silhouette": None},
    ]  # fmt: skip
    index = make_report(tmp_path, heads=heads, head_index=1)
    rows = parse(index).rows
    assert [r["data-head"] for r in rows] == ["0", "1", "2"]
    assert [r.get("class") for r in rows] == [None, "current", None]
    page = index.read_text(encoding="utf-8")
    table = page[
        page.index('<table class="metrics heads"') : page.index("</table>", page.index("heads"))
    ]
    for header in ("active classes", "size entropy", "silhouette", "selection loss", "NMI"):
        assert f"<th>{header}</th>" in table
    assert '<td class="best">0.4200</td>' in table and "<th>1*</th>" in table
    assert table.count('class="best"') == 1


# ----------------------------------------------------------------------------- browser


def test_every_image_loads_in_headless_chromium(tmp_path):
    chromium = require_chromium()
    index = map_report(tmp_path / "report", metrics={"nmi": 0.5123, "acc": 0.7})
    url = index.resolve().as_uri()

    dom = run_headless(chromium, tmp_path / "profile", "--dump-dom", url)
    counts, found = body_counts(dom)
    # 60 thumbnails, the map, and one thumbnail per class in the map's legend
    assert counts == {"total": "66", "loaded": "66", "lazy-pending": "0", "broken": "0"}
    # the map decoded at its size; its 5 areas and 5 legend links all have a target
    assert found == {"rendered": f"{MAP_PX}x{MAP_PX}", "links": "10", "dead-links": "0"}

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
    # the whole map is on screen, unscaled: each class colour covers at least as many pixels
    # of the screenshot as of map.png (the legend's swatches add a few)
    pixels = np.asarray(image).astype(int)
    drawn = np.asarray(Image.open(tmp_path / "report" / "map.png")).astype(int)
    _, preds, confidences, _ = synthetic()
    for c, rgb in class_colours(s.class_id for s in summarize_classes(preds, confidences)).items():
        on_map = int(np.all(drawn == rgb, axis=-1).sum())
        on_screen = int((np.abs(pixels - rgb).max(axis=-1) <= 2).sum())
        assert on_screen >= on_map > 100, (c, rgb, on_screen, on_map)
