"""Cluster gallery: look at the classes a Self-Classifier head found.

``write_report`` turns predictions for N images into a folder that opens in any browser
without a network::

    out_dir/
      index.html        summary, metrics, class-size bar chart (inline SVG), one section
                        per non-empty class with its most confident images
      thumbs/000123.png one PNG per image shown, named by the image's index
      grid.png          the paper's qualitative figure: one row per class (the most
                        confident classes first), its most confident images left to right
      map.png           with ``embeddings``: a 2-D map (t-SNE, or UMAP when installed) of up
                        to ``map_points`` images coloured by class; the page links each
                        class on it, and in its legend, to the class's section

Classes are ordered by mean confidence because the confident classes are the ones the
network is sure about; they are the first thing worth looking at. Images are referenced
by relative paths so the folder can be zipped, copied or served as it is.

>>> import numpy as np, tempfile
>>> rng = np.random.default_rng(0)
>>> images = rng.integers(0, 256, (12, 8, 8), dtype=np.uint8)
>>> preds, conf = np.arange(12) % 3, rng.uniform(0.3, 1.0, 12)
>>> write_report(tempfile.mkdtemp(), images, preds, conf, num_classes=4).name
'index.html'
"""

from __future__ import annotations

import html
import math
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from selfclassifier.embedding_map import (
    MAP_POINTS,
    MIN_POINTS,
    class_colours,
    layout_2d,
    render_map,
)

THUMB_PX = 96  # thumbnails fit a THUMB_PX box ...
MIN_THUMB_PX = 64  # ... and tiny images are blown up to at least this, pixel for pixel
GRID_ROWS = 20
GRID_COLS = 10
EAGER_SECTIONS = 50  # later sections load their images lazily, so huge heads stay usable

ImageSource = np.ndarray | Sequence[str | os.PathLike] | Callable[[int], Image.Image]


@dataclass(frozen=True)
class ClassSummary:
    """One non-empty predicted class; ``members`` sorted by confidence, most confident first."""

    class_id: int
    members: np.ndarray
    mean_confidence: float
    majority_label: int | None  # None when no member has a known label
    purity: float | None  # share of labelled members that carry the majority label


def write_report(
    out_dir: str | os.PathLike,
    images: ImageSource,
    preds,
    confidences,
    num_classes: int,
    *,
    labels=None,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    metrics: Mapping[str, object] | None = None,
    title: str = "Self-Classifier classes",
    per_class: int = 16,
    max_classes: int | None = None,
    head_name: str = "head 0",
    embeddings=None,
    map_points: int = MAP_POINTS,
    map_seed: int = 0,
    map_method: str = "auto",
    heads: Sequence[Mapping[str, object]] | None = None,
    head_index: int | None = None,
) -> pathlib.Path:
    """Write ``out_dir/index.html`` (+ ``thumbs/``, ``grid.png``, ``map.png``); return its path.

    Args:
        images: uint8 array (N, H, W), (N, H, W, 1) or (N, H, W, 3); or N image file
            paths; or a callable ``i -> PIL.Image`` so only the images shown get loaded.
        preds: (N,) predicted class ids in [0, num_classes).
        confidences: (N,) softmax probability of each predicted class, in [0, 1].
        num_classes: classes of the head, so empty classes can be reported too.
        labels: (N,) true label ids, -1 where unknown; None when there are none.
        class_names: names for label ids (a list, or a dict for sparse ids).
        metrics: values shown in a table, e.g. ``{"nmi": 0.71, "acc": 0.65}``.
        per_class: images shown per class, the most confident ones.
        max_classes: show sections for only this many classes (the most confident);
            the bar chart always shows all of them.
        head_name: which classifier head the predictions came from, shown in the summary.
        embeddings: (N, D) embeddings of the images: draws ``map.png``, a 2-D map of
            ``map_points`` of them (a random subset for ``map_seed``; 0: no map) made with
            ``map_method`` ('auto': UMAP when umap-learn is installed, else t-SNE).
        heads: one dict of scores per head of the model (``classes``, ``active_classes``,
            ``size_entropy``, ``silhouette``, and ``nmi``, ``acc``... when labels are
            known), shown as a table to compare heads; ``head_index`` is the one reported.
    """
    preds, confidences, labels = _check_inputs(preds, confidences, labels, num_classes)
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    if max_classes is not None and max_classes < 1:
        raise ValueError(f"max_classes must be >= 1 or None, got {max_classes}")
    if map_points < 0:
        raise ValueError(f"map_points must be >= 0, got {map_points}")
    if embeddings is not None and len(embeddings) != len(preds):
        raise ValueError(f"got {len(embeddings)} embeddings for {len(preds)} predictions")
    load_image = _image_loader(images, len(preds))

    classes = summarize_classes(preds, confidences, labels)
    shown = classes if max_classes is None else classes[:max_classes]
    grid_members = {c.class_id: c.members[:GRID_COLS] for c in classes[:GRID_ROWS]}

    out_dir = pathlib.Path(out_dir)
    (out_dir / "thumbs").mkdir(parents=True, exist_ok=True)
    wanted = {int(i) for c in shown for i in c.members[:per_class]}
    grid_wanted = {int(i) for m in grid_members.values() for i in m}
    wanted |= grid_wanted
    thumbs, grid_thumbs = _write_thumbnails(out_dir, load_image, sorted(wanted), grid_wanted)
    _grid_image(grid_members, grid_thumbs).save(out_dir / "grid.png")
    embedding_map = None
    if embeddings is not None and min(map_points, len(preds)) >= MIN_POINTS:
        embedding_map = _write_map(
            out_dir, embeddings, preds, classes, map_points, map_seed, map_method
        )

    page = _render_page(
        classes=classes,
        shown=shown,
        thumbs=thumbs,
        confidences=confidences,
        labels=labels,
        paths=_paths_or_none(images),
        num_images=len(preds),
        num_classes=num_classes,
        class_names=class_names,
        metrics=metrics,
        title=title,
        per_class=per_class,
        head_name=head_name,
        embedding_map=embedding_map,
        heads=heads,
        head_index=head_index,
    )
    index = out_dir / "index.html"
    index.write_text(page, encoding="utf-8", newline="\n")
    return index


