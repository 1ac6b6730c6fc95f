"""Multi-crop augmentation: 2 global + N local views per image, one recipe, two engines.

* ``ClassicMultiCrop``: per-sample torchvision transforms on a PIL image or uint8 tensor, run
  in DataLoader workers (the paper's pipeline).
* ``BatchedMultiCrop``: the same recipe on a whole uint8 batch at once, with per-sample random
  parameters, on whatever device the batch lives on (the CUDA device when training on GPU).

Both draw, per view, a random-resized crop (area ``scale``, aspect ``ratio``), a horizontal
flip, an optional small rotation, colour jitter (brightness, contrast, saturation, hue),
random grayscale, Gaussian blur and solarisation with the view kind's probability, then
normalise. View kinds: global crop 1, global crop 2.., local crops (DINO's asymmetric blur
and solarisation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
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


# ----------------------------------------------------------------------------- classic path


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


class _Noise(torch.nn.Module):
    def __init__(self, std: float):
        super().__init__()
        self.std = std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.std * torch.randn_like(x)).clamp(0, 1)


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
                spec.size, scale=spec.scale, ratio=tuple(cfg.ratio), antialias=True
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
        if spec.blur > 0:
            ops.append(_RandomBlur(spec.blur, tuple(cfg.blur_sigma), spec.size))
        if spec.solarize > 0:
            ops.append(v2.RandomSolarize(128, p=spec.solarize))
        ops.append(v2.ToDtype(torch.float32, scale=True))
        if cfg.noise > 0:
            ops.append(_Noise(cfg.noise))
        ops.append(v2.Normalize(mean, std))
        return v2.Compose(ops)

    def __call__(self, image) -> list[torch.Tensor]:
        return [view(image) for view in self.views]


def eval_transform(cfg: AugmentConfig, channels: int, from_files: bool) -> v2.Compose:
    """Deterministic transform for evaluation and prediction: resize + centre crop + normalise."""
    mean, std = normalization(cfg, channels)
    size = cfg.global_size
    ops = [v2.ToImage()]
    # ImageNet convention: resize the short side to size/0.875, then centre-crop; in-memory
    # datasets already have the training resolution's framing.
    ops += [
        v2.Resize(int(round(size / 0.875)) if from_files else size, antialias=True),
        v2.CenterCrop(size),
    ]
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(ops)


# ----------------------------------------------------------------------------- batched path


def _uniform(n: int, low: float, high: float, g: torch.Generator, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g, device=device)


def _bernoulli(n: int, p: float, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) < p


def random_crop_boxes(n: int, scale, ratio, g: torch.Generator, device, attempts: int = 10):
    """RandomResizedCrop boxes as fractions of the image: centres (n, 2) and sizes (n, 2).

    Like torchvision: draw area and log-uniform aspect; retry draws that do not fit, and fall
    back to the whole image (clamped) when none of ``attempts`` fits.
    """
    area = _uniform(n * attempts, scale[0], scale[1], g, device)
    log_r = _uniform(n * attempts, math.log(ratio[0]), math.log(ratio[1]), g, device)
    r = torch.exp(log_r)
    w = torch.sqrt(area * r).view(attempts, n)
    h = torch.sqrt(area / r).view(attempts, n)
    fits = (w <= 1) & (h <= 1)
    first = torch.where(
        fits.any(0), fits.float().argmax(0), torch.zeros_like(fits[0], dtype=torch.long)
    )
    pick = lambda t: t.gather(0, first[None])[0]  # noqa: E731
    w, h = pick(w).clamp(max=1), pick(h).clamp(max=1)
    cx = (1 - w) * torch.rand(n, generator=g, device=device) + w / 2
    cy = (1 - h) * torch.rand(n, generator=g, device=device) + h / 2
    return torch.stack([cx, cy], 1), torch.stack([w, h], 1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp(min=1e-12), torch.zeros_like(maxc))
    safe = delta.clamp(min=1e-12)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack([h, s, maxc], 1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = torch.stack(
        [
            torch.stack([v, q, p, p, t, v], 1),
            torch.stack([t, v, v, q, p, p], 1),
            torch.stack([p, p, t, v, v, q], 1),
        ],
        1,
    )  # (B, 3, 6, H, W)
    return table.gather(2, i[:, None, None].expand(-1, 3, 1, -1, -1)).squeeze(2)


def _blend(a: torch.Tensor, b: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor.view(-1, 1, 1, 1) * a + (1 - factor.view(-1, 1, 1, 1)) * b).clamp(0, 1)


def gaussian_blur_batched(
    x: torch.Tensor, sigma: torch.Tensor, radius: int | None = None
) -> torch.Tensor:
    """Blur each image of (B, C, H, W) with its own sigma (B,), separable, reflect padding.

    The kernel spans ``radius`` pixels each side (default: 3 x the largest sigma), capped by
    the image size.
    """
    b, c, h, w = x.shape
    if radius is None:
        radius = max(1, int(math.ceil(3 * float(sigma.max()))))
    radius = min(radius, (min(h, w) - 1)) if min(h, w) > 1 else 0
    if radius == 0:
        return x
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None] / sigma[:, None].to(x.dtype)) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B*C, K)
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(
        F.pad(y, (radius, radius, 0, 0), mode="reflect"), k[:, None, None, :], groups=b * c
    )
    y = F.conv2d(
        F.pad(y, (0, 0, radius, radius), mode="reflect"), k[:, None, :, None], groups=b * c
    )
    return y.reshape(b, c, h, w)


@dataclass(frozen=True)
class _Draws:
    """Random draws for a batch of ``total`` samples, of which this call augments ``rows``.

    Every draw is made for the whole batch and then sliced, so a sample's augmentation
    depends on the generator and its row in the batch only, not on how the batch is split
    across processes.
    """

    g: torch.Generator
    total: int
    rows: slice
    device: torch.device

    def uniform(self, low: float, high: float) -> torch.Tensor:
        return _uniform(self.total, low, high, self.g, self.device)[self.rows]

    def bernoulli(self, p: float) -> torch.Tensor:
        return _bernoulli(self.total, p, self.g, self.device)[self.rows]


class BatchedMultiCrop:
    """Multi-crop on a whole batch: uint8 (B, C, H, W) -> list of normalised float views.

    Every random choice is per sample and drawn from ``generator``, so a batch's views are a
    pure function of (images, generator state): resumable and reproducible. With
    ``rows=(start, total)`` the images are rows ``start .. start+B`` of a batch of ``total``
    (one process's share of a global batch): the draws are made for all ``total`` samples and
    sliced, so the views equal those of augmenting the global batch in one process.
    """

    def __init__(self, cfg: AugmentConfig, channels: int):
        self.cfg, self.channels = cfg, channels
        self.specs = view_specs(cfg)
        self.mean, self.std = normalization(cfg, channels)

    def __call__(
        self,
        images: torch.Tensor,
        generator: torch.Generator,
        rows: tuple[int, int] | None = None,
    ) -> list[torch.Tensor]:
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        start, total = rows if rows is not None else (0, x.shape[0])
        if not 0 <= start <= total - x.shape[0]:
            raise ValueError(f"rows {start}..{start + x.shape[0]} do not fit a batch of {total}")
        d = _Draws(generator, total, slice(start, start + x.shape[0]), x.device)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return [(self.view(x, spec, d) - mean) / std for spec in self.specs]

    def crop(self, x: torch.Tensor, spec: ViewSpec, d: _Draws) -> torch.Tensor:
        """Random-resized crop (+ flip, rotation) of float (B, C, H, W) via one affine warp."""
        n = x.shape[0]
        centre, size = random_crop_boxes(d.total, spec.scale, self.cfg.ratio, d.g, d.device)
        # Downscaling by more than 2x aliases with bilinear sampling; pre-shrink with area
        # averaging so the crop sees roughly the pixel density it needs. Decided on the whole
        # batch so that every process of a split batch shrinks alike.
        shrink = int(min(x.shape[-2], x.shape[-1]) * float(size.min()) // (2 * spec.size))
        centre, size = centre[d.rows], size[d.rows]
        flip = torch.where(d.bernoulli(self.cfg.hflip), -1.0, 1.0)
        angle = d.uniform(-self.cfg.rotation, self.cfg.rotation) * math.pi / 180
        cos, sin = torch.cos(angle), torch.sin(angle)
        sx, sy = size[:, 0] * flip, size[:, 1]
        theta = torch.stack(
            [
                torch.stack([sx * cos, -sy * sin, 2 * centre[:, 0] - 1], 1),
                torch.stack([sx * sin, sy * cos, 2 * centre[:, 1] - 1], 1),
            ],
            1,
        )
        grid = F.affine_grid(theta, [n, x.shape[1], spec.size, spec.size], align_corners=False)
        src = F.avg_pool2d(x, shrink, ceil_mode=True) if shrink >= 2 else x
        return F.grid_sample(
            src, grid, mode="bilinear", padding_mode="reflection", align_corners=False
        )

    def color(self, x: torch.Tensor, d: _Draws) -> torch.Tensor:
        """Colour jitter in a random order per batch, each op with per-sample strength."""
        cfg = self.cfg
        apply = d.bernoulli(cfg.jitter).float()
        ops = []
        if cfg.brightness > 0:
            f = d.uniform(max(0, 1 - cfg.brightness), 1 + cfg.brightness)
            ops.append(lambda y, f=f: _blend(y, torch.zeros_like(y), 1 + apply * (f - 1)))
        if cfg.contrast > 0:
            f = d.uniform(max(0, 1 - cfg.contrast), 1 + cfg.contrast)
            ops.append(
                lambda y, f=f: _blend(
                    y, _gray(y).mean((1, 2, 3), keepdim=True).expand_as(y), 1 + apply * (f - 1)
                )
            )
        if self.channels == 3 and cfg.saturation > 0:
            f = d.uniform(max(0, 1 - cfg.saturation), 1 + cfg.saturation)
            ops.append(lambda y, f=f: _blend(y, _gray(y).expand_as(y), 1 + apply * (f - 1)))
        if self.channels == 3 and cfg.hue > 0:
            f = d.uniform(-cfg.hue, cfg.hue) * apply

            def hue(y, f=f):
                hsv = _rgb_to_hsv(y)
                hsv = torch.cat([(hsv[:, :1] + f.view(-1, 1, 1, 1)) % 1.0, hsv[:, 1:]], 1)
                return _hsv_to_rgb(hsv)

            ops.append(hue)
        # The generator's own device: a CUDA generator cannot draw a CPU permutation.
        order = torch.randperm(len(ops), generator=d.g, device=d.g.device) if ops else []
        for k in order.tolist() if ops else []:
            x = ops[k](x)
        return x

    def view(self, x: torch.Tensor, spec: ViewSpec, d: _Draws) -> torch.Tensor:
        cfg = self.cfg
        y = self.color(self.crop(x, spec, d), d)
        if self.channels == 3 and cfg.grayscale > 0:
            gray = d.bernoulli(cfg.grayscale).view(-1, 1, 1, 1)
            y = torch.where(gray, _gray(y).expand_as(y), y)
        if spec.blur > 0:
            every_sigma = _uniform(d.total, cfg.blur_sigma[0], cfg.blur_sigma[1], d.g, d.device)
            radius = max(1, int(math.ceil(3 * float(every_sigma.max()))))
            sigma = every_sigma[d.rows]
            do = d.bernoulli(spec.blur).view(-1, 1, 1, 1)
            y = torch.where(do, gaussian_blur_batched(y, sigma.clamp(min=1e-3), radius), y)
        if spec.solarize > 0:
            do = d.bernoulli(spec.solarize).view(-1, 1, 1, 1)
            y = torch.where(do & (y >= 128 / 255), 1 - y, y)
        if cfg.noise > 0:
            noise = torch.randn((d.total, *y.shape[1:]), generator=d.g, device=d.device)
            y = (y + cfg.noise * noise[d.rows]).clamp(0, 1)
        return y
