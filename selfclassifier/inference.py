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
    labels (N,) with -1 where unknown."""

    features: torch.Tensor
    embeddings: torch.Tensor
    probs: list[torch.Tensor]
    labels: torch.Tensor

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
def run_model(model: SelfClassifier, loader, device: torch.device, row_tau: float = 0.1) -> Outputs:
    """Features, embeddings and row-softmax probabilities (at ``row_tau``) for every sample."""
    model.eval()
    feats, embs, labels = [], [], []
    probs: list[list[torch.Tensor]] = [[] for _ in model.heads]
    for images, target in loader:
        images = images.to(device, non_blocking=True)
        f = model.features(images)
        e = model.project(f)
        for h, logits in enumerate(model.classify(e)):
            probs[h].append(torch.softmax(logits.float() / row_tau, dim=1).cpu())
        feats.append(f.float().cpu())
        embs.append(e.float().cpu())
        labels.append(torch.as_tensor(target).long())
    return Outputs(
        torch.cat(feats), torch.cat(embs), [torch.cat(p) for p in probs], torch.cat(labels)
    )


def dataset_channels(ds: Dataset) -> int:
    if isinstance(ds, TensorImageDataset):
        return ds.num_channels
    return 1 if getattr(ds, "mode", "RGB") == "L" else 3
