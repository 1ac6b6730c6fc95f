"""Live training curves: OUT/metrics.jsonl's records mirrored as TensorBoard scalars.

``train.tensorboard`` (``selfclassifier train --tensorboard``) turns it on; the trainer hands
every record it appends to metrics.jsonl to :class:`MetricsBoard` as well, so the dashboard
and the file never disagree. Only rank 0 writes. Tags (``h`` is the head's index):

* ``train/loss``, ``train/lr``, ``train/img_per_s``, ``train/skipped_steps`` and
  ``train/active_classes/head_h`` (distinct predictions in the step's batch): every
  ``train.log_every`` steps;
* ``epoch/loss``, ``epoch/seconds``: every epoch;
* with ``train.eval_every`` and labels: ``knn/top1`` and ``nmi/head_h``, ``ami/``, ``ari/``,
  ``acc/``, ``acc_many_to_one/``, ``active_classes/head_h`` (over the whole dataset);
* ``selection_loss/head_h`` once training ends, when heads are selected.

The x axis is the global step, so a resumed run continues the same curves; it also drops the
points a killed attempt wrote after its last checkpoint (``purge_step``), as metrics.jsonl
does. The package is optional: ``pip install 'selfclassifier[tensorboard]'``.
"""

from __future__ import annotations

import numbers
import os

from selfclassifier.config import ConfigError

INSTALL_HINT = "pip install 'selfclassifier[tensorboard]'"

# Record keys that are an axis or a constant of the protocol, not a curve.
_SKIPPED = frozenset({"epoch", "step", "global_step", "epoch_end", "classes", "k", "temperature"})


def require_tensorboard():
    """``torch.utils.tensorboard.SummaryWriter``, or a one-line ConfigError naming the fix."""
    try:
        import tensorboard  # noqa: F401 - torch's writer needs it; fail here, not mid-run
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(
            f"train.tensorboard (--tensorboard) needs the tensorboard package: {INSTALL_HINT}"
        ) from None
    return SummaryWriter


def _number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def scalars(record: dict) -> dict[str, float]:
    """The TensorBoard tags and values of one metrics.jsonl record (see the module docstring).

    >>> scalars({"epoch": 0, "step": 2, "global_step": 2, "loss": 4.5, "lr": 0.1,
    ...          "active_classes": 3, "active_classes_per_head": [3, 5]})
    {'train/loss': 4.5, 'train/lr': 0.1,
     'train/active_classes/head_0': 3, 'train/active_classes/head_1': 5}
    >>> knn = {"k": 20, "temperature": 0.07, "top1": 0.9}
    >>> scalars({"epoch_end": 0, "loss": 4.4, "knn": knn, "heads": [{"classes": 10, "nmi": 0.8}]})
    {'epoch/loss': 4.4, 'knn/top1': 0.9, 'nmi/head_0': 0.8}
    """
    if "head_selection" in record:
        losses = record["head_selection"].get("selection_loss", [])
        return {f"selection_loss/head_{h}": v for h, v in enumerate(losses)}
    section = "epoch" if "epoch_end" in record else "train"
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in _SKIPPED:
            continue
        if key == "heads" and isinstance(value, list):  # evaluation: one dict of scores per head
            for h, scores in enumerate(value):
                for name, v in scores.items():
                    if _number(v) and name not in _SKIPPED:
                        out[f"{name}/head_{h}"] = v
        elif key == "active_classes_per_head" and isinstance(value, list):
            out.update({f"{section}/active_classes/head_{h}": v for h, v in enumerate(value)})
        elif key == "active_classes" and "active_classes_per_head" in record:
            continue  # head 0's count, already in the per-head list
        elif isinstance(value, dict):  # knn and other protocol records
            out.update(
                {f"{key}/{k}": v for k, v in value.items() if _number(v) and k not in _SKIPPED}
            )
        elif _number(value):
            out[f"{section}/{key}"] = value
    return out


class MetricsBoard:
    """A TensorBoard writer for metrics.jsonl records, one event file per process start.

    ``start_step`` is the global step the run resumes from: points of a killed attempt beyond
    it are dropped by TensorBoard (its steps are logged again).
    """

    def __init__(self, log_dir: str | os.PathLike, start_step: int = 0, flush_secs: int = 10):
        summary_writer = require_tensorboard()
        self.writer = summary_writer(
            log_dir=os.fspath(log_dir), purge_step=start_step + 1, flush_secs=flush_secs
        )

    def write(self, record: dict, step: int) -> None:
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, step)
        if "epoch_end" in record or "head_selection" in record:
            self.writer.flush()  # an epoch is worth seeing at once

    def close(self) -> None:
        self.writer.close()
