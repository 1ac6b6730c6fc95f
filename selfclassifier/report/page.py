"""The gallery's index.html: summary, metrics, per-head table, bar chart (inline SVG), the
embedding map with clickable classes, and one section per class. Self-contained: inline CSS
and script, relative image paths, no network.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

EAGER_SECTIONS = 50  # later sections load their images lazily, so huge heads stay usable


@dataclass(frozen=True)
class ClassSummary:
    """One non-empty predicted class; ``members`` sorted by confidence, most confident first."""

    class_id: int
    members: np.ndarray
    mean_confidence: float
    majority_label: int | None  # None when no member has a known label
    purity: float | None  # share of labelled members that carry the majority label


def _thumb_name(i: int) -> str:
    return f"thumbs/{i:06d}.png"


@dataclass(frozen=True)
class _MapFigure:
    method: str
    seed: int
    classes: np.ndarray  # (M,) class of each image on the map
    anchors: dict[int, tuple[int, int]]
    colours: dict[int, tuple[int, int, int]]
    size: int


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
