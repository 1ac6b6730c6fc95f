"""The multi-crop recipe (2 global + N local views per image) and its classic engine.

Every view draws a random-resized crop (area ``scale``, aspect ``ratio``), a horizontal flip,
an optional small rotation, colour jitter (brightness, contrast, saturation, hue), random
grayscale, an optional random gamma, Gaussian blur and solarisation with its kind's
probability, optional random erasing, then is normalised.
View kinds: global crop 1, global crops 2.., local crops (DINO's asymmetric blur and
solarisation). ``ClassicMultiCrop`` runs it per sample with torchvision transforms in loader
workers (the paper's pipeline); ``crops.py`` and ``batched.py`` run the same recipe faster.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torchvision.transforms import v2

from selfclassifier.config import AugmentConfig

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ViewSpec:
    """What one view of the recipe is: size, crop area range, blur / solarise probabilities."""

    size: int
    scale: tuple[float, float]
    blur: float
    solarize: float


def view_specs(cfg: AugmentConfig) -> list[ViewSpec]:
    """The recipe's views in order: global crops first, then local crops."""
    specs = []
    for k in range(cfg.global_crops):
        kind = 0 if k == 0 else 1
        specs.append(
            ViewSpec(cfg.global_size, tuple(cfg.global_scale), cfg.blur[kind], cfg.solarize[kind])
        )
    for _ in range(cfg.local_crops):
        specs.append(ViewSpec(cfg.local_size, tuple(cfg.local_scale), cfg.blur[2], cfg.solarize[2]))
    return specs


def normalization(cfg: AugmentConfig, channels: int) -> tuple[tuple, tuple]:
    if cfg.mean is not None and cfg.std is not None:
        mean, std = tuple(cfg.mean), tuple(cfg.std)
    elif channels == 3:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        mean, std = (0.5,) * channels, (0.5,) * channels
    if len(mean) != channels or len(std) != channels:
        raise ValueError(
            f"augment.mean/std have {len(mean)} values but images have {channels} "
            "channels; give one value per channel"
        )
    return mean, std


class _RandomBlur(torch.nn.Module):
    def __init__(self, p: float, sigma: tuple[float, float], size: int):
        super().__init__()
        # Sigma is in pixels of the crop (DINO blurs the resized crop); the kernel covers 3
        # sigma but never exceeds the crop.
        k = min(2 * math.ceil(3 * sigma[1]) + 1, size if size % 2 else size - 1)
        k = max(k, 1)
        self.p, self.blur = p, v2.GaussianBlur(kernel_size=k, sigma=sigma)

    def forward(self, x):
        return self.blur(x) if torch.rand(()) < self.p else x


class _RandomGamma(torch.nn.Module):
    """``x ** g`` with probability ``p``, g log-uniform in ``bounds`` (uint8 or float image)."""

    def __init__(self, p: float, bounds: tuple[float, float]):
        super().__init__()
        self.p, self.log_low, self.log_high = p, math.log(bounds[0]), math.log(bounds[1])

    def forward(self, x):
        if torch.rand(()) >= self.p:
            return x
        g = math.exp(self.log_low + (self.log_high - self.log_low) * float(torch.rand(())))
        return v2.functional.adjust_gamma(x, g)


class _Noise(torch.nn.Module):
    def __init__(self, std: float):
        super().__init__()
        self.std = std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.std * torch.randn_like(x)).clamp(0, 1)


_TV_INTERPOLATION = {
    "bicubic": v2.InterpolationMode.BICUBIC,
    "bilinear": v2.InterpolationMode.BILINEAR,
}


class ClassicMultiCrop:
    """Per-sample multi-crop: image (PIL or uint8 C,H,W tensor) -> list of float views."""

    def __init__(self, cfg: AugmentConfig, channels: int):
        mean, std = normalization(cfg, channels)
        self.views = [self._view(cfg, spec, channels, mean, std) for spec in view_specs(cfg)]

    @staticmethod
    def _view(cfg: AugmentConfig, spec: ViewSpec, channels: int, mean, std) -> v2.Compose:
        color = [
            v2.ColorJitter(
                cfg.brightness,
                cfg.contrast,
                cfg.saturation if channels == 3 else 0,
                cfg.hue if channels == 3 else 0,
            )
        ]
        ops = [
            v2.ToImage(),
            v2.RandomResizedCrop(
                spec.size,
                scale=spec.scale,
                ratio=tuple(cfg.ratio),
                interpolation=_TV_INTERPOLATION[cfg.interpolation],
                antialias=True,
            ),
        ]
        if cfg.rotation > 0:
            ops.append(v2.RandomRotation(cfg.rotation))
        if cfg.hflip > 0:
            ops.append(v2.RandomHorizontalFlip(cfg.hflip))
        if cfg.jitter > 0:
            ops.append(v2.RandomApply(color, p=cfg.jitter))
        if channels == 3 and cfg.grayscale > 0:
            ops.append(v2.RandomGrayscale(cfg.grayscale))
        if cfg.gamma > 0:
            ops.append(_RandomGamma(cfg.gamma, tuple(cfg.gamma_range)))
        if spec.blur > 0:
            ops.append(_RandomBlur(spec.blur, tuple(cfg.blur_sigma), spec.size))
        if spec.solarize > 0:
            ops.append(v2.RandomSolarize(128, p=spec.solarize))
        ops.append(v2.ToDtype(torch.float32, scale=True))
        if cfg.erase > 0:
            ops.append(
                v2.RandomErasing(
                    cfg.erase, scale=tuple(cfg.erase_scale), ratio=tuple(cfg.erase_ratio), value=0
                )
            )
        if cfg.noise > 0:
            ops.append(_Noise(cfg.noise))
        ops.append(v2.Normalize(mean, std))
        return v2.Compose(ops)

    def __call__(self, image) -> list[torch.Tensor]:
        return [view(image) for view in self.views]


def eval_side(cfg: AugmentConfig) -> int:
    """Side of the evaluation input: ``eval_size``, or when it is 0 the side training ended at
    (``final_size``, else ``global_size``)."""
    return cfg.eval_size or cfg.final_size or cfg.global_size


def augment_at(cfg: AugmentConfig, epochs: int, epoch: int) -> AugmentConfig:
    """The view recipe of ``epoch`` in a run of ``epochs``: ``cfg`` itself, or in the last
    ``final_epochs`` a copy whose global crops are ``final_size`` px."""
    if cfg.final_size and epoch >= epochs - cfg.final_epochs:
        return dataclasses.replace(cfg, global_size=cfg.final_size)
    return cfg


def eval_transform(cfg: AugmentConfig, channels: int, from_files: bool) -> v2.Compose:
    """Deterministic transform for evaluation and prediction: resize + centre crop + normalise,
    at :func:`eval_side`."""
    mean, std = normalization(cfg, channels)
    size = eval_side(cfg)
    ops = [v2.ToImage()]
    # ImageNet convention: resize the short side to size/0.875, then centre-crop; in-memory
    # datasets already have the training resolution's framing.
    ops += [
        v2.Resize(int(round(size / 0.875)) if from_files else size, antialias=True),
        v2.CenterCrop(size),
    ]
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(ops)
