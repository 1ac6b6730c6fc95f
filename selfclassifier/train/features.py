"""Frozen-backbone mode: backbone features computed once, cached on disk, views drawn from them.

With a strong pretrained encoder (the TEMI-style use of the method) only the projection and
heads train, so the backbone need not run during training at all. For every image the cache
holds the features of the un-augmented image (view 0, also used for evaluation) and of
``feature_views`` augmented global crops; each step draws the loss's views per sample from
them, optionally replacing the last view by a random one of the image's k nearest
neighbours in feature space (TEMI's pairing). An epoch is then a few small matrix products.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from selfclassifier.config import Config
from selfclassifier.data.arrays import TensorImageDataset
from selfclassifier.data.folders import ImageFileDataset
from selfclassifier.inference import Outputs
from selfclassifier.interop.pretrained import weights_fingerprint
from selfclassifier.storage import CheckpointError, load_file, save_atomic
from selfclassifier.views import BatchedMultiCrop, ClassicMultiCrop, eval_transform
from selfclassifier.views.order import local_batches, sample_seed


class _CacheViews(Dataset):
    """Item i -> ((1 + V, C, S, S) views: un-augmented first, label)."""

    def __init__(self, ds: Dataset, cfg: Config, channels: int):
        self.ds, self.seed = ds, cfg.train.seed
        aug = dataclasses.replace(cfg.augment, global_crops=cfg.train.feature_views, local_crops=0)
        self.plain = eval_transform(cfg.augment, channels, isinstance(ds, ImageFileDataset))
        self.augment = ClassicMultiCrop(aug, channels)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        image, label = self.ds[i]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + i * 104_729 + 17) % (2**63 - 1))
            views = [self.plain(image)] + self.augment(image)
        return torch.stack(views), label


def _view_batches(ds: Dataset, cfg: Config, channels: int, device: torch.device, batch_size: int):
    """Yields ((B, 1 + V, C, S, S) views, labels (B,)); in-memory data is augmented batch-wise."""
    if not isinstance(ds, TensorImageDataset):
        workers = cfg.data.workers if isinstance(ds, ImageFileDataset) else 0
        yield from DataLoader(
            _CacheViews(ds, cfg, channels), batch_size=batch_size, num_workers=workers
        )
        return
    aug = dataclasses.replace(cfg.augment, global_crops=cfg.train.feature_views, local_crops=0)
    plain = eval_transform(cfg.augment, channels, from_files=False)
    crops = BatchedMultiCrop(aug, channels)
    g = torch.Generator(device=device).manual_seed(cfg.train.seed * 1_000_003 + 17)
    for start in range(0, len(ds), batch_size):
        images = ds.images[start : start + batch_size].to(device)
        views = [plain(images)] + crops(images, g)
        yield torch.stack(views, dim=1), ds.targets[start : start + batch_size]


def cache_key(cfg: Config, backbone: nn.Module, ds: Dataset, channels: int) -> str:
    """Changes whenever the cached features would: weights, data, augmentation, views, seed."""
    recipe = {
        "weights": weights_fingerprint(backbone),
        "data": dataclasses.asdict(cfg.data) | {"n": len(ds), "channels": channels},
        "augment": dataclasses.asdict(cfg.augment),
        "views": cfg.train.feature_views,
        "seed": cfg.train.seed,
    }
    recipe["data"].pop("workers", None)
    blob = json.dumps(recipe, sort_keys=True, default=str).encode()
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


@torch.no_grad()
def compute_features(
    backbone: nn.Module,
    ds: Dataset,
    cfg: Config,
    channels: int,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    batch_size: int = 128,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (1 + V, N, D) float16 on CPU, labels (N,) int64) of every image's views."""
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    for views, target in _view_batches(ds, cfg, channels, device, batch_size):
        b, v = views.shape[:2]
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=bool(amp_dtype)):
            f = backbone(views.flatten(0, 1).to(device, non_blocking=True))
        feats.append(f.float().reshape(b, v, -1).transpose(0, 1).half().cpu())
        labels.append(torch.as_tensor(target).long())
    backbone.train(was_training)
    return torch.cat(feats, dim=1), torch.cat(labels)


