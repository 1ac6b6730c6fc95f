"""Multi-crop augmentation: 2 global + N local views per image, one recipe, three engines.

* ``ClassicMultiCrop``: per-sample torchvision transforms on a PIL image or uint8 tensor, run
  in DataLoader workers (the paper's pipeline).
* ``MultiCropCutter`` + ``BatchedPhotometric`` (the ``fast`` path for image files): loader
  workers only decode (at reduced JPEG resolution when every crop allows it) and cut the
  random-resized crops as uint8 at the output sizes; flips and the photometric ops then run
  on whole batches, with per-sample parameters, on the training device.
* ``BatchedMultiCrop``: the whole recipe on a uint8 batch of equally sized images (in-memory
  datasets): crops by one affine warp per view, then the same photometric stage.

Both draw, per view, a random-resized crop (area ``scale``, aspect ``ratio``), a horizontal
flip, an optional small rotation, colour jitter (brightness, contrast, saturation, hue),
random grayscale, Gaussian blur and solarisation with the view kind's probability, then
normalise. View kinds: global crop 1, global crop 2.., local crops (DINO's asymmetric blur
and solarisation).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
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


# ----------------------------------------------------------------------------- fast path: crops


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


# ----------------------------------------------------------------------------- batched ops


def _uniform(n: int, low: float, high: float, g: torch.Generator, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g, device=device)


def _bernoulli(n: int, p: float, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) < p


def compute_dtype(name: str, device: torch.device) -> torch.dtype:
    """The float type of the fast path's batched stage.

    ``auto``: bfloat16 on CUDA and on CPUs with native bfloat16 (half the memory traffic of
    float32, 2-4x faster here), else float32. bfloat16 keeps 8 significant bits, the same
    resolution as the uint8 images the classic path computes in.
    """
    if name == "auto":
        native = device.type == "cuda" or (
            device.type == "cpu" and torch.backends.mkldnn.is_available() and _cpu_has_bf16()
        )
        return torch.bfloat16 if native else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def _cpu_has_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def host_generator(g: torch.Generator) -> torch.Generator:
    """A CPU generator for choices made on the host (the order of colour ops).

    ``g`` itself when it is a CPU generator; for a CUDA generator, a CPU one seeded from its
    seed, so no draw ever needs a device -> host copy.
    """
    if g.device.type == "cpu":
        return g
    return torch.Generator().manual_seed(g.initial_seed())


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

    @staticmethod
    def of(g: torch.Generator, n: int, rows: tuple[int, int] | None, device) -> _Draws:
        """Draws for ``n`` samples that are rows ``start .. start+n`` of ``total``."""
        start, total = rows if rows is not None else (0, n)
        if not 0 <= start <= total - n:
            raise ValueError(f"rows {start}..{start + n} do not fit a batch of {total}")
        return _Draws(g, total, slice(start, start + n), torch.device(device))

    def uniform(self, low: float, high: float) -> torch.Tensor:
        return _uniform(self.total, low, high, self.g, self.device)[self.rows]

    def bernoulli(self, p: float) -> torch.Tensor:
        return _bernoulli(self.total, p, self.g, self.device)[self.rows]

    def normal(self, shape: torch.Size) -> torch.Tensor:
        return torch.randn((self.total, *shape[1:]), generator=self.g, device=self.device)[
            self.rows
        ]


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
    # torchvision's (ITU-R 601) weights, so both paths agree.
    return 0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def _adjust_hue(x: torch.Tensor, shift: torch.Tensor, max_shift: float = 0.5) -> torch.Tensor:
    """Shift the HSV hue of each RGB image of (B, 3, H, W) by its own ``shift`` (B,) turns.

    Same result as torchvision's ``adjust_hue`` (RGB -> HSV -> RGB) with the round trip
    folded: a hue shift keeps V = max and V S = max - min, and channel c of the result is
    ``max - (max - min) clamp(d_c - 1, 0, 1)``, where d_c is the circular distance (in
    sixths of a turn) between the new hue and the channel's own hue (R 0, G 2, B 4). Only
    the hue has to be computed, and no modulo is needed: ``max_shift`` (>= |shift|, known on
    the host) bounds how far the distance can wrap.
    """
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    delta = maxc - minc
    inv = delta.clamp(min=1e-12).reciprocal_()
    # Hue in sixths of a turn, in [-1, 5); grey pixels (delta 0) come out as max anyway. The
    # branch (which channel is the max; R before G before B on ties) is taken by exact 0/1
    # weights: CPU's torch.where is ~10x slower than these vectorised products.
    is_r = (maxc == r).to(x.dtype)
    is_g = (maxc == g).to(x.dtype).mul_(1.0 - is_r)
    is_b = (1.0 - is_r).sub_(is_g)
    h6 = (g - b).mul_(inv).mul_(is_r)
    h6.addcmul_((b - r).mul_(inv).add_(2.0), is_g)
    h6.addcmul_((r - g).mul_(inv).add_(4.0), is_b)
    h6.add_((6.0 * shift).to(x.dtype).view(-1, 1, 1))
    out = torch.empty_like(x)
    # One channel at a time on whole (B, H, W) planes: broadcasting against a per-channel
    # constant is several times slower on CPU.
    for channel, centre in enumerate((0.0, 2.0, 4.0)):
        d = (h6 - centre).abs_()  # < 5 + 6 max_shift
        if max_shift > 1 / 6:
            d = d.sub_((d > 6.0).to(d.dtype).mul_(6.0))
        d = torch.minimum(d, 6.0 - d).sub_(1.0).clamp_(0.0, 1.0)
        torch.addcmul(maxc, delta, d, value=-1.0, out=out[:, channel])
    return out


def gaussian_blur_batched(
    x: torch.Tensor, sigma: torch.Tensor, max_sigma: float | None = None
) -> torch.Tensor:
    """Blur each image of (B, C, H, W) with its own sigma (B,), separable, reflect padding.

    The kernel covers 3 ``max_sigma`` (like the classic path's fixed kernel size); give it
    from the config so the size never has to be read back from the device.
    """
    b, c, h, w = x.shape
    top = float(sigma.max()) if max_sigma is None else max_sigma
    radius = max(1, int(math.ceil(3 * top)))
    # Never wider than the image, as the classic path's kernel (and reflect padding) needs.
    radius = min(radius, (min(h, w) - 1) // 2)
    if radius == 0:
        return x
    # The kernel is made in float32 whatever x's type, so its weights still sum to ~1.
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    k = torch.exp(-0.5 * (t[None] / sigma[:, None].float()) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0).to(x.dtype)  # (B*C, K)
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(
        F.pad(y, (radius, radius, 0, 0), mode="reflect"), k[:, None, None, :], groups=b * c
    )
    y = F.conv2d(
        F.pad(y, (0, 0, radius, radius), mode="reflect"), k[:, None, :, None], groups=b * c
    )
    return y.reshape(b, c, h, w)


def _rotate(x: torch.Tensor, degrees: float, d: _Draws) -> torch.Tensor:
    """Rotate each image by its own angle, uniform in +-degrees, black fill (like v2)."""
    n, dev = x.shape[0], x.device
    angle = d.uniform(-degrees, degrees) * math.pi / 180
    cos, sin, zero = torch.cos(angle), torch.sin(angle), torch.zeros(n, device=dev)
    theta = torch.stack(
        [torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1
    ).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# ----------------------------------------------------------------------------- fast path: batch


def _op_order(n: int, host: torch.Generator) -> list[int]:
    """A random order of n ops, drawn on the host (``host`` is a CPU generator)."""
    return torch.randperm(n, generator=host).tolist()


def _rows_are_cheap(device: torch.device) -> bool:
    """Whether selecting rows by a mask is free (no device -> host wait): on CPU only."""
    return device.type == "cpu"


def _masked(y: torch.Tensor, mask: torch.Tensor, fn, inplace: bool = False) -> torch.Tensor:
    """``fn(y_rows, rows)`` where ``mask`` (B,) holds, ``y`` elsewhere.

    ``rows`` indexes the per-sample parameters ``fn`` uses (None: all samples). On GPU every
    sample is computed and ``torch.where`` picks, so nothing waits for the host; on CPU only
    the selected samples are computed (reading the mask there costs nothing), which is what
    makes the batched path cheap without an accelerator. Both give the same values.
    ``inplace``: ``y`` is ours to overwrite (CPU path).
    """
    if not _rows_are_cheap(y.device):
        return torch.where(mask.view(-1, 1, 1, 1), fn(y, None), y)
    rows = mask.nonzero().squeeze(1)
    if rows.numel() == 0:
        return y
    if rows.numel() == y.shape[0]:
        return fn(y, None)
    out = fn(y.index_select(0, rows), rows)
    return y.index_copy_(0, rows, out) if inplace else y.index_copy(0, rows, out)


def _take(p: torch.Tensor, rows: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """Per-sample parameters for ``rows`` (None: all), in ``like``'s dtype (no promotion)."""
    return (p if rows is None else p.index_select(0, rows)).to(like.dtype)


class BatchedPhotometric:
    """Device stage: every op after the crop, on a batch, with per-sample random parameters.

    ``__call__`` takes the fast path's uint8 crops (one (B, C, s, s) or, with
    ``channels_last``, (B, s, s, C) tensor per view) and applies flip, rotation, colour
    jitter, grayscale, blur, solarisation, noise and normalisation. ``photometric`` is the
    part ``BatchedMultiCrop`` shares (its affine crop already flips and rotates).
    """

    def __init__(self, cfg: AugmentConfig, channels: int, dtype: torch.dtype = torch.float32):
        """``dtype``: the float type ``__call__`` computes in (the output is float32)."""
        self.cfg, self.channels, self.dtype = cfg, channels, dtype
        self.specs = view_specs(cfg)
        self.mean, self.std = normalization(cfg, channels)
        self._stats: dict = {}

    def __call__(
        self,
        views: Sequence[torch.Tensor],
        generator: torch.Generator,
        channels_last: bool = False,
        alloc=None,
        rows: tuple[int, int] | None = None,
    ) -> list[torch.Tensor]:
        """``alloc(shape)``: where to put each float32 output (e.g. shared memory).
        ``rows=(start, total)``: the views are rows ``start ..`` of a global batch of
        ``total`` (one process's share); draws are made for all and sliced, so the views do
        not depend on the number of processes."""
        host = host_generator(generator)
        d = _Draws.of(generator, views[0].shape[0], rows, views[0].device)
        out = []
        for v, spec in zip(views, self.specs, strict=True):
            x = v.permute(0, 3, 1, 2) if channels_last else v
            # CPU kernels are several times faster on plain NCHW; CUDA keeps the free
            # channels_last layout the network wants.
            layout = torch.contiguous_format if x.is_cpu else torch.preserve_format
            if x.dtype == torch.uint8:
                x = x.to(self.dtype, memory_format=layout).div_(255.0)
            else:
                x = x.to(self.dtype, memory_format=layout)
            if x.data_ptr() == v.data_ptr():
                x = x.clone()  # the stage below writes in place; never into the caller's data
            x = self.flip(x, d)
            if self.cfg.rotation > 0:
                x = _rotate(x, self.cfg.rotation, d)
            y = self.photometric(x, spec, d, host)
            out.append(self.normalize(y, alloc(y.shape) if alloc is not None else None))
        return out

    def normalize(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """(x - mean) / std as float32, into ``out`` when given; ``x`` is left alone."""
        key = x.device
        if key not in self._stats:
            # Made once per device: a blocking host -> device copy every step would wait
            # for the GPU to drain its queue.
            mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
            self._stats[key] = (-mean / std, 1 / std)
        shift, scale = self._stats[key]
        # In place on a float32 copy: addcmul with these (1, C, 1, 1) operands is ~10x slower
        # on CPU.
        y = out.copy_(x) if out is not None else x.to(torch.float32, copy=True)
        return y.mul_(scale).add_(shift)

    def flip(self, x: torch.Tensor, d: _Draws) -> torch.Tensor:
        """Horizontal flip with probability ``hflip``, in place on CPU (``x`` is ours)."""
        if self.cfg.hflip > 0:
            flip = d.bernoulli(self.cfg.hflip)
            x = _masked(x, flip, lambda t, rows: t.flip(-1), inplace=True)
        return x

    def color(self, x: torch.Tensor, d: _Draws, host: torch.Generator) -> torch.Tensor:
        """Colour jitter (probability ``jitter``): brightness, contrast, saturation and hue
        with per-sample strengths, in a random order per batch (torchvision: per sample)."""
        cfg = self.cfg
        apply = d.bernoulli(cfg.jitter)

        def factor(strength: float) -> torch.Tensor:
            return d.uniform(max(0, 1 - strength), 1 + strength).view(-1, 1, 1, 1)

        ops = []
        if cfg.brightness > 0:
            f = factor(cfg.brightness)
            ops.append(lambda y, rows, f=f: (y * _take(f, rows, y)).clamp_(0, 1))
        if cfg.contrast > 0:
            f = factor(cfg.contrast)

            def contrast(y: torch.Tensor, rows, f=f) -> torch.Tensor:
                # f y + (1 - f) mean; lerp with a per-sample scalar start is ~5x slower.
                f = _take(f, rows, y)
                mean = _gray(y).mean((1, 2, 3), keepdim=True)
                return (y * f).add_(mean * (1 - f)).clamp_(0, 1)

            ops.append(contrast)
        if self.channels == 3 and cfg.saturation > 0:
            f = factor(cfg.saturation)
            ops.append(lambda y, rows, f=f: torch.lerp(_gray(y), y, _take(f, rows, y)).clamp_(0, 1))
        if self.channels == 3 and cfg.hue > 0:
            shift = d.uniform(-cfg.hue, cfg.hue)
            ops.append(lambda y, rows, s=shift: _adjust_hue(y, _take(s, rows, y), cfg.hue))
        if not ops:
            return x
        order = _op_order(len(ops), host)

        def jitter(y: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
            for k in order:
                y = ops[k](y, rows)
            return y

        return _masked(x, apply, jitter, inplace=True)

    def photometric(
        self, x: torch.Tensor, spec: ViewSpec, d: _Draws, host: torch.Generator
    ) -> torch.Tensor:
        """Colour jitter, grayscale, blur, solarise, noise on float (B, C, s, s) in [0, 1]."""
        cfg = self.cfg
        y = self.color(x, d, host) if cfg.jitter > 0 else x
        if self.channels == 3 and cfg.grayscale > 0:
            gray = d.bernoulli(cfg.grayscale)
            y = _masked(y, gray, lambda t, rows: _gray(t).expand_as(t).contiguous(), True)
        if spec.blur > 0:
            sigma = d.uniform(cfg.blur_sigma[0], cfg.blur_sigma[1]).clamp(min=1e-3)
            do = d.bernoulli(spec.blur)
            top = max(cfg.blur_sigma)
            blur = lambda t, rows: gaussian_blur_batched(t, _take(sigma, rows, t), top)  # noqa: E731
            y = _masked(y, do, blur, inplace=True)
        if spec.solarize > 0:
            do = d.bernoulli(spec.solarize)
            # min(t, 1 - t) is 1 - t exactly where t >= 0.5 (uint8 >= 128), t elsewhere.
            y = _masked(y, do, lambda t, rows: torch.minimum(t, 1 - t), True)
        if cfg.noise > 0:
            y = (y + cfg.noise * d.normal(y.shape).to(y.dtype)).clamp(0, 1)
        return y


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
        self.stage = BatchedPhotometric(cfg, channels)

    def __call__(
        self,
        images: torch.Tensor,
        generator: torch.Generator,
        rows: tuple[int, int] | None = None,
    ) -> list[torch.Tensor]:
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        d = _Draws.of(generator, x.shape[0], rows, x.device)
        host = host_generator(generator)
        return [
            self.stage.normalize(self.stage.photometric(self.crop(x, spec, d), spec, d, host))
            for spec in self.specs
        ]

    def crop(self, x: torch.Tensor, spec: ViewSpec, d: _Draws) -> torch.Tensor:
        """Random-resized crop (+ flip, rotation) of float (B, C, H, W) via one affine warp."""
        n = x.shape[0]
        centre, size = random_crop_boxes(d.total, spec.scale, self.cfg.ratio, d.g, d.device)
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
        # Downscaling by more than 2x aliases with point sampling; pre-shrink with area
        # averaging so the crop sees roughly the pixel density it needs. The smallest crop
        # the recipe allows (known on the host) sets the shrink: nothing is read back from the
        # device, and every process of a split batch shrinks alike.
        smallest = math.sqrt(spec.scale[0] * min(self.cfg.ratio[0], 1 / self.cfg.ratio[1]))
        shrink = int(min(x.shape[-2], x.shape[-1]) * smallest // (2 * spec.size))
        src = F.avg_pool2d(x, shrink, ceil_mode=True) if shrink >= 2 else x
        out = F.grid_sample(
            src, grid, mode=self.cfg.interpolation, padding_mode="reflection", align_corners=False
        )
        # bicubic overshoots at edges; the image's own range is [0, 1]
        return out.clamp_(0.0, 1.0) if self.cfg.interpolation == "bicubic" else out
