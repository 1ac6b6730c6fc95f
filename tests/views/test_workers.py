"""The loader workers' side: a sample whose transform fails falls through to the next one."""

from __future__ import annotations

import pytest
import torch

from selfclassifier.views.workers import _ClassicViews


def test_failing_transform_falls_through_to_next_sample():
    class Flaky(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return torch.full((1, 4, 4), i, dtype=torch.uint8), 0

    def transform(image):
        if int(image.max()) == 1:
            raise ValueError("pathological image")
        return [image.float()]

    views = _ClassicViews(Flaky(), transform, seed=0)
    with pytest.warns(UserWarning, match="skipping sample 1: ValueError"):
        (view,) = views[(0, 0, 1)]  # keys are (epoch, step, index)
    assert int(view.max()) == 2
