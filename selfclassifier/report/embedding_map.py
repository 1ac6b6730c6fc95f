"""A 2-D map of the embeddings, coloured by predicted class, for the report.

``layout_2d`` places up to ``max_points`` images (a fixed random subset for a seed) in the
plane with UMAP when ``umap-learn`` is installed, else scikit-learn's t-SNE; ``render_map``
draws them as dots with Pillow, one colour per class, and returns where each dot and each
class label went, so the page can link them (an HTML image map) to the class sections.

Same embeddings and seed, same PNG: t-SNE runs single-threaded (its Barnes-Hut gradient
sums in a different order with more threads, and then ends elsewhere), UMAP with a
``random_state`` is single-threaded already.

>>> import numpy as np
>>> x = np.random.default_rng(0).normal(size=(40, 8))
>>> layout = layout_2d(x, max_points=30, seed=0, method="tsne")
>>> layout.indices.shape, layout.xy.shape, layout.method
((30,), (30, 2), 't-SNE')
"""

from __future__ import annotations

import colorsys
import importlib.util
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MAP_POINTS = 3000  # t-SNE of 3000 points: about 15 s on one CPU core
MAP_PX = 720
MIN_POINTS = 5  # fewer images than this get no map
MAX_LABELS = 60  # more classes than this: no ids drawn on the map (the legend has them)
METHODS = ("auto", "tsne", "umap")

# Tableau 10, then 10 more that stay apart from them and from each other; beyond 20 classes,
# hues around the circle at the golden angle.
PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (0, 0, 128), (128, 0, 0), (0, 128, 128), (170, 110, 40), (0, 200, 120),
    (240, 50, 230), (60, 60, 60), (255, 200, 0), (100, 150, 255), (150, 0, 90),
]  # fmt: skip


@dataclass(frozen=True)
class Layout:
    """``xy[k]`` is the position of image ``indices[k]``; ``method`` names the projection."""

    indices: np.ndarray  # (M,) int64, sorted
    xy: np.ndarray  # (M, 2) float64
    method: str


@dataclass(frozen=True)
class RenderedMap:
    """The picture, each dot's pixel centre (M, 2), and each class's label anchor (x, y)."""

    image: Image.Image
    points: np.ndarray
    anchors: dict[int, tuple[int, int]]
    radius: int


def umap_available() -> bool:
    return importlib.util.find_spec("umap") is not None


def layout_2d(
    embeddings, max_points: int = MAP_POINTS, seed: int = 0, method: str = "auto"
) -> Layout:
    """2-D positions of up to ``max_points`` of the (N, D) ``embeddings`` (L2-normalised
    first, so Euclidean distance ranks pairs as cosine similarity does)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must have shape (N, D), got {x.shape}")
    n = len(x)
    indices = np.arange(n)
    if n > max_points:
        indices = np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))
    if len(indices) < MIN_POINTS:
        raise ValueError(f"a map needs at least {MIN_POINTS} images, got {len(indices)}")
    x = x[indices]
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    use_umap = method == "umap" or (method == "auto" and umap_available())
    xy = _umap(x, seed) if use_umap else _tsne(x, seed)
    return Layout(indices.astype(np.int64), np.asarray(xy, dtype=np.float64), _NAMES[use_umap])


_NAMES = {True: "UMAP", False: "t-SNE"}


def _tsne(x: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    perplexity = min(30.0, (len(x) - 1) / 3)
    with threadpool_limits(1):
        tsne = TSNE(2, perplexity=perplexity, init="pca", random_state=seed)
        return tsne.fit_transform(x)


def _umap(x: np.ndarray, seed: int) -> np.ndarray:
    import umap

    reducer = umap.UMAP(n_components=2, n_neighbors=min(15, len(x) - 1), random_state=seed)
    return reducer.fit_transform(x)


def class_colours(class_ids) -> dict[int, tuple[int, int, int]]:
    """A colour per class id, in the order given (put the classes that matter most first)."""
    colours = {}
    for rank, c in enumerate(class_ids):
        if rank < len(PALETTE):
            colours[int(c)] = PALETTE[rank]
        else:
            hue = (rank * 0.618033988749895) % 1.0
            value = (0.95, 0.75, 0.55)[rank % 3]
            r, g, b = colorsys.hsv_to_rgb(hue, 0.85, value)
            colours[int(c)] = (round(r * 255), round(g * 255), round(b * 255))
    return colours


def to_pixels(xy: np.ndarray, size: int, pad: int) -> np.ndarray:
    """Fit ``xy`` into a size x size square with ``pad`` px margins, one scale for both axes
    (distances on the map mean the same across and along), centred; int pixel centres."""
    xy = np.asarray(xy, dtype=np.float64)
    low, high = xy.min(axis=0), xy.max(axis=0)
    span = float(max((high - low).max(), 1e-12))
    scale = (size - 2 * pad) / span
    offset = (size - (high - low) * scale) / 2
    px = (xy - low) * scale + offset
    px[:, 1] = size - px[:, 1]  # y grows upwards on a plot
    return np.clip(np.rint(px), 0, size - 1).astype(np.int64)


def render_map(
    xy: np.ndarray,
    classes: np.ndarray,
    colours: dict[int, tuple[int, int, int]],
    size: int = MAP_PX,
    seed: int = 0,
) -> RenderedMap:
    """Draw one dot per point in its class's colour; ids at each class's medoid.

    Dots are drawn in a seeded random order, so no class hides under another only because
    its id is larger. The label anchor of a class is its member nearest the median of its
    members' positions: always on one of its own dots, even for a ring-shaped class.
    """
    classes = np.asarray(classes, dtype=np.int64)
    radius = 3 if len(classes) <= 5000 else 2
    points = to_pixels(xy, size, pad=4 * radius + 8)
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    for k in np.random.default_rng(seed).permutation(len(classes)):
        x, y = points[k]
        draw.ellipse(
            [x - radius, y - radius, x + radius, y + radius], fill=colours[int(classes[k])]
        )
    anchors = {}
    for c in np.unique(classes):
        members = points[classes == c]
        middle = np.median(members, axis=0)
        x, y = members[np.argmin(((members - middle) ** 2).sum(axis=1))]
        anchors[int(c)] = (int(x), int(y))
    if len(anchors) <= MAX_LABELS:
        font = ImageFont.load_default(size=14)
        for c, (x, y) in anchors.items():
            draw.text(
                (x, y), str(c), fill="black", font=font, anchor="mm",
                stroke_width=3, stroke_fill="white",
            )  # fmt: skip
    return RenderedMap(image, points, anchors, radius)
