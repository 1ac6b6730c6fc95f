"""The batched engines: ``BatchedPhotometric`` (the fast path's stage after the worker crops)
and ``BatchedMultiCrop`` (in-memory data), against the classic per-image recipe.

Both engines must draw the same distribution of views: the per-view output statistics over
many draws of one fixed image agree, and every augmentation fires with its probability.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

from selfclassifier.config import AugmentConfig, ConfigError, load_config
from selfclassifier.views import (
    BatchedMultiCrop,
    BatchedPhotometric,
    ClassicMultiCrop,
    MultiCropCutter,
    compute_dtype,
    normalization,
)
from selfclassifier.views import batched as augment
from selfclassifier.views.batched import _adjust_hue, gaussian_blur_batched, random_crop_boxes
from tests.helpers import one_thread, small_recipe
from tests.helpers.images import colourful
from tests.helpers.spies import SyncSpy

# ----------------------------------------------------------------------------- helpers


def classic_draws(cfg: AugmentConfig, image: Image.Image, n: int) -> list[torch.Tensor]:
    """n draws of every view by the classic engine: list over views of (n, C, s, s)."""
    aug = ClassicMultiCrop(cfg, len(image.getbands()))
    per_sample = []
    with one_thread():
        for i in range(n):
            torch.manual_seed(10_000 + i)
            per_sample.append(aug(image))
    return [torch.stack(v) for v in zip(*per_sample, strict=True)]


def fast_draws(
    cfg: AugmentConfig, image: Image.Image, n: int, dtype=torch.float32
) -> list[torch.Tensor]:
    """n draws by the fast engine: worker crops, then one batched photometric call."""
    channels = len(image.getbands())
    cutter = MultiCropCutter(cfg, channels)
    crops = []
    for i in range(n):
        boxes = cutter.plan(image.size, random.Random(i))
        crops.append(cutter.cut(image, boxes))
    views = [torch.stack(v) for v in zip(*crops, strict=True)]
    stage = BatchedPhotometric(cfg, channels, dtype)
    with one_thread():
        return stage(views, torch.Generator().manual_seed(0), channels_last=True)


def unnormalise(view: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    mean, std = normalization(cfg, view.shape[1])
    return view * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)


def view_stats(views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel, over draws: (mean and std of the image means, mean and std of the image
    stds), and each statistic's standard error."""
    means, stds = views.mean((2, 3)), views.std((2, 3))
    stats = torch.cat([means.mean(0), means.std(0), stds.mean(0), stds.std(0)])
    n = views.shape[0]
    spread = torch.cat([means.std(0), stds.std(0)])
    se_mean, se_std = spread / math.sqrt(n), spread / math.sqrt(2 * n)
    se = torch.stack([se_mean[:3], se_std[:3], se_mean[3:], se_std[3:]]).flatten()
    return stats, se