def summarize_classes(preds, confidences, labels=None) -> list[ClassSummary]:
    """Non-empty classes sorted by mean confidence (desc), ties broken by class id."""
    classes = []
    for c in np.unique(preds):
        idx = np.flatnonzero(preds == c)
        idx = idx[np.lexsort((idx, -confidences[idx]))]  # stable: ties keep index order
        majority, purity = None, None
        if labels is not None:
            known = labels[idx][labels[idx] >= 0]
            if known.size:
                values, counts = np.unique(known, return_counts=True)
                majority = int(values[np.argmax(counts)])  # ties -> smallest label id
                purity = float(counts.max() / known.size)
        classes.append(ClassSummary(int(c), idx, float(confidences[idx].mean()), majority, purity))
    classes.sort(key=lambda s: (-s.mean_confidence, s.class_id))
    return classes


# ----------------------------------------------------------------------------- inputs


def _check_inputs(preds, confidences, labels, num_classes):
    preds = np.asarray(preds)
    confidences = np.asarray(confidences, dtype=np.float64)
    if preds.ndim != 1:
        raise ValueError(f"preds must have shape (N,), got {preds.shape}")
    if preds.size and not np.issubdtype(preds.dtype, np.integer):
        raise ValueError(f"preds must be integer class ids, got dtype {preds.dtype}")
    preds = preds.astype(np.int64)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if preds.size and (preds.min() < 0 or preds.max() >= num_classes):
        raise ValueError(
            f"preds must lie in [0, {num_classes}), got range [{preds.min()}, {preds.max()}]"
        )
    if confidences.shape != preds.shape:
        raise ValueError(f"confidences shape {confidences.shape} != preds shape {preds.shape}")
    if not np.all((confidences >= 0) & (confidences <= 1 + 1e-6)):
        raise ValueError("confidences must be probabilities in [0, 1] (and not NaN)")
    if labels is not None:
        labels = np.asarray(labels).astype(np.int64)
        if labels.shape != preds.shape:
            raise ValueError(f"labels shape {labels.shape} != preds shape {preds.shape}")
    return preds, confidences, labels


