import pytest
import torch
from PIL import Image

from selfclassifier.config import AugmentConfig, load_config
from selfclassifier.views import BatchedMultiCrop, ClassicMultiCrop, view_specs
from selfclassifier.views.batched import gaussian_blur_batched, random_crop_boxes


def recipe(**kw):
    cfg = AugmentConfig(global_size=16, local_size=8, local_crops=3)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


@pytest.mark.parametrize("channels", [1, 3])
def test_batched_views_shapes_and_determinism(channels):
    cfg = recipe()
    aug = BatchedMultiCrop(cfg, channels)
    images = torch.randint(0, 256, (5, channels, 20, 24), dtype=torch.uint8)
    views = aug(images, torch.Generator().manual_seed(0))
    assert [v.shape for v in views] == [(5, channels, 16, 16)] * 2 + [(5, channels, 8, 8)] * 3
    again = aug(images, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(views, again, strict=True))
    other = aug(images, torch.Generator().manual_seed(1))
    assert not torch.equal(views[0], other[0])


@pytest.mark.parametrize("channels", [1, 3])
def test_classic_views_shapes(channels):
    aug = ClassicMultiCrop(recipe(), channels)
    img = Image.new("RGB" if channels == 3 else "L", (24, 20), 128)
    views = aug(img)
    assert [v.shape for v in views] == [(channels, 16, 16)] * 2 + [(channels, 8, 8)] * 3


def test_view_specs_follow_the_authors_asymmetry():
    specs = view_specs(AugmentConfig())
    assert [s.blur for s in specs[:3]] == [0.1, 1.0, 0.5]  # the authors: view 1 blurs
    assert [s.solarize for s in specs[:3]] == [0.0, 0.2, 0.0]
    assert specs[0].size == 224 and specs[-1].size == 96 and len(specs) == 8


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


def test_small_grayscale_recipe_never_flips():
    cfg = load_config("digits").augment
    assert cfg.hflip == 0.0 and cfg.hue == 0.0
