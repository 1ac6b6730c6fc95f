"""Python API: load a trained model and classify or embed images in a few lines.

>>> import selfclassifier                                                   # doctest: +SKIP
>>> model = selfclassifier.load("runs/demo/checkpoint.pt", device="cpu")   # doctest: +SKIP
>>> classes, confidence = model.predict(["a.png", "b.jpg"])                # doctest: +SKIP
>>> features = model.embed(["a.png", "b.jpg"])                             # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from selfclassifier.augment import eval_transform
from selfclassifier.checkpoint import model_from_checkpoint, selection_losses_of
from selfclassifier.config import Config
from selfclassifier.data import DataError, UnreadableImage, open_image
from selfclassifier.metrics import default_head
from selfclassifier.model import SelfClassifier

ImageLike = Image.Image | str | os.PathLike | np.ndarray
Images = ImageLike | Sequence[ImageLike] | torch.Tensor


class Predictor:
    """A trained Self-Classifier in eval mode with the preprocessing it was trained with.

    Inputs (``images``) may be a PIL image, a path, a uint8 numpy array (H, W[, C]), a list
    mixing those, or a tensor batch (B, C, H, W): uint8 tensors are raw pixels and get the
    same resize / crop / normalisation as files, float tensors are taken as model input that
    is already resized and normalised (the ONNX export's input).
    """

    def __init__(
        self,
        model: SelfClassifier,
        cfg: Config,
        info: dict,
        device: torch.device,
        selection_loss: list[float] | None = None,
    ):
        self.model, self.config, self.device = model.to(device).eval(), cfg, device
        #: each head's loss after training, when candidate heads were scored (else [])
        self.selection_loss = list(selection_loss or [])
        #: the head :meth:`predict` uses by default: 0, or the selected one among candidates
        self.default_head = default_head(self.model.num_classes, self.selection_loss)
        self.channels = int(info.get("channels", 3))
        self.image_size = cfg.augment.global_size
        #: names of the labelled classes the model was trained on (if any), not its clusters
        self.class_names: list[str] = list(info.get("classes") or [])
        # in-memory datasets (digits, IDX) were seen whole, files with a 0.875 centre crop
        in_memory = bool(info.get("in_memory", False))
        self._transform = eval_transform(cfg.augment, self.channels, from_files=not in_memory)
        self._mode = "L" if self.channels == 1 else "RGB"

    @property
    def num_classes(self) -> list[int]:
        """Classes of each head."""
        return self.model.num_classes

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
                return open_image(str(item), self._mode)
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
        return item.convert(self._mode)

    def _batches(self, images: Images, batch_size: int) -> Iterator[torch.Tensor]:
        if isinstance(images, torch.Tensor) or not isinstance(images, Sequence):
            yield self.preprocess(images).to(self.device)
            return
        for start in range(0, len(images), batch_size):
            yield self.preprocess(images[start : start + batch_size]).to(self.device)

    # ----------------------------------------------------------------- outputs

    @torch.no_grad()
    def probabilities(self, images: Images, batch_size: int = 256) -> list[torch.Tensor]:
        """Class probabilities of every head, [(N, C_h)] (row softmax at ``loss.row_tau``)."""
        out: list[list[torch.Tensor]] = [[] for _ in self.model.heads]
        for batch in self._batches(images, batch_size):
            for h, logits in enumerate(self.model(batch)):
                out[h].append(torch.softmax(logits.float() / self.config.loss.row_tau, 1).cpu())
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
        """L2-normalised embeddings (N, out_dim), what the heads classify."""
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
    """Load a selfclassifier checkpoint (``train`` output or ``convert`` output) for inference.

    Reading never runs code from the file (``torch.load(weights_only=True)``).
    """
    model, cfg, ckpt = model_from_checkpoint(checkpoint, map_location="cpu")
    selection = selection_losses_of(ckpt, len(model.heads))
    return Predictor(model, cfg, ckpt.get("data", {}), torch.device(device), selection)