def _image_loader(images, n: int) -> Callable[[int], Image.Image]:
    if callable(images):
        return images
    if isinstance(images, (list, tuple)) and (not images or not isinstance(images[0], Image.Image)):
        if len(images) != n:
            raise ValueError(f"got {len(images)} image paths for {n} predictions")
        return lambda i: _open_path(images[i])
    if isinstance(images, (list, tuple)):
        if len(images) != n:
            raise ValueError(f"got {len(images)} images for {n} predictions")
        return lambda i: images[i]
    array = np.asarray(images)
    if array.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8, got {array.dtype}; scale to 0..255 first")
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 3 or (array.ndim == 4 and array.shape[-1] == 3)):
        raise ValueError(
            f"image arrays must be (N, H, W), (N, H, W, 1) or (N, H, W, 3), got {array.shape}"
            " (channels-first? use array.transpose(0, 2, 3, 1))"
        )
    if len(array) != n:
        raise ValueError(f"got {len(array)} images for {n} predictions")
    return lambda i: Image.fromarray(array[i])


def _open_path(path) -> Image.Image:
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)  # phone photos are stored sideways
        return img.convert("RGB") if img.mode not in ("L", "RGB") else img.copy()


def _paths_or_none(images) -> Sequence | None:
    if isinstance(images, (list, tuple)) and images and not isinstance(images[0], Image.Image):
        return images
    return None


# ----------------------------------------------------------------------------- images


