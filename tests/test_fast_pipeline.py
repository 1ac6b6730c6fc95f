"""The fast input path (worker crops + batched photometric stage) against the classic one.

Both engines must draw the same distribution of views: the per-view output statistics over
many draws of one fixed image agree, and every augmentation fires with its probability.
"""

from __future__ import annotations

import contextlib
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

from selfclassifier.config import AugmentConfig, ConfigError, load_config
from selfclassifier.data.decode import decode_image
from selfclassifier.views import (
    BatchedMultiCrop,
    BatchedPhotometric,
    ClassicMultiCrop,
    MultiCropCutter,
    compute_dtype,
    normalization,
)
from selfclassifier.views import batched as augment
from selfclassifier.views.batched import _adjust_hue
from selfclassifier.views.crops import rrc_params

# ----------------------------------------------------------------------------- helpers


def small_recipe(**kw) -> AugmentConfig:
    """The DINO recipe (colour, blur, solarise, flip) at tiny sizes: 2 global + 2 local."""
    cfg = AugmentConfig(global_size=16, local_size=8, local_crops=2)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def colourful(width: int = 40, height: int = 32) -> Image.Image:
    """A smooth image with distinct hues, saturations and brightness across it."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 40 + 200 * x / width
    g = 30 + 180 * (y / height) ** 2
    b = 200 - 150 * np.abs(x / width - y / height)
    return Image.fromarray(np.stack([r, g, b], -1).clip(0, 255).astype(np.uint8))


@contextlib.contextmanager
def one_thread():
    """Per-sample ops on tiny images gain nothing from threads, and on a busy machine
    OpenMP's spinning makes them ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


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


@pytest.mark.parametrize(
    "change", [{"jitter": 0.0}, {"grayscale": 0.8}, {"solarize": [0.0, 0.9, 0.0]}]
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
    diff = (out - reference).abs().mean((1, 2, 3))  # blur, jitter: the image changed
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
    cfg = small_recipe()
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


# ----------------------------------------------------------------------------- worker crops


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


def _jpeg(path, size=(400, 320), exif_orientation=None) -> str:
    y, x = np.mgrid[0 : size[1], 0 : size[0]].astype(np.float32)
    arr = np.stack([x / size[0] * 255, y / size[1] * 255, 128 + 0 * x], -1).astype(np.uint8)
    im = Image.fromarray(arr)
    kwargs = {"quality": 95}
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif
    im.save(path, "JPEG", **kwargs)
    return str(path)


def test_jpeg_decodes_at_the_reduction_the_crops_allow(tmp_path):
    path = _jpeg(tmp_path / "a.jpg")
    seen = []
    image, factor = decode_image(path, "RGB", lambda size: seen.append(size) or 4)
    assert seen == [(400, 320)] and factor == 4 and image.size == (100, 80)
    gray, factor = decode_image(path, "L", lambda size: 2)
    assert factor == 2 and gray.mode == "L" and gray.size == (200, 160)


def test_reduction_sees_the_upright_size_of_rotated_jpegs(tmp_path):
    path = _jpeg(tmp_path / "r.jpg", exif_orientation=6)  # stored 400x320, shown 320x400
    seen = []
    image, factor = decode_image(path, "RGB", lambda size: seen.append(size) or 2)
    assert seen == [(320, 400)] and factor == 2 and image.size == (160, 200)


def test_png_ignores_the_reduction(tmp_path):
    path = tmp_path / "a.png"
    colourful().save(path)
    image, factor = decode_image(str(path), "RGB", lambda size: 8)
    assert factor == 1 and image.size == (40, 32)


def test_crops_from_a_reduced_decode_match_full_resolution_crops(tmp_path):
    path = _jpeg(tmp_path / "a.jpg")
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


def test_imagenet_preset_is_the_papers_recipe():
    cfg = load_config("imagenet")
    assert cfg.model.backbone == "resnet50" and cfg.model.heads == [1000, 2000, 4000, 8000]
    assert (cfg.model.hidden_dim, cfg.model.out_dim, cfg.model.batch_norm) == (4096, 128, True)
    assert (cfg.loss.row_tau, cfg.loss.col_tau) == (0.1, 0.05)
    a = cfg.augment
    assert (a.global_crops, a.global_size, a.global_scale) == (2, 224, [0.4, 1.0])
    assert (a.local_crops, a.local_size, a.local_scale) == (6, 96, [0.05, 0.4])
    assert cfg.optim.optimizer == "lars" and cfg.optim.weight_decay == 1e-6
    assert not cfg.optim.scale_lr and cfg.optim.lr == 3.2 and cfg.train.batch_size == 4092
    assert (cfg.optim.warmup_epochs, cfg.train.epochs, cfg.train.queue_size) == (10, 800, 262144)
