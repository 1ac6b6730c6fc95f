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

import math
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from selfclassifier.report.embedding_map import (
    MAP_POINTS,
    MIN_POINTS,
    class_colours,
    layout_2d,
    render_map,
)
from selfclassifier.report.page import ClassSummary, _MapFigure, _render_page, _thumb_name

THUMB_PX = 96  # thumbnails fit a THUMB_PX box ...


MIN_THUMB_PX = 64  # ... and tiny images are blown up to at least this, pixel for pixel


GRID_ROWS = 20


GRID_COLS = 10


ImageSource = np.ndarray | Sequence[str | os.PathLike] | Callable[[int], Image.Image]


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