def _thumbnail(img: Image.Image) -> Image.Image:
    if img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    side = max(img.size)
    if side < THUMB_PX:  # tiny (8x8 digits, 28x28 MNIST): integer nearest-neighbour blow-up
        k = max(THUMB_PX // side, math.ceil(MIN_THUMB_PX / side))
        return img.resize((img.width * k, img.height * k), Image.Resampling.NEAREST)
    img = img.copy()
    img.thumbnail((THUMB_PX, THUMB_PX), Image.Resampling.LANCZOS)
    return img


def _thumb_name(i: int) -> str:
    return f"thumbs/{i:06d}.png"


def _write_thumbnails(out_dir: pathlib.Path, load_image, indices, keep) -> tuple[dict, dict]:
    """Save one PNG per index; return index -> (width, height), and the thumbnails in keep.

    Only the thumbnails in ``keep`` (the grid's) stay in memory: a report of a head with
    thousands of classes shows tens of thousands of images.
    """
    sizes, kept = {}, {}
    for i in indices:
        thumb = _thumbnail(load_image(i))
        thumb.save(out_dir / _thumb_name(i))
        sizes[i] = thumb.size
        if i in keep:
            kept[i] = thumb
    return sizes, kept


def _grid_image(grid_members: Mapping[int, np.ndarray], thumbs: Mapping[int, Image.Image]):
    """One row per class: its id on the left, its most confident images to the right."""
    cell, label_w = THUMB_PX + 4, 92
    grid = Image.new("RGB", (label_w + GRID_COLS * cell, max(len(grid_members), 1) * cell), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default(size=15)
    for row, (class_id, members) in enumerate(grid_members.items()):
        y = row * cell
        draw.text((8, y + cell // 2), f"class {class_id}", fill="black", font=font, anchor="lm")
        for col, i in enumerate(members):
            thumb = thumbs[int(i)]
            x = label_w + col * cell + (cell - thumb.width) // 2
            grid.paste(thumb, (x, y + (cell - thumb.height) // 2))
        if row:
            draw.line([(0, y), (grid.width, y)], fill=(225, 225, 225))
    return grid


@dataclass(frozen=True)
class _MapFigure:
    method: str
    seed: int
    classes: np.ndarray  # (M,) class of each image on the map
    anchors: dict[int, tuple[int, int]]
    colours: dict[int, tuple[int, int, int]]
    size: int


def _write_map(out_dir, embeddings, preds, classes, map_points, seed, method) -> _MapFigure:
    """``map.png``: the embeddings' 2-D layout, one colour per class (page order, so the
    most confident classes get the most distinct colours)."""
    if hasattr(embeddings, "detach"):
        embeddings = embeddings.detach().cpu().numpy()
    layout = layout_2d(embeddings, map_points, seed, method)
    colours = class_colours(c.class_id for c in classes)
    on_map = preds[layout.indices]
    drawn = render_map(layout.xy, on_map, colours, seed=seed)
    drawn.image.save(out_dir / "map.png")
    return _MapFigure(layout.method, seed, on_map, drawn.anchors, colours, drawn.image.width)


# ----------------------------------------------------------------------------- HTML

_SEP = " \u00b7 "


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _label_name(label: int, class_names) -> str:
    if class_names is not None:
        try:
            return str(class_names[label])
        except (IndexError, KeyError):
            pass
    return str(label)


def _fmt(value) -> str:
    if value is None:
        return "\u2013"  # a score that is undefined here, e.g. one class's silhouette
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4f}"
    return str(value)


def _id_ranges(ids) -> str:
    """[1, 2, 3, 7, 9, 10] -> '1-3, 7, 9-10' (with en dashes): 8000-class heads have long lists."""
    parts, ids = [], sorted(ids)
    start = prev = None
    for c in [*ids, None]:
        if prev is not None and c == prev + 1:
            prev = c
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}\u2013{prev}")
        start = prev = c
    return ", ".join(parts)


def _render_page(
    *,
    classes,
    shown,
    thumbs,
    confidences,
    labels,
    paths,
    num_images,
    num_classes,
    class_names,
    metrics,
    title,
    per_class,
    head_name,
    embedding_map=None,
    heads=None,
    head_index=None,
) -> str:
    empty = sorted(set(range(num_classes)) - {c.class_id for c in classes})
    body = [
        f"<header><h1>{_esc(title)}</h1>",
        _summary_html(classes, num_images, num_classes, head_name, labels is not None),
        "</header>",
    ]
    if labels is not None:
        body.append(
            '<p class="legend">Hover an image for its confidence and label; a red frame '
            "marks an image whose label differs from its class's majority label.</p>"
        )
    if metrics:
        body.append(_metrics_html(metrics))
    if heads:
        body.append(_heads_html(heads, head_index))
    body.append(_bar_chart_svg(classes, num_images, num_classes, {c.class_id for c in shown}))
    if embedding_map is not None:
        body.append(_map_html(embedding_map, shown, thumbs, num_images, head_name))
    for n, summary in enumerate(shown):
        body.append(
            _class_section_html(
                summary,
                thumbs,
                confidences,
                labels,
                paths,
                class_names,
                per_class,
                lazy=n >= EAGER_SECTIONS,
            )
        )
    if len(shown) < len(classes):
        hidden = [c.class_id for c in classes[len(shown) :]]
        body.append(
            f'<p class="rest">{len(hidden)} more non-empty classes not shown '
            f"(max_classes={len(shown)}): {_id_ranges(hidden)}</p>"
        )
    body.append(
        f'<p class="rest" id="empty-classes">Empty classes ({len(empty)}): '
        f"{_id_ranges(empty) if empty else 'none'}</p>"
    )
    return _page(_esc(title), "\n".join(body))


def _summary_html(classes, num_images, num_classes, head_name, has_labels) -> str:
    sizes = [len(c.members) for c in classes]
    items = [
        ("images", f"{num_images:,}"),
        ("non-empty classes", f"{len(classes):,} of {num_classes:,}"),
        ("head", _esc(head_name)),
    ]
    if sizes:
        items += [
            ("class size", f"{min(sizes):,}\u2013{max(sizes):,}"),
            ("uniform size", f"{num_images / num_classes:,.1f}"),
        ]
    if has_labels:
        items.append(("labels", "known"))
    cards = "".join(f'<div class="card"><b>{v}</b><span>{k}</span></div>' for k, v in items)
    return f'<div class="summary">{cards}</div>'


def _metrics_html(metrics: Mapping[str, object]) -> str:
    rows = "".join(
        f"<tr><th>{_esc(k)}</th><td>{_esc(_fmt(v))}</td></tr>" for k, v in metrics.items()
    )
    return f'<table class="metrics"><caption>metrics</caption>{rows}</table>'


_HEAD_COLUMNS = [  # (key, header); label-free first: they exist with or without labels
    ("classes", "classes"),
    ("active_classes", "active classes"),
    ("size_entropy", "size entropy"),
    ("silhouette", "silhouette"),
    ("selection_loss", "selection loss"),
    ("nmi", "NMI"),
    ("acc", "ACC"),
    ("acc_many_to_one", "ACC many-to-one"),
]


def _heads_html(heads, head_index) -> str:
    """Every head side by side, to choose the number of classes; the highest silhouette
    is in bold, the reported head highlighted, selected candidates starred."""
    cols = [(k, name) for k, name in _HEAD_COLUMNS if any(k in h for h in heads)]
    silhouettes = [h.get("silhouette") for h in heads]
    best = max((s for s in silhouettes if s is not None), default=None)
    head_row = ["<tr><th>head</th>", *(f"<th>{name}</th>" for _, name in cols), "</tr>"]
    rows = ["".join(head_row)]
    for i, h in enumerate(heads):
        cells = []
        for key, _ in cols:
            v = h.get(key)
            text = _esc(_fmt(v))
            strong = key == "silhouette" and v is not None and v == best
            cells.append(f'<td class="best">{text}</td>' if strong else f"<td>{text}</td>")
        mark = "*" if h.get("selected") else ""
        current = ' class="current"' if i == head_index else ""
        rows.append(f'<tr{current} data-head="{i}"><th>{i}{mark}</th>{"".join(cells)}</tr>')
    notes = [
        "size entropy: entropy of the class sizes over log(classes), 1 = all classes the "
        "same size; silhouette: cosine, on the embeddings, higher = tighter and better "
        "separated classes (bold: the highest). Neither reads a label, and the silhouette "
        "compares heads of different sizes."
    ]
    if head_index is not None:
        notes.append("Highlighted: the head shown on this page.")
    if any(h.get("selected") for h in heads):
        notes.append("*: lowest loss among the heads with as many classes.")
    return (
        f'<table class="metrics heads" id="heads"><caption>heads</caption>{"".join(rows)}'
        f'</table><p class="legend">{_esc(" ".join(notes))}</p>'
    )


def _map_html(fig: _MapFigure, shown, thumbs, num_images, head_name) -> str:
    """map.png with an image map (each class's id on the map links to its section) and a
    legend beside it: colour, id, images on the map and its most confident thumbnail."""
    sections = {c.class_id for c in shown}
    on_map = dict(zip(*np.unique(fig.classes, return_counts=True), strict=True))
    areas = [
        f'<area shape="circle" coords="{x},{y},{_MAP_HIT_PX}" href="#class-{c}" '
        f'alt="class {c}" title="class {c}: {on_map[c]} images on the map">'
        for c, (x, y) in fig.anchors.items()
        if c in sections
    ]
    legend = []
    for n, c in enumerate(s for s in shown if s.class_id in on_map):
        r, g, b = fig.colours[c.class_id]
        i = int(c.members[0])
        w, h = thumbs[i]
        loading = ' loading="lazy"' if n >= EAGER_SECTIONS else ""
        legend.append(
            f'<li><a href="#class-{c.class_id}"><i style="background:#{r:02x}{g:02x}{b:02x}">'
            f'</i><img src="{_thumb_name(i)}" width="{w}" height="{h}"{loading} alt="">'
            f"class {c.class_id} <span>{on_map[c.class_id]:,}</span></a></li>"
        )
    hidden = len(set(on_map) - sections)
    if hidden:
        legend.append(f'<li class="rest">{hidden} more classes without a section</li>')
    points = len(fig.classes)
    caption = (
        f"{fig.method} of the embeddings of {points:,} of {num_images:,} images"
        f"{f' (a random subset, seed {fig.seed})' if points < num_images else ''}, coloured "
        f"by the class of {_esc(head_name)}. Click a class id on the map, or one in the "
        "legend, for its images."
    )
    return (
        f'<figure class="map" id="embedding-map"><div class="mapwrap">'
        f'<img id="embedding-map-image" src="map.png" width="{fig.size}" height="{fig.size}" '
        f'usemap="#class-map" alt="{_esc(fig.method)} map of the embeddings by class">'
        f'<map name="class-map">{"".join(areas)}</map>'
        f'<ul class="maplegend">{"".join(legend)}</ul></div>'
        f"<figcaption>{caption}</figcaption></figure>"
    )


_MAP_HIT_PX = 14  # radius of the clickable circle around a class id on the map


def _bar_chart_svg(classes, num_images, num_classes, sections) -> str:
    """Class sizes, largest first; the dashed line is the size every class would have
    under the uniform prior the loss asks for. Bars of classes in ``sections`` link there."""
    bars = sorted(classes, key=lambda c: (-len(c.members), c.class_id))
    if not bars:
        return ""
    height, left, top, bottom, right = 200, 44, 12, 28, 90  # right: room for "uniform" label
    plot_h = height - top - bottom
    # a handful of classes get narrow bars in a narrow chart, not a wall across the page
    step = min((960 - left - right) / len(bars), 56)
    plot_w = step * len(bars)
    width = round(left + plot_w + right)
    biggest = len(bars[0].members)
    gap = step * 0.15 if step > 3 else 0
    svg_open = (
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        'aria-label="class sizes">'
    )
    axis_y = top + plot_h
    out = [
        f'<figure class="chart">{svg_open}',
        f'<line x1="{left}" y1="{axis_y}" x2="{width - 8}" y2="{axis_y}" class="axis"/>',
        f'<text x="{left - 6}" y="{top + 4}" class="tick" text-anchor="end">{biggest}</text>',
        f'<text x="{left - 6}" y="{axis_y}" class="tick" text-anchor="end">0</text>',
    ]
    for n, c in enumerate(bars):
        size = len(c.members)
        h = plot_h * size / biggest
        x = left + n * step + gap / 2
        bar = (
            f'<rect x="{x:.2f}" y="{top + plot_h - h:.2f}" '
            f'width="{max(step - gap, 0.5):.2f}" height="{h:.2f}">'
            f"<title>class {c.class_id}: {size} images, mean confidence "
            f"{c.mean_confidence:.3f}</title></rect>"
        )
        linked = c.class_id in sections  # max_classes hides some sections
        out.append(f'<a href="#class-{c.class_id}">{bar}</a>' if linked else bar)
        if len(bars) <= 40:
            out.append(
                f'<text x="{x + (step - gap) / 2:.2f}" y="{top + plot_h + 16}" class="tick" '
                f'text-anchor="middle">{c.class_id}</text>'
            )
    uniform = num_images / num_classes
    if uniform <= biggest:
        y = top + plot_h - plot_h * uniform / biggest
        out.append(
            f'<line x1="{left}" y1="{y:.2f}" x2="{width - 8}" y2="{y:.2f}" class="uniform"/>'
            f'<text x="{width - 10}" y="{y - 4:.2f}" class="tick" text-anchor="end">'
            f"uniform {uniform:.1f}</text>"
        )
    out.append("</svg><figcaption>class sizes, largest first (click a bar)</figcaption>")
    out.append("</figure>")
    return "\n".join(out)


def _class_section_html(
    summary: ClassSummary,
    thumbs,
    confidences,
    labels,
    paths,
    class_names,
    per_class: int,
    lazy: bool,
) -> str:
    c = summary
    meta = [f"{len(c.members):,} images", f"mean confidence {c.mean_confidence:.3f}"]
    if c.majority_label is not None:
        name = _esc(_label_name(c.majority_label, class_names))
        meta.append(f'majority label <b class="label">{name}</b> (purity {c.purity:.0%})')
    elif labels is not None:
        meta.append("no known labels")
    figures = []
    for i in c.members[:per_class]:
        i = int(i)
        w, h = thumbs[i]
        tip = [f"confidence {confidences[i]:.3f}"]
        off = ""
        if labels is not None and labels[i] >= 0:
            tip.append(f"label {_label_name(int(labels[i]), class_names)}")
            if c.majority_label is not None and labels[i] != c.majority_label:
                off = ' class="off"'  # disagrees with the class's majority label
        if paths is not None:
            tip.append(os.fspath(paths[i]))
        loading = ' loading="lazy"' if lazy else ""
        figures.append(
            f'<figure{off}><img src="{_thumb_name(i)}" width="{w}" height="{h}"{loading} '
            f'title="{_esc(" | ".join(tip))}" alt="image {i}">'
            f"<figcaption>{confidences[i]:.2f}</figcaption></figure>"
        )
    return (
        f'<section class="cls" id="class-{c.class_id}" data-class="{c.class_id}" '
        f'data-mean-confidence="{c.mean_confidence:.6f}">'
        f'<h2>class {c.class_id} <span class="meta">{_SEP.join(meta)}</span></h2>'
        f'<div class="thumbs">{"".join(figures)}</div></section>'
    )


# Counts the images that failed to load into <body data-*>, so a headless browser's
# DOM dump can prove the page is whole; harmless for a person reading the page.
_SCRIPT = """window.addEventListener("load", function () {
  var imgs = document.images, loaded = 0, pending = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (imgs[i].complete && imgs[i].naturalWidth > 0) loaded++;
    else if (!imgs[i].complete && imgs[i].loading === "lazy") pending++;
  }
  var d = document.body.dataset;
  d.totalImages = imgs.length;
  d.loadedImages = loaded;
  d.lazyPendingImages = pending;
  d.brokenImages = imgs.length - loaded - pending;
  var map = document.getElementById("embedding-map-image");
  if (map) {
    d.mapRendered = map.complete && map.naturalWidth > 0 ?
      map.naturalWidth + "x" + map.naturalHeight : "no";
    var links = document.querySelectorAll("#embedding-map a, #embedding-map area"), dead = 0;
    for (var j = 0; j < links.length; j++) {
      if (!document.getElementById(links[j].getAttribute("href").slice(1))) dead++;
    }
    d.mapLinks = links.length;
    d.mapDeadLinks = dead;
  }
});"""

_CSS = """
:root { --ink: #1f2328; --muted: #656d76; --line: #d0d7de; --accent: #3b6fb6; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1200px; padding: 24px 28px 48px; color: var(--ink);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
  background: #fff; }
header h1 { font-size: 26px; margin: 0 0 14px; }
.summary { display: flex; flex-wrap: wrap; gap: 10px; margin-bottom: 18px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 8px 14px; min-width: 120px;
  background: #f6f8fa; }
.card b { display: block; font-size: 18px; }
.card span { color: var(--muted); font-size: 12px; }
table.metrics { border-collapse: collapse; margin: 0 0 18px; min-width: 220px; }
table.metrics caption { text-align: left; color: var(--muted); font-size: 12px;
  padding-bottom: 4px; }
table.metrics th, table.metrics td { border: 1px solid var(--line); padding: 4px 12px;
  text-align: left; }
table.metrics td { font-variant-numeric: tabular-nums; text-align: right; }
figure.chart { width: fit-content; max-width: 100%; margin: 0 0 20px;
  border: 1px solid var(--line); border-radius: 8px; padding: 10px; }
figure.chart svg { max-width: 100%; height: auto; display: block; }
figure.chart rect { fill: var(--accent); }
figure.chart a:hover rect { fill: #e36209; }
figure.chart .axis { stroke: #8c959f; }
figure.chart .uniform { stroke: #cf222e; stroke-dasharray: 5 4; }
figure.chart .tick { font-size: 11px; fill: var(--muted); }
figure.chart figcaption { color: var(--muted); font-size: 12px; text-align: center; }
section.cls { border-top: 1px solid var(--line); padding: 12px 0 6px; }
section.cls h2 { font-size: 17px; margin: 0 0 10px; }
section.cls .meta { font-weight: normal; color: var(--muted); font-size: 13px; margin-left: 8px; }
section.cls .label { color: var(--ink); }
.thumbs { display: grid; grid-template-columns: repeat(auto-fill, minmax(104px, 1fr));
  gap: 8px; }
.thumbs figure { margin: 0; text-align: center; }
/* scale-down: thumbnails show at their own size (whole-pixel blow-ups stay crisp) */
.thumbs img { width: 96px; height: 96px; object-fit: scale-down; image-rendering: pixelated;
  background: #f6f8fa; border: 2px solid transparent; border-radius: 4px; }
.thumbs figure.off img { border-color: #cf222e; }
.thumbs figcaption { font-size: 11px; color: var(--muted); font-variant-numeric: tabular-nums; }
p.legend { color: var(--muted); font-size: 12px; margin: -6px 0 14px; }
p.rest { color: var(--muted); border-top: 1px solid var(--line); padding-top: 10px; }
table.heads tr.current { background: #fff8c5; }
table.heads td.best { font-weight: bold; }
figure.map { margin: 0 0 20px; border: 1px solid var(--line); border-radius: 8px; padding: 10px;
  width: fit-content; max-width: 100%; }
/* the image map's coordinates are in image pixels, so the map never scales */
.mapwrap { display: flex; gap: 12px; align-items: flex-start; overflow-x: auto; }
.mapwrap > img { flex: none; box-sizing: content-box; border: 1px solid var(--line); }
ul.maplegend { list-style: none; margin: 0; padding: 0; max-height: 720px; overflow-y: auto;
  min-width: 190px; font-size: 13px; }
ul.maplegend li { margin: 0 0 4px; }
ul.maplegend a { display: flex; align-items: center; gap: 6px; color: var(--ink);
  text-decoration: none; }
ul.maplegend a:hover { text-decoration: underline; }
ul.maplegend i { width: 12px; height: 12px; border-radius: 50%; flex: none; }
ul.maplegend img { width: 32px; height: 32px; object-fit: scale-down;
  image-rendering: pixelated; background: #f6f8fa; }
ul.maplegend span, ul.maplegend li.rest { color: var(--muted); }
figure.map figcaption { color: var(--muted); font-size: 12px; margin-top: 6px; max-width: 960px; }
"""


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{title}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n"
        f"<script>{_SCRIPT}</script>\n</body>\n</html>\n"
    )
