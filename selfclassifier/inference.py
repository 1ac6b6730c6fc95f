"""Running a trained model: the one loaded-run type every tool uses, and the batch runner.

:func:`load_run` reads a checkpoint into a :class:`LoadedRun`: the model in eval mode on its
device, the run's config, the checkpoint dict with its :class:`DataRecord`, and the head
selection. ``selfclassifier predict``, ``evaluate``, ``report`` and ``export`` load runs
through it, and the Python API's :class:`selfclassifier.api.Predictor` (what
:func:`selfclassifier.load` returns) is a LoadedRun. :func:`run_model` runs a model over a
loader, the model being trained included (``train/monitor.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from selfclassifier.config import AugmentConfig, Config
from selfclassifier.data.arrays import TensorImageDataset
from selfclassifier.data.decode import DataError
from selfclassifier.data.folders import ImageFileDataset
from selfclassifier.dist import resolve_device
from selfclassifier.heads import default_head, mark_selection, selection_losses_of
from selfclassifier.model import SelfClassifier
from selfclassifier.model.build import model_from_checkpoint
from selfclassifier.storage import DataRecord
from selfclassifier.views import eval_transform

__all__ = [
    "LoadedRun",
    "Outputs",
    "dataset_channels",
    "eval_loader",
    "load_run",
    "match_channels",
    "open_scored_args",
    "open_scored_run",
    "run_model",
    "scored_run_parser",
]


@dataclass
class Outputs:
    """Per-sample results, all on CPU: features (N, D), embeddings (N, d), probs [h] (N, C_h),
    labels (N,) with -1 where unknown; pixels (N, C*H*W), the model's normalised input, only
    when asked for (it is large)."""

    features: torch.Tensor
    embeddings: torch.Tensor
    probs: list[torch.Tensor]
    labels: torch.Tensor
    pixels: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> Outputs:
        """The rows ``index`` (int64 (M,)) of every field."""
        return Outputs(
            self.features[index],
            self.embeddings[index],
            [p[index] for p in self.probs],
            self.labels[index],
            None if self.pixels is None else self.pixels[index],
        )

    def predictions(self, head: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(class ids, confidence = probability of that class) for one head."""
        conf, pred = self.probs[head].max(dim=1)
        return pred, conf


class _Transformed(Dataset):
    def __init__(self, ds: Dataset, transform):
        self.ds, self.transform = ds, transform

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):
        image, label = self.ds[i]
        return self.transform(image), label


def eval_loader(
    ds: Dataset, aug: AugmentConfig, channels: int, batch_size: int, workers: int = 0
) -> DataLoader:
    """Deterministic (no augmentation) loader over ``ds`` at the training resolution."""
    from_files = isinstance(ds, ImageFileDataset)
    transformed = _Transformed(ds, eval_transform(aug, channels, from_files))
    return DataLoader(
        transformed, batch_size=batch_size, shuffle=False, num_workers=workers if from_files else 0
    )


@torch.no_grad()
def run_model(
    model: SelfClassifier,
    loader,
    device: torch.device,
    row_tau: float = 0.1,
    keep_pixels: bool = False,
) -> Outputs:
    """Features, embeddings and row-softmax probabilities (at ``row_tau``) for every sample;
    with ``keep_pixels`` also the flattened input images."""
    model.eval()
    feats, embs, labels, pixels = [], [], [], []
    probs: list[list[torch.Tensor]] = [[] for _ in model.heads]
    for images, target in loader:
        if keep_pixels:
            pixels.append(images.float().flatten(1).cpu())
        images = images.to(device, non_blocking=True)
        f = model.features(images)
        e = model.project(f)
        for h, p in enumerate(model.probabilities(e, row_tau)):
            probs[h].append(p.cpu())
        feats.append(f.float().cpu())
        embs.append(e.float().cpu())
        labels.append(torch.as_tensor(target).long())
    return Outputs(
        torch.cat(feats),
        torch.cat(embs),
        [torch.cat(p) for p in probs],
        torch.cat(labels),
        torch.cat(pixels) if keep_pixels else None,
    )


def dataset_channels(ds: Dataset) -> int:
    if isinstance(ds, TensorImageDataset):
        return ds.num_channels
    return 1 if getattr(ds, "mode", "RGB") == "L" else 3


def match_channels(ds: Dataset, channels: int) -> Dataset:
    """An in-memory dataset with ``channels`` channels (1 <-> 3); files are decoded to the
    right mode instead (see :attr:`LoadedRun.mode`)."""
    if not isinstance(ds, TensorImageDataset) or ds.num_channels == channels:
        return ds
    images = ds.images
    if channels == 3 and images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1).contiguous()
    elif channels == 1 and images.shape[1] == 3:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)  # ITU-R 601 luma, as PIL
        images = (images.float() * weights).sum(1, keepdim=True).round().to(torch.uint8)
    else:
        raise DataError(
            f"dataset {ds.name!r} has {ds.num_channels} channels but the model takes {channels}"
        )
    return TensorImageDataset(images, ds.targets, ds.classes, name=ds.name)


# ----------------------------------------------------------------------------- a loaded run


