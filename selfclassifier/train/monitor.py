"""Scores on the training data while training runs (``eval_every``) and when it ends.

The numbers need labels and are only computed when the dataset has them; they never move
the training RNG streams, so monitoring never changes the trained weights.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from selfclassifier.config import Config
from selfclassifier.data import is_labelled
from selfclassifier.evaluate.probes import ProbeSource, probe_outputs, probe_source
from selfclassifier.evaluate.scores import head_scores, knn_record
from selfclassifier.inference import eval_loader, run_model
from selfclassifier.train.features import CachedFeatureSource


class TrainingScores:
    """Each head's NMI/AMI/ARI/ACC on the training data, and the kNN top-1 of
    ``selfclassifier evaluate --knn``, for the model being trained."""

    def __init__(self, cfg: Config, dataset: Dataset, channels: int, device, source):
        self.cfg, self.dataset, self.channels, self.device = cfg, dataset, channels, device
        self.source = source
        self._probe: ProbeSource | None = None  # kNN memory/queries, built once

    @property
    def labelled(self) -> bool:
        return is_labelled(self.dataset)

    def heads(self, model, batch_size: int = 512) -> list[dict] | None:
        """Each head's scores on the training data (None without labels)."""
        if not self.labelled:
            return None
        return head_scores(self.outputs(model, batch_size))

    def outputs(self, model, batch_size: int = 512):
        """Un-augmented outputs on the training data (from cached features when frozen)."""
        if isinstance(self.source, CachedFeatureSource):
            return self.source.outputs(model, self.cfg.loss.row_tau)
        return self._outputs(model, self.dataset, batch_size)

    def _outputs(self, model, ds: Dataset, batch_size: int = 512):
        # Evaluation must not move the training RNG streams: eval_every then never changes
        # the trained weights, and a resumed run matches an unbroken one.
        with torch.random.fork_rng(devices=[]):
            loader = eval_loader(
                ds, self.cfg.augment, self.channels, batch_size, self.cfg.data.workers
            )
            return run_model(model, loader, self.device, self.cfg.loss.row_tau)

    def record(self, model) -> dict:
        """The ``eval_every`` record: each head's scores on the training data and kNN top-1.

        kNN uses backbone features with the memory / queries of ``selfclassifier evaluate
        --knn`` (the dataset's train / test split, or a fixed 75/25 hold-out of a folder
        without splits), so the logged curve ends at the number evaluate reports.
        """
        if not self.labelled:
            return {}
        out = self.outputs(model)
        if self._probe is None:
            mode = "L" if self.cfg.data.grayscale else "RGB"
            self._probe = probe_source(self.cfg.data.path, self.cfg.data.split, None, mode)
        memory, queries = probe_outputs(self._probe, out, lambda ds: self._outputs(model, ds))
        knn = knn_record(memory.features, memory.labels, queries.features, queries.labels)
        return {"heads": head_scores(out), "knn": knn}


def monitor_line(epoch: int, summary: dict) -> str | None:
    """The log line of an epoch's monitor record (None when it has no kNN score)."""
    if "knn" not in summary:
        return None
    head = summary["heads"][0]
    return (
        f"epoch {epoch + 1}: kNN top-1 {summary['knn']['top1']:.4f}, head 0 "
        f"NMI {head['nmi']:.4f} ACC {head['acc']:.4f}"
    )
