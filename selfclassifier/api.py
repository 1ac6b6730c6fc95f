"""Python API: load a trained model and classify or embed images in a few lines.

>>> import selfclassifier                                                   # doctest: +SKIP
>>> model = selfclassifier.load("runs/demo/checkpoint.pt", device="cpu")   # doctest: +SKIP
>>> classes, confidence = model.predict(["a.png", "b.jpg"])                # doctest: +SKIP
>>> features = model.embed(["a.png", "b.jpg"])                             # doctest: +SKIP
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from selfclassifier.config import Config
from selfclassifier.data.decode import DataError, UnreadableImage, open_image
from selfclassifier.inference import LoadedRun, load_run
from selfclassifier.model import SelfClassifier
from selfclassifier.views import eval_side

ImageLike = Image.Image | str | os.PathLike | np.ndarray
Images = ImageLike | Sequence[ImageLike] | torch.Tensor


class Predictor(LoadedRun):
    """A trained Self-Classifier in eval mode with the preprocessing it was trained with.

    Inputs (``images``) may be a PIL image, a path, a uint8 numpy array (H, W[, C]), a list
    mixing those, or a tensor batch (B, C, H, W): uint8 tensors are raw pixels and get the
    same resize / crop / normalisation as files, float tensors are taken as model input that
    is already resized and normalised (the ONNX export's input).

    A :class:`~selfclassifier.inference.LoadedRun` (the one type every tool loads a run as)
    that takes images: :func:`load` makes one from a checkpoint; ``info`` is a checkpoint's
    ``data`` entry.
    """

    def __init__(
        self,
        model: SelfClassifier,
        cfg: Config,
        info: dict,
        device: torch.device,
        selection_loss: list[float] | None = None,
    ):
        super().__init__(model, cfg, {"data": info}, device, selection_loss=selection_loss or [])

    @classmethod
    def of(cls, run: LoadedRun) -> Predictor:
        """The predictor of a loaded run: the same model, checkpoint and device."""
        predictor = cls.__new__(cls)
        LoadedRun.__init__(
            predictor, run.model, run.cfg, run.ckpt, run.device, run.path, run.selection_loss
        )
        return predictor

    @property
    def config(self) -> Config:
        """The run's config (``cfg``)."""
        return self.cfg

    @property
    def image_size(self) -> int:
        """Side of the square model input (``augment.eval_size``; when 0, the side training ended
        at: ``final_size``, else ``global_size``)."""
        return eval_side(self.cfg.augment)

    @property
    def class_names(self) -> list[str]:
        """Names of the labelled classes the model was trained on (if any), not its clusters."""
        return list(self.data.classes)

    @functools.cached_property
    def _transform(self):
        # in-memory datasets (digits, IDX) were seen whole, files with a 0.875 centre crop
        return self.transform(from_files=not self.data.in_memory)

    def __repr__(self) -> str:
        return (
            f"Predictor(backbone={self.config.model.backbone!r}, heads={self.num_classes}, "
            f"input={self.channels}x{self.image_size}x{self.image_size}, device={self.device})"
        )

    # ----------------------------------------------------------------- inputs

    def preprocess(self, images: Images) -> torch.Tensor:
        """Model input (B, C, H, W) float32 for ``images`` (see the class docstring)."""
        if isinstance(images, torch.Tensor):
            batch = images if images.dim() == 4 else images.unsqueeze(0)
            if batch.dim() != 4 or batch.shape[1] != self.channels:
                raise DataError(
                    f"expected images of shape (B, {self.channels}, H, W), got "
                    f"{tuple(images.shape)}"
                )
            if batch.dtype == torch.uint8:
                return torch.stack([self._transform(x) for x in batch])
            return batch.float()
        if isinstance(images, Image.Image | str | os.PathLike | np.ndarray):
            images = [images]
        if len(images) == 0:
            raise DataError("no images given")
        return torch.stack([self._transform(self._as_pil(x)) for x in images])

    def _as_pil(self, item: ImageLike) -> Image.Image:
        if isinstance(item, str | os.PathLike):
            try:
                return open_image(str(item), self.mode)
            except UnreadableImage as e:
                raise DataError(f"cannot read image '{Path(item)}': {e}") from None
            except FileNotFoundError:
                raise DataError(f"image '{item}' not found") from None
        if isinstance(item, np.ndarray):
            item = Image.fromarray(item)
        if not isinstance(item, Image.Image):
            raise DataError(
                f"cannot use a {type(item).__name__} as an image; pass PIL images, paths, "
                "numpy arrays or a tensor batch"
            )
        return item.convert(self.mode)

    def _batches(self, images: Images, batch_size: int) -> Iterator[torch.Tensor]:
        if isinstance(images, torch.Tensor) or not isinstance(images, Sequence):
            yield self.preprocess(images).to(self.device)
            return
        for start in range(0, len(images), batch_size):
            yield self.preprocess(images[start : start + batch_size]).to(self.device)

    # ----------------------------------------------------------------- outputs

    def probabilities(self, images: Images, batch_size: int = 256) -> list[torch.Tensor]:
        """Class probabilities of every head, [(N, C_h)] (row softmax at ``loss.row_tau``)."""
        out: list[list[torch.Tensor]] = [[] for _ in self.model.heads]
        for batch in self._batches(images, batch_size):
            for h, p in enumerate(self.batch_probabilities(batch)):
                out[h].append(p)
        return [torch.cat(p) for p in out]

    def predict(
        self, images: Images, head: int | None = None, batch_size: int = 256
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(class ids (N,) int64, confidence (N,) = probability of that class) of one head
        (default: :attr:`default_head`)."""
        head = self.default_head if head is None else head
        if not -len(self.model.heads) <= head < len(self.model.heads):
            raise ValueError(f"head {head} does not exist; the model has {len(self.model.heads)}")
        confidence, classes = self.probabilities(images, batch_size)[head].max(dim=1)
        return classes, confidence

    @torch.no_grad()
    def embed(self, images: Images, batch_size: int = 256) -> torch.Tensor:
        """L2-normalised embeddings (N, embed_dim: out_dim, or heads x out_dim with per-head
        projections), what the heads classify."""
        return torch.cat(
            [self.model.embed(b).float().cpu() for b in self._batches(images, batch_size)]
        )

    @torch.no_grad()
    def features(self, images: Images, batch_size: int = 256) -> torch.Tensor:
        """Backbone features (N, D), the representation for kNN / linear probes."""
        return torch.cat(
            [self.model.features(b).float().cpu() for b in self._batches(images, batch_size)]
        )


def load(checkpoint: str | os.PathLike, device: str | torch.device = "cpu") -> Predictor:
    """Load a selfclassifier checkpoint (``train`` output or ``convert`` output) for inference
    on ``device`` (cpu, cuda, cuda:N or auto), through :func:`selfclassifier.inference.load_run`.

    Reading never runs code from the file (``torch.load(weights_only=True)``).
    """
    return Predictor.of(load_run(checkpoint, device))