class LoadedRun:
    """A trained model ready for inference, with what its checkpoint recorded.

    Attributes:
        model: the :class:`SelfClassifier`, in eval mode on ``device``.
        cfg: the run's :class:`Config` (``cfg.loss.row_tau`` is the prediction temperature).
        ckpt: the checkpoint dict it was loaded from.
        data: ``DataRecord.of(ckpt)``: channels, image size and class names of its data.
        device: where the model runs.
        path: the checkpoint file (None for a model built in memory).
        selection_loss: each head's loss after training; empty unless candidate heads of
            one size were scored (:mod:`selfclassifier.heads`).
    """

    def __init__(
        self,
        model: SelfClassifier,
        cfg: Config,
        ckpt: dict,
        device: str | torch.device = "cpu",
        path: str | os.PathLike | None = None,
        selection_loss: list[float] | None = None,
    ):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.cfg, self.ckpt = cfg, ckpt
        self.data = DataRecord.of(ckpt)
        self.path = None if path is None else Path(path)
        if selection_loss is None:
            selection_loss = selection_losses_of(ckpt, len(model.heads))
        self.selection_loss = list(selection_loss)

    @property
    def channels(self) -> int:
        """Image channels the model takes (1 or 3)."""
        return self.data.channels

    @property
    def mode(self) -> str:
        """How to decode image files for this model: 'L' (1 channel) or 'RGB'."""
        return "L" if self.channels == 1 else "RGB"

    @property
    def num_classes(self) -> list[int]:
        """Classes of each head."""
        return self.model.num_classes

    @property
    def default_head(self) -> int:
        """The head tools use when none is named: head 0, or the selected one among
        candidate heads of its size (:func:`selfclassifier.heads.default_head`)."""
        return default_head(self.model.num_classes, self.selection_loss)

    def mark_selection(self, heads: list[dict]) -> list[dict]:
        """Add ``selection_loss`` / ``selected`` to per-head score dicts, when scored."""
        if self.selection_loss:
            mark_selection(heads, self.model.num_classes, self.selection_loss)
        return heads

    def transform(self, from_files: bool = True):
        """The deterministic evaluation transform of this model's input: image -> (C, H, W).

        ``from_files``: a resize and 0.875 centre crop (photos); else a plain resize (the
        in-memory datasets the model saw whole)."""
        return eval_transform(self.cfg.augment, self.channels, from_files)

    @torch.no_grad()
    def batch_probabilities(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Every head's class probabilities [(B, C_h)] on the CPU for one batch of model input
        (B, C, H, W): the row softmax at ``cfg.loss.row_tau``."""
        embedding = self.model.embed(images.to(self.device, non_blocking=True))
        return [p.cpu() for p in self.model.probabilities(embedding, self.cfg.loss.row_tau)]

    def run_model(self, loader, keep_pixels: bool = False) -> Outputs:
        """:func:`run_model` of this model over ``loader``'s (image, label) batches."""
        return run_model(self.model, loader, self.device, self.cfg.loss.row_tau, keep_pixels)

    def extract(
        self, ds: Dataset, batch_size: int = 256, workers: int = 0, keep_pixels: bool = False
    ) -> Outputs:
        """Run the model over ``ds`` with the deterministic evaluation transform."""
        ds = match_channels(ds, self.channels)
        return self.run_model(
            eval_loader(ds, self.cfg.augment, self.channels, batch_size, workers), keep_pixels
        )


def load_run(checkpoint: str | os.PathLike, device: str | torch.device = "auto") -> LoadedRun:
    """Rebuild the model of a checkpoint (``train`` or ``convert`` output) on ``device``
    (:func:`selfclassifier.dist.resolve_device`: auto, cpu, cuda or cuda:N), in eval mode.

    Reading never runs code from the file (``torch.load(weights_only=True)``).
    """
    dev = resolve_device(device, setting="--device")
    model, cfg, ckpt = model_from_checkpoint(checkpoint)
    return LoadedRun(model, cfg, ckpt, dev, checkpoint)


def scored_run_parser(description: str, head_help: str):
    """An argument parser with the options every script that scores one head of a checkpoint
    on a labelled dataset takes (checkpoint, ``--data``, ``--split``, ``--head``,
    ``--batch-size``, ``--format``); the script adds its own."""
    import argparse

    p = argparse.ArgumentParser(description=description)
    p.add_argument("checkpoint")
    p.add_argument("--data", required=True, help="labelled dataset: name or folder")
    p.add_argument("--split", default="all")
    p.add_argument("--head", type=int, help=f"{head_help} (default: the selected one)")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--format", choices=["markdown", "json"], default="markdown")
    return p


def open_scored_run(
    checkpoint: str | os.PathLike, data: str, split: str = "all", head: int | None = None
) -> tuple[LoadedRun, Dataset, int]:
    """What a script that scores one head of a checkpoint on a dataset starts with: the run
    on the CPU, the dataset ``data`` (a name or folder, :func:`build_dataset`) decoded in the
    run's mode, and the head to read (``head``, or the selected one when None).

    Raises a :class:`~selfclassifier.errors.SelfClassifierError` whose message is one line
    for an unreadable checkpoint or dataset and for a head the model does not have.
    """
    from selfclassifier.data.sources import build_dataset
    from selfclassifier.errors import CLIError

    try:
        run = load_run(checkpoint, device="cpu")
        ds = build_dataset(data, split=split, mode=run.mode)
    except OSError as e:
        raise DataError(f"cannot read {e.filename or checkpoint}: {e.strerror or e}") from e
    if head is None:
        return run, ds, run.default_head
    if not 0 <= head < len(run.num_classes):
        raise CLIError(
            f"--head {head} out of range: the model has {len(run.num_classes)} heads"
            f" (0..{len(run.num_classes) - 1})"
        )
    return run, ds, head


def open_scored_args(args) -> tuple[LoadedRun, Dataset, int] | None:
    """:func:`open_scored_run` for the namespace a :func:`scored_run_parser` parsed, as a
    script's ``main`` wants it: None after printing the one-line error to stderr."""
    import sys

    from selfclassifier.errors import SelfClassifierError

    try:
        return open_scored_run(args.checkpoint, args.data, args.split, args.head)
    except SelfClassifierError as e:
        print(f"error: {e}", file=sys.stderr)
        return None
