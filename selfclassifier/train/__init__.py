"""Training: the loop and what it leans on.

* ``loop.py``: ``Trainer`` (build a run, ``train_one_epoch``, ``train_step``) and ``fit``;
* ``checkpoint.py``: ``RunCheckpoint``, the one owner of OUT/checkpoint.pt (find, read,
  restore, save) and ``RunState``;
* ``forward.py``: the multi-crop forward that data parallelism wraps;
* ``guards.py``: stop signals, non-finite values, the output lock, fault injection;
* ``features.py``: frozen-backbone mode (``CachedFeatureSource``, same interface as
  ``views.ViewSource``);
* ``selection.py``: scoring candidate heads without labels when training ends;
* ``monitor.py``, ``progress.py``, ``tensorboard.py``: what the run reports;
* ``setup.py``: device, precision, seeds, reading the data, preparing OUT.
"""

from selfclassifier.errors import Interrupted, TrainingError
from selfclassifier.evaluate.metrics import format_table
from selfclassifier.train.loop import Trainer, fit

__all__ = ["Interrupted", "Trainer", "TrainingError", "fit", "format_table"]
