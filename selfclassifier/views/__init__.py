"""Multi-crop views: the recipe, its three engines, and the loader that feeds the loop.

* ``recipe.py``: what a view is (``ViewSpec``), normalisation, the evaluation transform, and
  ``ClassicMultiCrop`` (per-sample torchvision transforms in loader workers, the paper's
  pipeline);
* ``crops.py`` + ``batched.py``: the ``fast`` path for image files (workers cut uint8 crops,
  ``BatchedPhotometric`` finishes whole batches) and ``BatchedMultiCrop`` for in-memory
  datasets (the whole recipe on a uint8 batch, on the training device);
* ``order.py``: which samples each step sees and the seeds of their views;
* ``workers.py``: the loader's worker side (datasets keyed by (epoch, step, index), collate);
* ``source.py``: ``ViewSource``, which yields each step's views on the training device.
"""

from selfclassifier.views.batched import BatchedMultiCrop, BatchedPhotometric, compute_dtype
from selfclassifier.views.crops import MultiCropCutter
from selfclassifier.views.order import epoch_order, local_batches
from selfclassifier.views.recipe import (
    ClassicMultiCrop,
    ViewSpec,
    augment_at,
    eval_side,
    eval_transform,
    normalization,
    view_specs,
)
from selfclassifier.views.source import LoaderRestartWarning, ViewSource

__all__ = [
    "BatchedMultiCrop",
    "BatchedPhotometric",
    "ClassicMultiCrop",
    "LoaderRestartWarning",
    "MultiCropCutter",
    "ViewSource",
    "ViewSpec",
    "augment_at",
    "compute_dtype",
    "epoch_order",
    "eval_side",
    "eval_transform",
    "local_batches",
    "normalization",
    "view_specs",
]
