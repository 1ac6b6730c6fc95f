"""Worker-side crops of the fast path: RandomResizedCrop boxes as torchvision draws them,
the JPEG reduction every crop allows, and channels-last uint8 views."""

from __future__ import annotations

import random

import numpy as np
import torch

from selfclassifier.data.decode import decode_image
from selfclassifier.views import MultiCropCutter
from selfclassifier.views.crops import rrc_params
from tests.helpers import small_recipe
from tests.helpers.images import colourful, gradient_jpeg


def test_crop_params_follow_torchvision_bounds_and_area():
    rng = random.Random(0)
    areas = []
    for _ in range(2000):
        left, top, w, h = rrc_params(500, 375, (0.05, 0.4), (3 / 4, 4 / 3), rng)
        assert 0 <= left and left + w <= 500 and 0 <= top and top + h <= 375
        areas.append(w * h / (500 * 375))
    assert 0.045 <= min(areas) and max(areas) <= 0.41
    assert abs(np.mean(areas) - 0.225) < 0.01  # uniform area on [0.05, 0.4]


def test_crop_params_fall_back_to_a_centre_crop_for_extreme_aspect():
    left, top, w, h = rrc_params(400, 10, (0.9, 1.0), (3 / 4, 4 / 3), random.Random(0))
    assert h == 10 and w == round(10 * 4 / 3) and left == (400 - w) // 2 and top == 0


def test_reduction_is_the_largest_factor_every_crop_allows():
    cutter = MultiCropCutter(small_recipe(), 3)  # sizes 16, 16, 8, 8
    assert cutter.reduction([(0, 0, 130, 140)] * 2 + [(0, 0, 70, 64)] * 2) == 8
    assert cutter.reduction([(0, 0, 130, 140)] * 2 + [(0, 0, 70, 40)] * 2) == 4
    assert cutter.reduction([(0, 0, 20, 140)] * 2 + [(0, 0, 70, 40)] * 2) == 1


def test_crops_from_a_reduced_decode_match_full_resolution_crops(tmp_path):
    path = gradient_jpeg(tmp_path / "a.jpg")
    cutter = MultiCropCutter(small_recipe(), 3)
    boxes = cutter.plan((400, 320), random.Random(3))
    full, _ = decode_image(path, "RGB")
    reduced, factor = decode_image(path, "RGB", lambda size: 4)
    assert factor == 4
    for a, b in zip(cutter.cut(full, boxes), cutter.cut(reduced, boxes, 4), strict=True):
        assert a.shape == b.shape and a.dtype == torch.uint8
        assert (a.float() - b.float()).abs().mean() < 4.0  # grey levels, of 255


def test_cut_returns_channels_last_uint8_views_for_gray_and_rgb():
    for mode, channels in (("RGB", 3), ("L", 1)):
        cutter = MultiCropCutter(small_recipe(), channels)
        image = colourful().convert(mode)
        views = cutter.cut(image, cutter.plan(image.size, random.Random(0)))
        assert [tuple(v.shape) for v in views] == [(16, 16, channels)] * 2 + [(8, 8, channels)] * 2
