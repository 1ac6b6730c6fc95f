"""The multi-crop recipe: the views' specs (the authors' asymmetry) and the classic engine."""

import pytest
from PIL import Image

from selfclassifier.config import AugmentConfig
from selfclassifier.views import ClassicMultiCrop, eval_side, eval_transform, view_specs
from tests.helpers import small_recipe


@pytest.mark.parametrize("channels", [1, 3])
def test_classic_views_shapes(channels):
    aug = ClassicMultiCrop(small_recipe(local_crops=3), channels)
    img = Image.new("RGB" if channels == 3 else "L", (24, 20), 128)
    views = aug(img)
    assert [v.shape for v in views] == [(channels, 16, 16)] * 2 + [(channels, 8, 8)] * 3


def test_view_specs_follow_the_authors_asymmetry():
    specs = view_specs(AugmentConfig())
    assert [s.blur for s in specs[:3]] == [0.1, 1.0, 0.5]  # the authors: view 1 blurs
    assert [s.solarize for s in specs[:3]] == [0.0, 0.2, 0.0]
    assert specs[0].size == 224 and specs[-1].size == 96 and len(specs) == 8


@pytest.mark.parametrize("from_files", [False, True])
@pytest.mark.parametrize("eval_size, side", [(0, 16), (16, 16), (20, 20), (12, 12)])
def test_eval_transform_side_follows_eval_size(from_files, eval_size, side):
    """augment.eval_size sets the evaluation input; 0 keeps the training crops' side."""
    cfg = small_recipe(eval_size=eval_size)
    assert cfg.global_size == 16 and eval_side(cfg) == side
    out = eval_transform(cfg, 1, from_files)(Image.new("L", (28, 24), 200))
    assert out.shape == (1, side, side)
