"""The fast path's worker side: plan random-resized crop boxes, decode at the smallest
resolution they allow, and cut uint8 crops at the output sizes (``MultiCropCutter``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from selfclassifier.config import AugmentConfig
from selfclassifier.views.recipe import view_specs

Box = tuple[int, int, int, int]  # left, top, width, height in pixels


def rrc_params(width: int, height: int, scale, ratio, rng: random.Random) -> Box:
    """torchvision's ``RandomResizedCrop.get_params``, drawn from Python's ``rng``.

    Same distribution as the classic path (area fraction uniform in ``scale``, log-uniform
    aspect, 10 attempts, then the centre crop clamped to ``ratio``); plain Python because a
    handful of scalar draws per view is cheaper than tensor ops in a loader worker.
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, width - w), rng.randint(0, height - h), w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


class MultiCropCutter:
    """Worker stage of the fast path: decoded image -> uint8 crops at the output sizes.

    Usage per sample: ``boxes = plan((W, H), rng)`` on the full-resolution upright size,
    ``f = reduction(boxes)`` is the largest JPEG decode reduction (1, 2, 4 or 8) that still
    leaves every crop at least its output size, then ``cut(image_decoded_at_1/f, boxes, f)``.
    Crops come back as (H, W, C) so a stacked batch permutes to a channels_last
    (B, C, H, W) tensor for free.
    """

    def __init__(self, cfg: AugmentConfig, channels: int):
        self.specs, self.ratio, self.channels = view_specs(cfg), tuple(cfg.ratio), channels
        self.mode = cfg.interpolation

    def plan(self, size: tuple[int, int], rng: random.Random) -> list[Box]:
        width, height = size
        return [rrc_params(width, height, s.scale, self.ratio, rng) for s in self.specs]

    def reduction(self, boxes: Sequence[Box]) -> int:
        # Decoding at 1/f is an area-averaging downscale, so it is lossless for a crop that
        # is resized down by at least f anyway.
        room = min(min(b[2], b[3]) / s.size for b, s in zip(boxes, self.specs, strict=True))
        for f in (8, 4, 2):
            if room >= f:
                return f
        return 1

    def cut(self, image: Image.Image, boxes: Sequence[Box], factor: int = 1) -> list[torch.Tensor]:
        """uint8 (s, s, C) crop per view of ``image``, decoded at 1/``factor`` resolution.

        Resizing uses torch's uint8 antialiased kernel (bicubic or bilinear, as
        ``augment.interpolation``), the one the classic path's torchvision
        ``RandomResizedCrop`` runs, on a channels-last view (its fast layout).
        """
        arr = np.array(image)  # a writable copy: torch refuses to wrap read-only buffers
        height, width = arr.shape[:2]
        x = torch.from_numpy(arr.reshape(height, width, self.channels)).permute(2, 0, 1)[None]
        views = []
        for (left, top, w, h), spec in zip(boxes, self.specs, strict=True):
            # On a reduced grid the box snaps to whole pixels: an error of at most half a
            # reduced pixel on a crop at least `spec.size` reduced pixels wide.
            x0, y0 = min(round(left / factor), width - 1), min(round(top / factor), height - 1)
            x1 = min(max(x0 + 1, round((left + w) / factor)), width)
            y1 = min(max(y0 + 1, round((top + h) / factor)), height)
            crop = F.interpolate(
                x[..., y0:y1, x0:x1], size=(spec.size, spec.size), mode=self.mode, antialias=True
            )
            views.append(crop[0].permute(1, 2, 0))
        return views
