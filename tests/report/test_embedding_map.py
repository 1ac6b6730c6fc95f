"""The report's embedding map: subset and layout per seed, dots coloured by class, UMAP switch."""

import sys
import types

import numpy as np
import pytest

from selfclassifier.report import embedding_map
from selfclassifier.report.embedding_map import (
    PALETTE,
    class_colours,
    layout_2d,
    render_map,
    to_pixels,
)


def clusters(n=120, groups=4, dim=12, seed=0):
    rng = np.random.default_rng(seed)
    truth = np.arange(n) % groups
    return rng.normal(size=(groups, dim))[truth] + 0.2 * rng.normal(size=(n, dim)), truth


def test_layout_is_deterministic_for_a_seed_and_subsets():
    x, _ = clusters()
    a = layout_2d(x, max_points=80, seed=1, method="tsne")
    b = layout_2d(x, max_points=80, seed=1, method="tsne")
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.xy, b.xy)
    assert a.method == "t-SNE" and len(a.indices) == 80 and np.all(np.diff(a.indices) > 0)
    c = layout_2d(x, max_points=80, seed=2, method="tsne")
    assert not np.array_equal(a.indices, c.indices)
    assert len(layout_2d(x, max_points=500, method="tsne").indices) == 120  # all of them


def test_layout_keeps_groups_apart():
    x, truth = clusters()
    xy = layout_2d(x, method="tsne").xy
    centres = np.stack([xy[truth == g].mean(0) for g in range(4)])
    spread = max(np.linalg.norm(xy[truth == g] - centres[g], axis=1).mean() for g in range(4))
    gaps = np.linalg.norm(centres[:, None] - centres[None], axis=-1)[np.triu_indices(4, 1)]
    assert gaps.min() > 2 * spread


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "pca"}, "method must be one of"),
        ({"max_points": 3}, "at least 5 images"),
    ],
)
def test_layout_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        layout_2d(np.zeros((10, 3)), **kwargs)


def test_umap_is_used_when_installed(monkeypatch):
    calls = {}

    class FakeUMAP:
        def __init__(self, **kwargs):
            calls.update(kwargs)

        def fit_transform(self, x):
            calls["norms"] = np.linalg.norm(x, axis=1)
            return x[:, :2] * 2

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=FakeUMAP))
    monkeypatch.setattr(embedding_map, "umap_available", lambda: True)
    x, _ = clusters(n=30)
    layout = layout_2d(x, seed=7)
    assert layout.method == "UMAP" and calls["random_state"] == 7
    np.testing.assert_allclose(calls["norms"], 1.0, rtol=1e-6)  # L2-normalised first
    assert layout_2d(x, method="tsne").method == "t-SNE"  # asked for by name


def test_colours_are_distinct_and_follow_the_given_order():
    colours = class_colours([9, 3, *range(100, 160)])
    assert colours[9] == PALETTE[0] and colours[3] == PALETTE[1]
    assert len(set(colours.values())) == 62
    assert all((255, 255, 255) != c for c in colours.values())


def test_pixels_keep_the_aspect_ratio_and_flip_y():
    px = to_pixels(np.array([[0.0, 0.0], [10.0, 5.0]]), size=120, pad=10)
    assert px.tolist() == [[10, 85], [110, 35]]  # 100 px per 10 units on both axes, centred


def test_every_dot_has_its_class_colour():
    """Points on a grid, no overlaps: each dot's centre is its class's colour, except the
    dots under the class ids."""
    xy = np.array([[i % 8, i // 8] for i in range(48)], dtype=float)
    classes = np.arange(48) % 3
    colours = class_colours([2, 0, 1])
    drawn = render_map(xy, classes, colours, size=300)
    pixels = np.asarray(drawn.image)
    assert drawn.image.size == (300, 300)
    assert set(drawn.anchors) == {0, 1, 2}
    labelled = [np.abs(drawn.points - a).max(axis=1) <= 10 for a in drawn.anchors.values()]
    free = ~np.any(labelled, axis=0)
    assert free.sum() >= 30
    for (x, y), c in zip(drawn.points[free], classes[free], strict=True):
        assert tuple(pixels[y, x]) == colours[c]
    for c, (x, y) in drawn.anchors.items():  # an anchor sits on a dot of its own class
        k = np.flatnonzero((drawn.points == (x, y)).all(axis=1))
        assert classes[k[0]] == c
