"""Running a trained model over a dataset: features, embeddings and per-head probabilities."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from selfclassifier.augment import eval_transform
from selfclassifier.config import AugmentConfig
from selfclassifier.data import ImageFileDataset, TensorImageDataset
from selfclassifier.model import SelfClassifier


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
        for h, logits in enumerate(model.classify(e)):
            probs[h].append(torch.softmax(logits.float() / row_tau, dim=1).cpu())
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