def load_or_compute(
    path: str | os.PathLike,
    key: str,
    compute: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    log: Callable[[str], None] = print,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached (features, labels) from ``path`` when its key matches, else computed and saved."""
    path = Path(path)
    if path.is_file():
        try:
            cached = load_file(path)
        except CheckpointError:
            cached = {}
        if cached.get("key") == key:
            log(f"using cached backbone features {path}")
            return cached["features"], cached["labels"]
    feats, labels = compute()
    save_atomic({"key": key, "features": feats, "labels": labels}, path)
    log(f"cached backbone features of {feats.shape[1]} images x {feats.shape[0]} views in {path}")
    return feats, labels


def nearest_neighbours(features: torch.Tensor, k: int, chunk: int = 2048) -> torch.Tensor:
    """(N, k) indices of each row's k most cosine-similar other rows of (N, D) ``features``."""
    x = nn.functional.normalize(features.float(), dim=1)
    k = min(k, x.shape[0] - 1)
    out = []
    for start in range(0, x.shape[0], chunk):
        sim = x[start : start + chunk] @ x.T
        rows = torch.arange(start, min(start + chunk, x.shape[0]))
        sim[rows - start, rows] = -float("inf")  # never its own neighbour
        out.append(sim.topk(k, dim=1).indices)
    return torch.cat(out)


def draw_views(
    features: torch.Tensor,
    index: torch.Tensor,
    num_views: int,
    generator: torch.Generator,
    neighbours: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """``num_views`` tensors (B, D) float32: per sample, distinct cached views of ``index``.

    With ``neighbours`` (N, k), the last view is a random cached view of a random neighbour.
    """
    cached, b = features.shape[0], index.shape[0]
    if num_views <= cached:
        picks = torch.rand(b, cached, generator=generator).argsort(dim=1)[:, :num_views]
    else:
        picks = torch.randint(cached, (b, num_views), generator=generator)
    views = [features[picks[:, j], index] for j in range(num_views)]
    if neighbours is not None and neighbours.shape[1] > 0:
        choice = torch.randint(neighbours.shape[1], (b,), generator=generator)
        other = neighbours[index, choice]
        views[-1] = features[torch.randint(cached, (b,), generator=generator), other]
    return [v.float() for v in views]


class CachedFeatureSource:
    """Frozen-backbone mode: each step's views are cached backbone features (B, D).

    The cache (``cache_path``) is computed on first use, after any resume has restored the
    backbone, and reused while its key (weights, data, augmentation, views, seed) matches.
    """

    pipeline = "cached-features"

    def __init__(
        self,
        dataset: Dataset,
        cfg: Config,
        channels: int,
        backbone: nn.Module,
        device: torch.device,
        amp_dtype: torch.dtype | None,
        cache_path: str | os.PathLike,
        log: Callable[[str], None] = print,
    ):
        self.dataset, self.cfg, self.channels, self.backbone = dataset, cfg, channels, backbone
        self.device, self.amp_dtype = device, amp_dtype
        self.cache_path, self.log = Path(cache_path), log
        self._features: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None
        self._neighbours: torch.Tensor | None = None

    def close(self) -> None:
        pass

    def steps_per_epoch(self) -> int:
        return len(self.dataset) // self.cfg.train.batch_size

    def load(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._features is None:
            cfg = self.cfg
            key = cache_key(cfg, self.backbone, self.dataset, self.channels)
            self._features, self._labels = load_or_compute(
                self.cache_path,
                key,
                lambda: compute_features(
                    self.backbone, self.dataset, cfg, self.channels, self.device, self.amp_dtype
                ),
                self.log,
            )
            k = cfg.train.feature_neighbours
            if k > 0:
                self._neighbours = nearest_neighbours(self._features[0], k)
        return self._features, self._labels

    def batches(self, epoch: int) -> list[torch.Tensor]:
        """This rank's dataset indices of each step of ``epoch``."""
        cfg = self.cfg
        return local_batches(len(self.dataset), cfg.train.batch_size, cfg.train.seed, epoch)

    def epoch(self, epoch: int, start_step: int = 0):
        cfg = self.cfg
        feats, _ = self.load()
        for k, idx in enumerate(self.batches(epoch)[start_step:], start=start_step):
            g = torch.Generator().manual_seed(sample_seed(cfg.train.seed, epoch, k))
            views = draw_views(feats, idx, cfg.augment.global_crops, g, self._neighbours)
            yield [v.to(self.device, non_blocking=True) for v in views]

    @torch.no_grad()
    def outputs(self, model: nn.Module, row_tau: float, batch_size: int = 4096) -> Outputs:
        """Evaluation outputs from the cached un-augmented features (no backbone pass)."""
        feats, labels = self.load()
        model.eval()
        embs, probs = [], [[] for _ in model.heads]
        for chunk in feats[0].split(batch_size):
            e = model.project(chunk.float().to(self.device))
            for h, p in enumerate(model.probabilities(e, row_tau)):
                probs[h].append(p.cpu())
            embs.append(e.float().cpu())
        return Outputs(feats[0].float(), torch.cat(embs), [torch.cat(p) for p in probs], labels)
