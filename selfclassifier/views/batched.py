"""The recipe on whole batches with per-sample parameters, on the training device.

* ``BatchedPhotometric``: flips and the photometric ops on uint8 crops cut by
  ``crops.MultiCropCutter`` (the ``fast`` path for image files).
* ``BatchedMultiCrop``: the whole recipe on a uint8 batch of equally sized images
  (in-memory datasets): crops by one affine warp per view, then the same photometric stage.

Every draw comes from the step's generator, so a batch's views depend only on (seed, epoch,
step, row in the global batch), never on the number of processes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from selfclassifier.config import AugmentConfig
from selfclassifier.views.recipe import ViewSpec, normalization, view_specs


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
    centre, size, _ = _fitting_boxes(n, scale, ratio, g, device, attempts)
    return centre, size


def _fitting_boxes(n: int, scale, ratio, g: torch.Generator, device, attempts: int):
    """``random_crop_boxes`` plus (n,) whether any attempt fitted (else the box is clamped)."""
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
    return torch.stack([cx, cy], 1), torch.stack([w, h], 1), fits.any(0)


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


def _random_gamma(x: torch.Tensor, p: float, low: float, high: float, d: _Draws) -> torch.Tensor:
    """``x ** g`` with probability ``p``, g log-uniform in [low, high] per sample (x in [0, 1])."""
    g = torch.exp(d.uniform(math.log(low), math.log(high)))
    # Not in place: on an accelerator ``_masked`` still needs the untouched ``x``.
    power = lambda t, rows: t.pow(_take(g, rows, t).view(-1, 1, 1, 1))  # noqa: E731
    return _masked(x, d.bernoulli(p), power, inplace=True)


def _random_erase(x: torch.Tensor, p: float, scale, ratio, d: _Draws) -> torch.Tensor:
    """Set one rectangle of each view to 0 with probability ``p`` (torchvision's
    RandomErasing with value 0: area fraction uniform in ``scale``, log-uniform aspect, ten
    tries, nothing erased when none fits)."""
    centre, size, fits = _fitting_boxes(d.total, scale, ratio, d.g, d.device, attempts=10)
    centre, size, do = centre[d.rows], size[d.rows], d.bernoulli(p) & fits[d.rows]
    h, w = x.shape[-2:]
    # Pixel centres as fractions of the view; a pixel is erased when its centre is inside.
    ys = (torch.arange(h, device=x.device, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, device=x.device, dtype=torch.float32) + 0.5) / w
    inside_y = (ys[None] - centre[:, 1:2]).abs() < size[:, 1:2] / 2  # (B, H)
    inside_x = (xs[None] - centre[:, 0:1]).abs() < size[:, 0:1] / 2  # (B, W)
    box = inside_y[:, :, None] & inside_x[:, None, :] & do.view(-1, 1, 1)
    return x.masked_fill_(box[:, None], 0.0)


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
    jitter, grayscale, gamma, blur, solarisation, erasing, noise and normalisation.
    ``photometric`` is the part ``BatchedMultiCrop`` shares (its affine crop already flips
    and rotates).
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
        """Colour jitter, grayscale, gamma, blur, solarise, erasing, noise on float
        (B, C, s, s) in [0, 1]."""
        cfg = self.cfg
        y = self.color(x, d, host) if cfg.jitter > 0 else x
        if self.channels == 3 and cfg.grayscale > 0:
            gray = d.bernoulli(cfg.grayscale)
            y = _masked(y, gray, lambda t, rows: _gray(t).expand_as(t).contiguous(), True)
        if cfg.gamma > 0:
            y = _random_gamma(y, cfg.gamma, cfg.gamma_range[0], cfg.gamma_range[1], d)
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
        if cfg.erase > 0:
            y = _random_erase(y, cfg.erase, cfg.erase_scale, cfg.erase_ratio, d)
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