def stats_agree(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two engines' per-view statistics agree within 4.5 standard errors, + 0.03 for
    small systematic differences (classic rounds down to uint8 after each colour op)."""
    stats_a, se_a = view_stats(a)
    stats_b, se_b = view_stats(b)
    tol = 4.5 * torch.sqrt(se_a**2 + se_b**2) + 0.03
    return bool(((stats_a - stats_b).abs() <= tol).all())


# ----------------------------------------------------------------------------- distributions

N_DRAWS = 400


@pytest.fixture(scope="module")
def classic_reference():
    cfg = small_recipe()
    return cfg, classic_draws(cfg, colourful(), N_DRAWS)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_and_classic_views_have_the_same_statistics(classic_reference, dtype):
    cfg, classic = classic_reference
    fast = fast_draws(cfg, colourful(), N_DRAWS, dtype)
    assert [v.shape for v in fast] == [v.shape for v in classic]
    assert all(v.dtype == torch.float32 for v in fast)
    for k, (a, b) in enumerate(zip(classic, fast, strict=True)):
        assert stats_agree(a, b), f"view {k}: {view_stats(a)[0]} vs {view_stats(b)[0]}"


def test_fast_and_classic_agree_with_gamma_and_erasing():
    """The two optional ops (off in the paper's recipe) draw the same views in both engines."""
    cfg = small_recipe(gamma=0.6, gamma_range=[0.4, 2.5], erase=0.6)
    classic = classic_draws(cfg, colourful(), N_DRAWS)
    fast = fast_draws(cfg, colourful(), N_DRAWS)
    for k, (a, b) in enumerate(zip(classic, fast, strict=True)):
        assert stats_agree(a, b), f"view {k}: {view_stats(a)[0]} vs {view_stats(b)[0]}"


@pytest.mark.parametrize(
    "change",
    [
        {"jitter": 0.0},
        {"grayscale": 0.8},
        {"solarize": [0.0, 0.9, 0.0]},
        {"gamma": 0.9, "gamma_range": [2.0, 3.0]},
        {"erase": 0.9, "erase_scale": [0.2, 0.4]},
    ],
)
def test_statistics_comparison_detects_a_different_recipe(classic_reference, change):
    """Negative control: the comparison above has the power to see a changed recipe."""
    cfg, classic = classic_reference
    fast = fast_draws(small_recipe(**change), colourful(), N_DRAWS)
    assert not all(stats_agree(a, b) for a, b in zip(classic, fast, strict=True)), (
        f"{change} went unnoticed"
    )


def test_in_memory_batched_engine_matches_classic_means(classic_reference):
    cfg, classic = classic_reference
    image = torch.from_numpy(np.asarray(colourful()).copy()).permute(2, 0, 1)
    batched = BatchedMultiCrop(cfg, 3)(
        image[None].expand(N_DRAWS, -1, -1, -1), torch.Generator().manual_seed(0)
    )
    for a, b in zip(classic, batched, strict=True):
        (stats_a, se_a), (stats_b, se_b) = view_stats(a), view_stats(b)
        tol = 4.5 * torch.sqrt(se_a**2 + se_b**2) + 0.03
        assert ((stats_a - stats_b).abs()[:3] <= tol[:3]).all()  # channel means


# ----------------------------------------------------------------------------- probabilities


def only(**kw) -> AugmentConfig:
    """Identity crops (whole square image at its own size) and every random op off."""
    cfg = AugmentConfig(
        global_size=16,
        local_crops=0,
        global_scale=[1.0, 1.0],
        ratio=[1.0, 1.0],
        hflip=0.0,
        jitter=0.0,
        grayscale=0.0,
        blur=[0.0, 0.0, 0.0],
        solarize=[0.0, 0.0, 0.0],
    )
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def square(kind: str) -> Image.Image:
    rng = np.random.default_rng(0)
    x = np.arange(16, dtype=np.float32)[None, :, None]
    if kind == "ramp":  # dark left, bright right, coloured
        arr = np.broadcast_to(20 + 12 * x * np.array([1.0, 0.7, 0.4]), (16, 16, 3))
    elif kind == "bright":  # above the solarisation threshold everywhere
        arr = np.full((16, 16, 3), 200.0) + rng.normal(0, 5, (16, 16, 3))
    else:  # noise, for blur
        arr = rng.uniform(0, 255, (16, 16, 3))
    return Image.fromarray(np.ascontiguousarray(arr).clip(0, 255).astype(np.uint8))


def fired(kind: str, out: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Which outputs (n, C, H, W) in [0, 1] show the op, given the untouched ``reference``."""
    if kind == "hflip":
        return out[..., :8].mean((1, 2, 3)) > out[..., 8:].mean((1, 2, 3))
    if kind == "grayscale":
        return (out.amax(1) - out.amin(1)).amax((1, 2)) < 0.02
    if kind == "solarize":
        return out.mean((1, 2, 3)) < 0.5
    if kind == "erase":  # some pixel black (the ramp's darkest is 20 / 255)
        return (out.amax(1) < 0.01).flatten(1).any(1)
    diff = (out - reference).abs().mean((1, 2, 3))  # blur, jitter, gamma: the image changed
    return diff > 1e-3


CASES = [
    ("hflip", {"hflip": 0.3}, "ramp", 0),
    ("grayscale", {"grayscale": 0.35}, "ramp", 0),
    ("solarize", {"solarize": [0.0, 0.25, 0.0]}, "bright", 1),
    ("blur", {"blur": [0.4, 0.0, 0.0], "blur_sigma": [1.0, 2.0]}, "noise", 0),
    (
        "jitter",
        {"jitter": 0.6, "brightness": 0.9, "contrast": 0.0, "saturation": 0.0, "hue": 0.0},
        "ramp",
        0,
    ),
    ("gamma", {"gamma": 0.45, "gamma_range": [1.5, 2.5]}, "ramp", 0),
    ("erase", {"erase": 0.3, "erase_scale": [0.05, 0.2]}, "ramp", 1),
]


@pytest.mark.parametrize("engine", ["classic", "fast"])
@pytest.mark.parametrize("kind,settings,image,view", CASES, ids=[c[0] for c in CASES])
def test_each_augmentation_fires_with_its_probability(engine, kind, settings, image, view):
    n = 600 if engine == "classic" else 2000
    cfg = only(**settings)
    img = square(image)
    draws = (classic_draws if engine == "classic" else fast_draws)(cfg, img, n)[view]
    out = unnormalise(draws, cfg)
    reference = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)[None] / 255.0
    p = {"solarize": 0.25, "blur": 0.4}.get(kind, next(iter(settings.values())))
    rate = fired(kind, out, reference).float().mean().item()
    assert abs(rate - p) <= 4.5 * math.sqrt(p * (1 - p) / n), f"{kind}: {rate:.3f} vs {p}"


def test_disabled_augmentations_never_fire():
    cfg = only()
    out = unnormalise(fast_draws(cfg, square("ramp"), 200)[0], cfg)
    reference = torch.from_numpy(np.asarray(square("ramp")).copy()).permute(2, 0, 1) / 255.0
    torch.testing.assert_close(out, reference[None].expand_as(out), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- the ops


def test_batched_hue_matches_torchvision_per_sample():
    from torchvision.transforms.v2 import functional as TF

    x = torch.rand(6, 3, 9, 11, generator=torch.Generator().manual_seed(0))
    x[0] = 0.5  # grey: hue undefined, must stay grey
    shift = torch.tensor([0.1, -0.1, 0.5, -0.5, 0.03, 0.0])
    expected = torch.stack([TF.adjust_hue(x[i], float(shift[i])) for i in range(6)])
    torch.testing.assert_close(_adjust_hue(x, shift), expected, atol=1e-5, rtol=0)
    small = shift.clamp(-0.1, 0.1)  # the fast branch for shifts up to 1/6 turn
    expected = torch.stack([TF.adjust_hue(x[i], float(small[i])) for i in range(6)])
    torch.testing.assert_close(_adjust_hue(x, small, 0.1), expected, atol=1e-5, rtol=0)


def test_gpu_branch_gives_the_same_views_as_the_cpu_branch(monkeypatch):
    """``_masked`` computes selected rows only on CPU and uses torch.where elsewhere."""
    cfg = small_recipe(gamma=0.5, erase=0.5)
    cpu = fast_draws(cfg, colourful(), 64)
    monkeypatch.setattr(augment, "_rows_are_cheap", lambda device: False)
    where = fast_draws(cfg, colourful(), 64)
    for a, b in zip(cpu, where, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_batched_stage_never_writes_into_its_input():
    cfg = small_recipe(rotation=0.0)
    views = [torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16)] + [torch.rand(4, 3, 8, 8)] * 2
    before = [v.clone() for v in views]
    BatchedPhotometric(cfg, 3)(views, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(views, before, strict=True))


def test_compute_dtype_choices():
    assert compute_dtype("float32", torch.device("cpu")) == torch.float32
    assert compute_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert compute_dtype("auto", torch.device("cpu")) in (torch.float32, torch.bfloat16)
    with pytest.raises(ConfigError, match="compute_dtype"):
        load_config("digits", {"augment": {"compute_dtype": "float16"}})


def test_batched_stage_reads_nothing_back_on_an_accelerator(monkeypatch):
    """With the accelerator branch (torch.where instead of row selection), no syncs."""
    monkeypatch.setattr(augment, "_rows_are_cheap", lambda device: False)
    real_order = augment._op_order

    def order(n, host):  # drawn from a CPU generator by construction: no device involved
        assert host.device.type == "cpu"
        return orders.pop(0)

    orders = [real_order(4, torch.Generator().manual_seed(k)) for k in range(4)]
    monkeypatch.setattr(augment, "_op_order", order)
    cfg = load_config("imagenet").augment
    cfg.global_size, cfg.local_size, cfg.local_crops, cfg.rotation = 16, 8, 2, 5.0
    cfg.gamma, cfg.erase = 0.5, 0.5
    stage = augment.BatchedPhotometric(cfg, 3, torch.bfloat16)
    views = [torch.randint(0, 256, (4, s, s, 3), dtype=torch.uint8) for s in (16, 16, 8, 8)]
    g = torch.Generator().manual_seed(0)
    stage.normalize(torch.zeros(1, 3, 1, 1))  # the one-off upload of mean/std
    with SyncSpy() as spy:
        out = stage(views, g, channels_last=True)
    assert spy.calls == [] and all(v.dtype == torch.float32 for v in out)


# ----------------------------------------------------------------------------- in-memory data


@pytest.mark.parametrize("channels", [1, 3])
def test_batched_views_shapes_and_determinism(channels):
    cfg = small_recipe(local_crops=3)
    aug = BatchedMultiCrop(cfg, channels)
    images = torch.randint(0, 256, (5, channels, 20, 24), dtype=torch.uint8)
    views = aug(images, torch.Generator().manual_seed(0))
    assert [v.shape for v in views] == [(5, channels, 16, 16)] * 2 + [(5, channels, 8, 8)] * 3
    again = aug(images, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(views, again, strict=True))
    other = aug(images, torch.Generator().manual_seed(1))
    assert not torch.equal(views[0], other[0])


def test_views_do_not_depend_on_how_the_batch_is_split():
    """Each rank augments its rows of the global batch: the same views as one process."""
    cfg = AugmentConfig(
        global_size=12, local_size=6, local_crops=2, noise=0.05, rotation=10.0, gamma=0.5, erase=0.5
    )
    aug = BatchedMultiCrop(cfg, channels=3)
    images = torch.randint(0, 256, (8, 3, 24, 24), dtype=torch.uint8)
    whole = aug(images, torch.Generator().manual_seed(7))
    halves = [aug(images[s : s + 4], torch.Generator().manual_seed(7), (s, 8)) for s in (0, 4)]
    for v, full in enumerate(whole):
        assert torch.equal(torch.cat([h[v] for h in halves]), full)


def test_crop_boxes_respect_scale_and_bounds():
    g = torch.Generator().manual_seed(0)
    centre, size = random_crop_boxes(2000, (0.2, 0.6), (0.75, 4 / 3), g, "cpu")
    area = size[:, 0] * size[:, 1]
    assert (size <= 1).all() and (area >= 0.2 - 1e-6).all() and (area <= 0.6 + 1e-6).all()
    assert ((centre - size / 2) >= -1e-6).all() and ((centre + size / 2) <= 1 + 1e-6).all()


def test_blur_preserves_constant_images_and_smooths_noise():
    flat = torch.full((2, 3, 12, 12), 0.3)
    torch.testing.assert_close(gaussian_blur_batched(flat, torch.tensor([0.5, 2.0])), flat)
    noise = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    blurred = gaussian_blur_batched(noise, torch.tensor([0.1, 2.0]))
    assert blurred[1].std() < 0.5 * noise[1].std()  # strong blur smooths
    assert (blurred[0] - noise[0]).abs().max() < 1e-3  # sigma 0.1 is almost identity


@pytest.mark.parametrize("engine", ["classic", "fast"])
def test_gamma_is_a_power_with_a_log_uniform_exponent_in_range(engine):
    """On a flat grey image every view is grey ** g; g stays in range, log-uniform."""
    low, high = 0.5, 2.0
    cfg = only(gamma=1.0, gamma_range=[low, high])
    grey = Image.fromarray(np.full((16, 16, 3), 128, np.uint8))
    n = 400
    out = unnormalise((classic_draws if engine == "classic" else fast_draws)(cfg, grey, n)[0], cfg)
    v = out.mean((1, 2, 3)).double()
    g = torch.log(v) / math.log(128 / 255)
    slack = 0.02 if engine == "classic" else 1e-3  # classic rounds to uint8
    assert (g >= low - slack).all() and (g <= high + slack).all()
    assert (out.std((1, 2, 3)) < 1e-5).all()  # a tone curve keeps a flat image flat
    # log g uniform on [log low, log high]: mean 0 here, std (log 4) / sqrt(12)
    log_g = torch.log(g)
    assert abs(log_g.mean().item()) < 4.5 * (math.log(4) / math.sqrt(12)) / math.sqrt(n)
    assert abs(log_g.std().item() - math.log(4) / math.sqrt(12)) < 0.05


@pytest.mark.parametrize("engine", ["classic", "fast"])
def test_erasing_blacks_out_one_rectangle_of_the_allowed_area(engine):
    lo, hi = 0.1, 0.3
    cfg = only(erase=1.0, erase_scale=[lo, hi])
    bright = Image.fromarray(np.full((16, 16, 3), 200, np.uint8))
    out = unnormalise(
        (classic_draws if engine == "classic" else fast_draws)(cfg, bright, 200)[0], cfg
    )
    for view in out:
        black = view.amax(0) < 0.01
        rows, cols = black.any(1).nonzero().squeeze(1), black.any(0).nonzero().squeeze(1)
        assert rows.numel() and cols.numel()
        box = black[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.all(), "the erased pixels form one filled rectangle"
        area = black.float().mean().item()
        # whole pixels: up to a pixel row and column of rounding either way
        assert lo - 2 * math.sqrt(hi) / 16 <= area <= hi + 2 * math.sqrt(hi) / 16 + 1 / 256
        assert (view[:, ~black] > 0.7).all()  # the rest untouched
