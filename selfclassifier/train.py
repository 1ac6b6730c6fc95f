"""Training: one readable ``train_one_epoch`` and ``fit()`` around it.

Read top to bottom: build data, model, optimiser; resume if OUT holds a checkpoint; then per
step: augment -> multi-crop forward (NN queue swap of view 1) -> loss -> backward -> step.
Every epoch (and every ``checkpoint_every_steps``) the full state is written atomically to
OUT/checkpoint.pt, so a killed run restarted with the same command continues where it was.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import json
import math
import multiprocessing
import os
import random
import signal
import sys
import threading
import time
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from selfclassifier import dist, features
from selfclassifier.augment import (
    BatchedMultiCrop,
    BatchedPhotometric,
    ClassicMultiCrop,
    MultiCropCutter,
    compute_dtype,
)
from selfclassifier.backbones import check_backbone, enable_activation_checkpointing
from selfclassifier.checkpoint import (
    FORMAT,
    CheckpointError,
    build_model,
    check_compatible,
    check_writable,
    load_checkpoint,
    load_state,
    remove_stale_temporaries,
    save_atomic,
    write_text_atomic,
)
from selfclassifier.config import Config, ConfigError, to_yaml
from selfclassifier.data import (
    DataError,
    ImageFileDataset,
    TensorImageDataset,
    UnreadableImageWarning,
    build_dataset,
    dataset_targets,
    is_labelled,
)
from selfclassifier.evaluation import (
    ProbeSource,
    head_scores,
    knn_record,
    probe_outputs,
    probe_source,
)
from selfclassifier.inference import Outputs, dataset_channels, eval_loader, run_model
from selfclassifier.loss import SelfClassifierLoss, head_losses
from selfclassifier.metrics import format_table, mark_selection, select_heads
from selfclassifier.optim import build_optimizer, lr_schedule, set_lr
from selfclassifier.pretrained import load_backbone_weights
from selfclassifier.queue import NNQueue
from selfclassifier.tensorboard import MetricsBoard, require_tensorboard


class TrainingError(RuntimeError):
    """Training cannot go on; ``str(e)`` is one line saying why and what to do."""


# ----------------------------------------------------------------------------- the network step


class MultiCropForward(nn.Module):
    """What DDP wraps: views -> (logits[head][view], view 0's embedding before the NN swap,
    the NN's labels or None).

    ``heads_fp32``: the heads run in float32 outside autocast (the authors' fp32 run; their
    logits feed a column softmax at tau 0.05), while backbone and projection may run in bf16.
    """

    def __init__(self, model: nn.Module, heads_fp32: bool = True):
        super().__init__()
        self.model = model
        self.heads_fp32 = heads_fp32

    def forward(
        self,
        views: list[torch.Tensor],
        queue: NNQueue | None = None,
        indices: torch.Tensor | None = None,
    ):
        if views[0].dim() == 2:  # cached backbone features (frozen-backbone mode)
            embeddings = list(self.model.project(torch.cat(views)).chunk(len(views)))
        else:
            embeddings = self.model.embed_views(views)
        first, nn_labels = embeddings[0], None
        if queue is not None and queue.full:
            # The nearest neighbour carries no gradient: view 0's branch then only trains the
            # heads, while the other views pull the backbone towards the neighbour's class.
            nearest, nn_labels = queue.nearest(first.detach(), indices)
            embeddings = [nearest] + list(embeddings[1:])
        with torch.autocast(first.device.type, enabled=not self.heads_fp32):
            if self.heads_fp32:  # only lower precisions are raised (a float64 model stays)
                embeddings = [e.float() if e.element_size() < 4 else e for e in embeddings]
            per_view = [self.model.classify(e) for e in embeddings]
        logits = [[pv[h] for pv in per_view] for h in range(len(self.model.heads))]
        return logits, first, nn_labels


# ----------------------------------------------------------------------------- data


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The epoch's sample order: a permutation that depends only on (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def local_batches(
    n: int,
    batch_size: int,
    seed: int,
    epoch: int,
    rank: int | None = None,
    world_size: int | None = None,
) -> list[torch.Tensor]:
    """This rank's index batches for the epoch: global batches (drop_last), rank's slice.

    This plays the part of ``DistributedSampler(shuffle=True, drop_last=True)`` with
    ``set_epoch(epoch)`` and a per-rank ``BatchSampler``: one permutation per epoch that every
    rank derives from (seed, epoch) alone, cut into ``n // batch_size`` global batches (the
    same global batches DistributedSampler would give from that permutation), each rank
    taking 1/W of every batch without overlap. Two differences, both needed here: rank r takes
    the contiguous rows [r*b, (r+1)*b) rather than every W-th sample, so concatenating the
    ranks' batches in rank order (what the gathers do) is the single-process batch row for
    row; and the list can be resumed at any step of an epoch.

    Args:
        n: dataset size; batch_size: the GLOBAL batch, a multiple of ``world_size``.
        rank, world_size: default to this process's.

    Returns:
        ``n // batch_size`` index tensors of ``batch_size // world_size`` samples each.
    """
    r = dist.rank() if rank is None else rank
    w = dist.world_size() if world_size is None else world_size
    if batch_size % w:
        raise ValueError(f"batch size {batch_size} does not divide across {w} processes")
    b = batch_size // w
    order = epoch_order(n, seed, epoch)
    steps = n // batch_size
    return [order[s * batch_size + r * b : s * batch_size + (r + 1) * b] for s in range(steps)]


def _sample_seed(seed: int, epoch: int, index: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + index * 104_729) % (2**63 - 1)


class _ClassicViews(Dataset):
    """Per-sample multi-crop with a seed fixed by (seed, epoch, index): resumable anywhere.

    Items are keyed by (epoch, step, index), so one set of persistent workers serves every
    epoch.
    """

    def __init__(self, ds: Dataset, transform: ClassicMultiCrop, seed: int):
        self.ds, self.transform, self.seed = ds, transform, seed

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key: tuple[int, int, int]):
        epoch, _, i = key

        def views(j: int):
            image, _ = self.ds[j]
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_sample_seed(self.seed, epoch, i))
                return self.transform(image)

        return _with_substitutes(len(self.ds), i, views)


def _with_substitutes(n: int, i: int, make):
    """``make(i)``, or on failure ``make(i + 1)``, ... (one warning each), at most
    MAX_SAMPLE_SUBSTITUTES tries.

    Unreadable files are already replaced by ImageFileDataset; anything else that fails on
    one sample (a transform on a pathological image) falls through to the next sample, with
    sample i's seed, so one bad item never crashes a worker or an epoch.
    """
    for k in range(min(n, MAX_SAMPLE_SUBSTITUTES)):
        j = (i + k) % n
        try:
            return make(j)
        except DataError:
            raise
        except Exception as e:
            warnings.warn(
                f"skipping sample {j}: {type(e).__name__}: {_first_line(e)}",
                UnreadableImageWarning,
                stacklevel=2,
            )
    raise DataError(
        f"{MAX_SAMPLE_SUBSTITUTES} consecutive samples from index {i} failed to load or "
        "augment; check the dataset and augmentation settings"
    )


MAX_SAMPLE_SUBSTITUTES = 16


class _CroppedViews(Dataset):
    """Fast path, worker side: decode (reduced when the crops allow) and cut uint8 crops.

    Crop boxes are drawn from a seed fixed by (seed, epoch, index), like ``_ClassicViews``,
    so a resumed epoch cuts the same crops.
    """

    def __init__(self, ds: ImageFileDataset, cutter: MultiCropCutter, seed: int):
        self.ds, self.cutter, self.seed = ds, cutter, seed

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key: tuple[int, int, int]):
        epoch, _, i = key

        def crops(j: int):
            rng = random.Random(_sample_seed(self.seed, epoch, i))
            boxes: list = []

            def reduction(size: tuple[int, int]) -> int:
                boxes[:] = self.cutter.plan(size, rng)
                return self.cutter.reduction(boxes)

            image, _, factor = self.ds.load(j, reduction)
            return key, self.cutter.cut(image, boxes, factor)

        return _with_substitutes(len(self.ds), i, crops)


class _EpochBatches:
    """Endless batch sampler: (epoch, step, index) keys from ``start`` on, epoch after epoch.

    It runs in the main process, so one persistent loader serves the whole run: workers
    start once, and their prefetching carries straight over epoch boundaries instead of
    draining at the end of each epoch. Each item still knows its seeds.
    """

    def __init__(self, batches_of_epoch):
        self.batches_of_epoch = batches_of_epoch  # epoch -> list of index tensors
        self.start = (0, 0)

    def __iter__(self):
        epoch, step = self.start
        while True:
            batches = self.batches_of_epoch(epoch)
            if not batches:
                return
            for k in range(step, len(batches)):
                yield [(epoch, k, i) for i in batches[k].tolist()]
            epoch, step = epoch + 1, 0


def _worker_init(_: int) -> None:
    """Loader workers ignore stop signals and keep large freed blocks in their heap.

    Workers leave SIGINT/SIGTERM to the main process, which checkpoints and then stops them:
    a Ctrl-C reaches the whole process group, and a worker dying of it would turn a clean
    stop into a crashed epoch.

    By default glibc hands every freed block over 128 KiB back to the OS and faults fresh
    zeroed pages in for the next one; the augmentation's multi-MB temporaries then spend a
    fifth or more of their time in page faults. Raising the thresholds (to glibc's 32 MiB
    cap) keeps them. Other C libraries: nothing to do.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 << 20)
    libc.mallopt(m_trim_threshold, 256 << 20)


def _collate_views(samples: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    return [torch.stack(v) for v in zip(*samples, strict=True)]


def _step_generator(seed: int, epoch: int, step: int, device) -> torch.Generator:
    """The batched stage's generator for one global step, the same on every rank (each rank
    keeps its rows of the draws)."""
    g = torch.Generator(device=device)
    g.manual_seed(_sample_seed(seed, epoch, step))
    return g


class _CollateCrops:
    """Stack uint8 crops; with ``stage`` (CPU training), also run the batched stage here.

    In a loader worker that spreads the vectorised CPU work over the workers instead of
    queueing it in the training process; the generator is the one the training process
    would use for that step, so where it runs does not change the views.
    """

    def __init__(self, stage: BatchedPhotometric | None, seed: int, rows_of):
        """``rows_of(n)``: (first row, global batch) of this rank's n samples."""
        self.stage, self.seed, self.rows_of = stage, seed, rows_of

    def __call__(self, samples: list[tuple[tuple[int, int, int], list[torch.Tensor]]]):
        keys = [k for k, _ in samples]
        if self.stage is None:  # (B, s, s, C): permutes to channels_last on the device
            return _collate_views([v for _, v in samples])
        # On CPU the batched stage wants plain NCHW: transpose while stacking (uint8 bytes).
        views = _collate_views([[c.permute(2, 0, 1) for c in v] for _, v in samples])
        epoch, step, _ = keys[0]
        g = _step_generator(self.seed, epoch, step, "cpu")
        in_worker = torch.utils.data.get_worker_info() is not None
        alloc = _shared_empty if in_worker else None
        return self.stage(views, g, alloc=alloc, rows=self.rows_of(len(samples)))


@dataclass(frozen=True)
class _RowsOf:
    """Where a rank's n samples sit in the global batch (picklable for loader workers)."""

    rank: int
    batch_size: int

    def __call__(self, n: int) -> tuple[int, int]:
        return self.rank * n, self.batch_size


def _shared_empty(shape) -> torch.Tensor:
    """A float32 tensor in shared memory, as DataLoader's own collate makes in workers: the
    batch then reaches the training process without one more copy."""
    storage = torch.empty(0)._typed_storage()._new_shared(math.prod(shape))
    return torch.empty(0).new(storage).view(shape)


# Sources whose loader may still hold workers. Workers ignore SIGTERM (see _worker_init), so
# multiprocessing's own exit hook, which terminates and then joins them, would wait forever:
# this hook (registered after that one, so it runs first) shuts them down cleanly instead.
_LIVE_SOURCES: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_live_sources() -> None:
    for source in list(_LIVE_SOURCES):
        source.close()
    # Last resort for workers whose loader outlived every source (an iterator kept alive by a
    # stored traceback, say): do what multiprocessing's hook would, but end with SIGKILL, which
    # a worker cannot ignore, instead of joining a process that ignored SIGTERM forever.
    children = [child for child in multiprocessing.active_children() if child.daemon]
    if not children:
        return
    if threading.current_thread() is threading.main_thread():
        # PyTorch's SIGCHLD handler raises when a worker dies by a signal: not news at exit.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in children:
        child.terminate()
    deadline = time.monotonic() + 2
    for child in children:
        child.join(timeout=max(0.0, deadline - time.monotonic()))
    for child in children:
        if child.is_alive():
            child.kill()
            child.join(timeout=5)


class ViewSource:
    """Yields the augmented views of each step of an epoch, on the training device.

    * in-memory datasets (digits, IDX): the whole set lives on the device and
      ``BatchedMultiCrop`` augments each batch there;
    * image folders, ``classic``: loader workers run the per-sample torchvision recipe;
    * image folders, ``fast``: loader workers decode and cut uint8 crops; on GPU the batch
      is copied (pinned, non-blocking) and ``BatchedPhotometric`` finishes it there, on CPU
      the workers run that batched stage themselves.

    The views of a sample depend only on (seed, epoch, step, its row in the global batch)
    for the batched stages and on (seed, epoch, sample index) for per-sample work (classic
    recipe, fast crops), never on the number of processes: a run on W processes sees exactly
    the views of a 1-process run, and a resumed epoch the views it would have seen.
    """

    def __init__(self, ds: Dataset, cfg: Config, channels: int, device: torch.device):
        self.ds, self.cfg, self.device = ds, cfg, device
        pipeline = cfg.augment.pipeline
        self.in_memory = isinstance(ds, TensorImageDataset)
        if pipeline == "auto":
            pipeline = "fast" if self.in_memory or device.type == "cuda" else "classic"
        self.pipeline = pipeline
        self.device_stage: BatchedPhotometric | None = None
        if self.in_memory:
            # The whole (small) dataset lives on the device; batches are index lookups.
            self.images = ds.images.to(device)
            self.batched = BatchedMultiCrop(cfg.augment, channels)
            return
        if pipeline == "fast":
            views = _CroppedViews(ds, MultiCropCutter(cfg.augment, channels), cfg.train.seed)
            dtype = compute_dtype(cfg.augment.compute_dtype, device)
            stage = BatchedPhotometric(cfg.augment, channels, dtype)
            on_cpu = device.type == "cpu"
            rows_of = _RowsOf(dist.rank(), cfg.train.batch_size)
            collate = _CollateCrops(stage if on_cpu else None, cfg.train.seed, rows_of)
            self.device_stage = None if on_cpu else stage
        else:
            views = _ClassicViews(ds, ClassicMultiCrop(cfg.augment, channels), cfg.train.seed)
            collate = _collate_views
        self._sampler = _EpochBatches(self.batches)
        self._stream = None  # the loader's iterator, positioned at self._position
        self._position = (0, 0)
        self._loader = DataLoader(
            views,
            batch_sampler=self._sampler,
            collate_fn=collate,
            num_workers=cfg.data.workers,
            pin_memory=device.type == "cuda",
            persistent_workers=cfg.data.workers > 0,
            worker_init_fn=_worker_init,
            # Own generator: starting the loader must not draw from the global torch RNG, or
            # a run resumed mid-epoch would see another global RNG stream than an unbroken one.
            generator=torch.Generator().manual_seed(cfg.train.seed),
        )

    def steps_per_epoch(self) -> int:
        return len(self.ds) // self.cfg.train.batch_size

    def close(self) -> None:
        """Stop the loader's workers (they otherwise prefetch until the process ends)."""
        if not self.in_memory:
            # Persistent workers live in the loader's iterator. Shut them down explicitly: a
            # reference to the iterator held elsewhere (a traceback's frame) would otherwise
            # keep them, and they ignore SIGTERM.
            iterator, self._loader._iterator, self._stream = self._loader._iterator, None, None
            shutdown = getattr(iterator, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()

    def _restart(self, epoch: int, step: int) -> None:
        self.close()
        _LIVE_SOURCES.add(self)
        self._sampler.start = (epoch, step)
        self._stream = iter(self._loader)

    def _rows_of(self, n: int) -> tuple[int, int]:
        return _RowsOf(dist.rank(), self.cfg.train.batch_size)(n)

    def batches(self, epoch: int) -> list[torch.Tensor]:
        """This rank's dataset indices of each step of ``epoch`` (what ``epoch`` yields views
        of, step by step)."""
        cfg = self.cfg
        return local_batches(len(self.ds), cfg.train.batch_size, cfg.train.seed, epoch)

    def epoch(self, epoch: int, start_step: int = 0):
        cfg = self.cfg
        steps = self.steps_per_epoch()
        if start_step >= steps:
            return
        if self.in_memory:
            # One upload of the epoch's indices: a host tensor copied per step would block.
            order = torch.stack(self.batches(epoch)[start_step:])
            if self.device.type == "cuda":
                order = order.pin_memory()
            order = order.to(self.device, non_blocking=True)
            rows = self._rows_of(order.shape[1])
            for k, idx in enumerate(order, start=start_step):
                # One generator per global step, shared by all ranks; each rank keeps its rows.
                g = _step_generator(cfg.train.seed, epoch, k, self.device)
                yield self.batched(self.images[idx], g, rows)
            return
        restarts = 0
        for k in range(start_step, steps):
            while True:
                if self._stream is None or self._position != (epoch, k):
                    self._restart(epoch, k)
                try:
                    views = next(self._stream)
                    break
                except RuntimeError as e:
                    # A worker killed by the OOM killer or a crashing decoder library: every
                    # batch is a pure function of (seed, epoch, step), so a fresh loader
                    # starting at this step yields exactly what the dead one would have.
                    if "DataLoader worker" not in str(e) or restarts >= MAX_LOADER_RESTARTS:
                        raise
                    restarts += 1
                    warnings.warn(
                        f"data loader worker died at epoch {epoch} step {k} "
                        f"({_first_line(e)}); restarting the loader at that step",
                        LoaderRestartWarning,
                        stacklevel=2,
                    )
                    self.close()
            self._position = (epoch, k + 1) if k + 1 < steps else (epoch + 1, 0)
            views = [v.to(self.device, non_blocking=True) for v in views]
            if self.device_stage is not None:
                g = _step_generator(cfg.train.seed, epoch, k, self.device)
                rows = self._rows_of(views[0].shape[0])
                views = self.device_stage(views, g, channels_last=True, rows=rows)
            yield views


MAX_LOADER_RESTARTS = 3


class LoaderRestartWarning(UserWarning):
    """A DataLoader worker died and the epoch continued with a fresh loader."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


class CachedFeatureSource:
    """Frozen-backbone mode: each step's views are cached backbone features (B, D).

    The cache (OUT/features.pt) is computed on first use, after any resume has restored the
    backbone, and reused while its key (weights, data, augmentation, views, seed) matches.
    """

    pipeline = "cached-features"

    def close(self) -> None:
        pass

    def __init__(self, trainer: Trainer):
        self.trainer, self.cfg = trainer, trainer.cfg
        self._features: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None
        self._neighbours: torch.Tensor | None = None

    def steps_per_epoch(self) -> int:
        return len(self.trainer.dataset) // self.cfg.train.batch_size

    def load(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._features is None:
            t = self.trainer
            key = features.cache_key(self.cfg, t.model.backbone, t.dataset, t.channels)
            self._features, self._labels = features.load_or_compute(
                t.out / "features.pt",
                key,
                lambda: features.compute_features(
                    t.model.backbone, t.dataset, self.cfg, t.channels, t.device, t.amp_dtype
                ),
                t.log,
            )
            k = self.cfg.train.feature_neighbours
            if k > 0:
                self._neighbours = features.nearest_neighbours(self._features[0], k)
        return self._features, self._labels

    def batches(self, epoch: int) -> list[torch.Tensor]:
        """This rank's dataset indices of each step of ``epoch``."""
        cfg = self.cfg
        return local_batches(len(self.trainer.dataset), cfg.train.batch_size, cfg.train.seed, epoch)

    def epoch(self, epoch: int, start_step: int = 0):
        cfg = self.cfg
        feats, _ = self.load()
        for k, idx in enumerate(self.batches(epoch)[start_step:], start=start_step):
            g = torch.Generator().manual_seed(_sample_seed(cfg.train.seed, epoch, k))
            views = features.draw_views(feats, idx, cfg.augment.global_crops, g, self._neighbours)
            yield [v.to(self.trainer.device, non_blocking=True) for v in views]

    @torch.no_grad()
    def outputs(self, model: nn.Module, row_tau: float, batch_size: int = 4096) -> Outputs:
        """Evaluation outputs from the cached un-augmented features (no backbone pass)."""
        feats, labels = self.load()
        model.eval()
        embs, probs = [], [[] for _ in model.heads]
        for chunk in feats[0].split(batch_size):
            e = model.project(chunk.float().to(self.trainer.device))
            for h, logits in enumerate(model.classify(e)):
                probs[h].append(torch.softmax(logits.float() / row_tau, dim=1).cpu())
            embs.append(e.float().cpu())
        return Outputs(feats[0].float(), torch.cat(embs), [torch.cat(p) for p in probs], labels)


# ----------------------------------------------------------------------------- state


@dataclass
class RunState:
    """Where training stands: the next (epoch, step) to run and counters."""

    epoch: int = 0
    step: int = 0
    global_step: int = 0
    skipped_steps: int = 0
    history: list = field(default_factory=list)
    # Running sum of this epoch's step losses, so a resumed epoch reports the same mean.
    epoch_loss_sum: float = 0.0
    epoch_loss_steps: int = 0
    # Each head's loss after training (Trainer.selection_losses); empty when not scored.
    selection_loss: list = field(default_factory=list)

    @classmethod
    def from_dict(cls, s: dict) -> RunState:
        return cls(
            int(s["epoch"]),
            int(s["step"]),
            int(s["global_step"]),
            int(s.get("skipped_steps", 0)),
            list(s.get("history", [])),
            float(s.get("epoch_loss_sum", 0.0)),
            int(s.get("epoch_loss_steps", 0)),
            [float(v) for v in s.get("selection_loss", [])],
        )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"train.device={name} but no CUDA device is available; use --device cpu"
            )
        if dist.launched_by_torchrun():
            if name != "cuda":
                raise ConfigError(
                    f"train.device={name} would put every process on one GPU; use --device "
                    "cuda (or auto): process LOCAL_RANK then drives cuda:LOCAL_RANK"
                )
            name = f"cuda:{dist.local_rank()}"
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- the loop


class Trainer:
    """Holds everything a run needs; ``fit()`` drives it."""

    def __init__(
        self,
        cfg: Config,
        out_dir: str | os.PathLike,
        log=print,
        resume_from: str | os.PathLike | None = None,
        dataset: Dataset | None = None,
    ):
        """Check everything that can be checked cheaply first, then read data and build.

        Order matters: config, world size, backbone name, output directory and the
        checkpoint to resume are all checked before the dataset is read or a model built,
        so a mistake costs seconds, not a data scan. ``dataset`` replaces the one
        ``cfg.data.path`` names (benchmarks, tests).
        """
        self.cfg, self.out = cfg, Path(out_dir)
        self._kill_at = _test_kill_point()
        self._lock = None  # OUT/.lock, held while this process trains into OUT
        self._saved_at: tuple[int, int] | None = None  # (epoch, step) of the file on disk
        self._loss_sum: torch.Tensor | None = None  # this epoch's summed loss, on the device
        if cfg.train.deterministic:
            # cuBLAS needs this before its first call to be deterministic.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        self.device = resolve_device(cfg.train.device)
        check_world_size(cfg.train.batch_size)
        check_backbone(cfg.model.backbone)
        if cfg.train.tensorboard:
            require_tensorboard()  # every rank, so that none waits for a failed rank 0
        dist.init_from_env(self.device.type)
        self.main = dist.is_main_process()
        # Only rank 0 talks: other ranks would repeat every line.
        self.log = log if self.main else (lambda msg: None)
        resume = self._resume_source(resume_from)
        ckpt = self._load_resume(resume) if resume is not None else None
        if self.main:
            check_writable(self.out)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        seed_everything(cfg.train.seed)

        self.dataset = self._read_dataset() if dataset is None else dataset
        if len(self.dataset) < cfg.train.batch_size:
            raise ConfigError(
                f"train.batch_size={cfg.train.batch_size} exceeds the "
                f"{len(self.dataset)} images in '{cfg.data.path}'; lower --batch-size"
            )
        self.channels = dataset_channels(self.dataset)
        self.image_size = (
            self.dataset.image_size
            if isinstance(self.dataset, TensorImageDataset)
            else cfg.augment.global_size
        )
        self._prepare_output()
        self._record_skipped()

        self.model = build_model(cfg, self.channels, cfg.augment.global_size).to(self.device)
        if cfg.train.grad_checkpointing:
            enable_activation_checkpointing(self.model.backbone)
        if cfg.model.init_backbone and ckpt is None:
            report = load_backbone_weights(self.model.backbone, cfg.model.init_backbone)
            self.log(f"backbone initialised from {cfg.model.init_backbone}: {report}")
        if cfg.model.freeze_backbone:
            if dist.world_size() > 1:
                raise ConfigError(
                    "model.freeze_backbone trains on cached features in one process; "
                    "run it without torchrun (it takes seconds per epoch)"
                )
            self.model.backbone.requires_grad_(False)
        self.queue = (
            NNQueue(cfg.train.queue_size, cfg.model.out_dim).to(self.device)
            if cfg.train.queue_size > 0
            else None
        )
        self.loss_fn = SelfClassifierLoss(
            cfg.loss.row_tau, cfg.loss.col_tau, cfg.loss.eps, num_global=cfg.augment.global_crops
        )
        self.optimizer = build_optimizer(self.model, cfg)
        self.amp_dtype = autocast_dtype(cfg.train.precision, self.device)
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )
        self.source = (
            CachedFeatureSource(self)
            if cfg.model.freeze_backbone
            else ViewSource(self.dataset, cfg, self.channels, self.device)
        )
        self.steps_per_epoch = self.source.steps_per_epoch()
        if self.steps_per_epoch == 0:
            raise ConfigError("the dataset is smaller than one batch; lower --batch-size")
        self.lrs = lr_schedule(cfg, self.steps_per_epoch)
        # Labels ride along into the NN queue only for its accuracy monitor (-1: unknown).
        self.targets = (
            dataset_targets(self.dataset).to(self.device) if self.queue is not None else None
        )
        self._nn_hits: torch.Tensor | None = None  # (hits, queries) since the last log
        self.state = RunState()
        if ckpt is not None:
            self._restore(ckpt, resume)
        elif self.main:  # records of an attempt killed before its first checkpoint are void
            _trim_metrics(self.out / "metrics.jsonl", self.state)
        self.net = self._wrap(
            MultiCropForward(self.model, heads_fp32=cfg.train.head_precision == "fp32")
        )
        self._stop_signal: int | None = None  # set by the handler, on this rank only
        self._stopping = False  # agreed by all ranks at a step boundary
        self._probe: ProbeSource | None = None  # kNN memory/queries of eval_every, built once
        # The first non-finite value since the last check, kept on the device so that no
        # step waits for it: 2 * global step + what (0 loss, 1 gradient norm), or -1.
        self._first_bad = torch.full((), -1, dtype=torch.int64, device=self.device)
        self._board = (  # after _restore: a resumed run continues its curves from its step
            MetricsBoard(self.out / "tensorboard", self.state.global_step)
            if cfg.train.tensorboard and self.main
            else None
        )

    # -- setup helpers

    def _resume_source(self, resume_from) -> Path | None:
        """OUT/checkpoint.pt when it exists (a restarted run), else ``resume_from``.

        OUT's own checkpoint wins: it is the newest state of this run, and restarting the
        same command (``--resume other.pt`` included) after a kill must not go back in time.
        """
        if _visible_to_all_ranks(self.checkpoint_path):
            if resume_from is not None and Path(resume_from).resolve() != (
                self.checkpoint_path.resolve()
            ):
                self.log(
                    f"note: {self.checkpoint_path} exists and is newer work of this run; "
                    f"resuming from it, not from {resume_from}"
                )
            return self.checkpoint_path
        if resume_from is None:
            return None
        if not _visible_to_all_ranks(Path(resume_from)):
            raise CheckpointError(f"--resume: checkpoint '{resume_from}' not found")
        return Path(resume_from)

    def _load_resume(self, path: Path) -> dict:
        ckpt = load_checkpoint(path, map_location="cpu")
        if "state" not in ckpt or "optimizer" not in ckpt:
            raise CheckpointError(
                f"'{path}' holds model weights only (a converted or exported model), not a "
                "training run to resume; start a new run with --init-backbone it instead"
            )
        check_compatible(ckpt, self.cfg, str(path))
        saved_world = int(ckpt.get("world_size", 1))
        if saved_world != max(1, int(os.environ.get("WORLD_SIZE", "1"))):
            self.log(
                f"note: {path} was written by {saved_world} process(es); resuming with a "
                "different count continues the run but is not bitwise reproducible"
            )
        return ckpt

    def _read_dataset(self):
        """The dataset, with skipped-file warnings gathered into one line (see _record_skipped)."""
        cfg = self.cfg
        mode = "L" if cfg.data.grayscale else "RGB"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnreadableImageWarning)
            return build_dataset(cfg.data.path, cfg.data.split, mode=mode, strict=cfg.data.strict)

    def _prepare_output(self) -> None:
        if not self.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        self._lock = _lock_output(self.out)
        for tmp in remove_stale_temporaries(self.checkpoint_path):
            self.log(f"note: removed {tmp.name}, a partial checkpoint left by a killed run")
        write_text_atomic(self.out / "config.yaml", to_yaml(self.cfg))

    def _record_skipped(self) -> None:
        skipped = getattr(self.dataset, "skipped", [])
        if not self.main:
            return
        path = self.out / "skipped.txt"
        if not skipped:
            path.unlink(missing_ok=True)  # a stale list from an earlier run would mislead
            return
        lines = "".join(f"{_printable(p)}\t{_printable(r)}\n" for p, r in skipped)
        write_text_atomic(path, lines)
        self.log(
            f"warning: skipped {len(skipped)} unreadable image file(s); they are listed in {path}"
        )

    def _wrap(self, net: nn.Module) -> nn.Module:
        cfg = self.cfg
        if self.device.type == "cuda" and cfg.train.channels_last:
            net = net.to(memory_format=torch.channels_last)
        net = dist.data_parallel(net, self.device, sync_bn=cfg.model.sync_bn)
        if cfg.train.compile:
            net = torch.compile(net)
        return net

    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def _restore(self, ckpt: dict, path: Path) -> None:
        """Put model, optimiser, scaler, queue, counters and RNGs back as they were saved."""
        load_state(self.model, ckpt["model"], str(path))
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            if ckpt.get("scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
            if self.queue is not None and ckpt.get("queue") is not None:
                self.queue.load_state_dict(ckpt["queue"])
            self.state = RunState.from_dict(ckpt["state"])
        except (ValueError, KeyError, RuntimeError, TypeError) as e:
            raise CheckpointError(
                f"training state in '{path}' does not match this run ({_first_line(e)}); "
                "resume with the settings it was saved with"
            ) from None
        if isinstance(ckpt.get("torch_rng"), torch.Tensor):
            torch.set_rng_state(ckpt["torch_rng"].cpu())
        cuda_rng = ckpt.get("cuda_rng")
        if self.device.type == "cuda" and cuda_rng and len(cuda_rng) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([t.cpu() for t in cuda_rng])
        threads = int(ckpt.get("num_threads", torch.get_num_threads()))
        if self.cfg.train.deterministic and threads != torch.get_num_threads():
            self.log(
                f"note: {path} was written with {threads} CPU threads, this process uses "
                f"{torch.get_num_threads()}; results will not be bitwise identical to an "
                "uninterrupted run (set OMP_NUM_THREADS to match)"
            )
        self._saved_at = (self.state.epoch, self.state.step)
        if self.main:
            _trim_metrics(self.out / "metrics.jsonl", self.state)
        self.log(f"resuming from {path}: epoch {self.state.epoch}, step {self.state.step}")

    # -- checkpoints

    def checkpoint(self) -> dict:
        """Everything needed to continue bitwise: tensors, numbers, strings, lists, dicts only."""
        state = self.state
        if self._loss_sum is not None:
            state.epoch_loss_sum = float(self._loss_sum)
        return {
            "format": FORMAT,
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "queue": self.queue.state_dict() if self.queue is not None else None,
            "state": {
                "epoch": state.epoch,
                "step": state.step,
                "global_step": state.global_step,
                "skipped_steps": state.skipped_steps,
                "history": state.history,
                "epoch_loss_sum": state.epoch_loss_sum,
                "epoch_loss_steps": state.epoch_loss_steps,
                "selection_loss": state.selection_loss,
            },
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "num_threads": torch.get_num_threads(),
            "data": {
                "channels": self.channels,
                "image_size": self.image_size,
                "classes": list(getattr(self.dataset, "classes", None) or []),
                "num_samples": len(self.dataset),
                "in_memory": isinstance(self.dataset, TensorImageDataset),
            },
            "world_size": dist.world_size(),
        }

    def save(self) -> None:
        """Atomically replace OUT/checkpoint.pt, never with non-finite weights."""
        self._check_finite()
        bad = _first_nonfinite(self.model)
        if dist.any_rank(bad is not None, device=self.device)[0]:
            raise TrainingError(
                f"'{bad or 'a tensor on another rank'}' became non-finite by epoch "
                f"{self.state.epoch} step "
                f"{self.state.step}; {self._last_good()}, not overwritten: rerun the same "
                f"command with {RECOVERY_HINT}"
            )
        if self.main:
            hook = None
            if self._kill_at == (self.state.global_step, "save"):
                hook = _kill_self
            save_atomic(self.checkpoint(), self.checkpoint_path, before_replace=hook)
        self._saved_at = (self.state.epoch, self.state.step)
        dist.barrier()

    def _last_good(self) -> str:
        if self._saved_at is None:
            return f"no checkpoint was written yet, so {self.checkpoint_path} is absent"
        epoch, step = self._saved_at
        return (
            f"the last good checkpoint {self.checkpoint_path} (epoch {epoch}, step {step}) is kept"
        )

    # -- logging

    def _log_metrics(self, record: dict) -> None:
        if self.main:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            if self._board is not None:
                self._board.write(record, self.state.global_step)

    # -- signals

    @contextlib.contextmanager
    def _signals(self):
        """SIGTERM / SIGINT ask the loop to checkpoint and stop at the next step boundary.

        A second signal stops at once (KeyboardInterrupt); the checkpoint on disk is then the
        last one written, intact because writes are atomic.
        """

        def ask_stop(signum, frame):
            if self._stop_signal is not None:
                raise StopNow(signum)
            self._stop_signal = signum  # no printing here: the handler may interrupt a print

        old = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                old[sig] = signal.signal(sig, ask_stop)
            except ValueError:  # not the main thread
                pass
        try:
            yield
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)

    # -- one epoch

    def train_one_epoch(self, epoch: int) -> dict:
        """Steps ``state.step..`` of ``epoch``; stops early (state kept) on a stop signal.

        Returns ``{"epoch", "loss"}``, the loss being the epoch's mean so far."""
        cfg, state = self.cfg, self.state
        self.net.train()
        progress = _Progress(
            self.steps_per_epoch, epoch, cfg.train.epochs, self.main, start=state.step
        )
        t_last, seen = time.perf_counter(), 0
        if state.step == 0:  # a fresh epoch: fresh loss sums
            state.epoch_loss_sum, state.epoch_loss_steps, self._loss_sum = 0.0, 0, None
        if self._loss_sum is None:
            self._loss_sum = torch.tensor(state.epoch_loss_sum, device=self.device)
        batches = self.source.batches(epoch)
        for views in self.source.epoch(epoch, start_step=state.step):
            lr = self.lrs[state.global_step]
            result = self.train_step(views, lr, epoch, batches[state.step])
            state.step += 1
            state.global_step += 1
            log_now = state.step % cfg.train.log_every == 0 or state.step == self.steps_per_epoch
            every = cfg.train.checkpoint_every_steps
            # The epoch's last step is saved by the epoch end right after.
            save_now = bool(
                every and state.global_step % every == 0 and state.step < self.steps_per_epoch
            )
            seen += views[0].shape[0] * dist.world_size()
            if log_now:
                self._check_finite()
                now = time.perf_counter()
                loss, logits = result
                record = self._step_record(epoch, lr, loss, logits, seen / (now - t_last))
                t_last, seen = now, 0
                progress.update(state.step, record)
            if self._kill_at == (state.global_step, "step"):
                _kill_self()
            if save_now:
                self.save()
            if self._agree_to_stop(log_now or save_now):
                break
        progress.close()
        self._check_finite()
        return {"epoch": epoch, "loss": self._epoch_mean_loss()}

    def _agree_to_stop(self, boundary: bool) -> bool:
        """Whether all ranks stop here (a stop signal reached any of them).

        One process decides from a host flag at every step. Several agree through a
        collective, which waits for the device, so they do it only at log and checkpoint
        steps: the same steps on every rank.
        """
        if dist.world_size() == 1 or boundary:
            (stop,) = dist.any_rank(self._stop_signal is not None, device=self.device)
            self._stopping = self._stopping or stop
        return self._stopping

    def _epoch_mean_loss(self) -> float:
        """Mean loss of this epoch's updated steps so far, averaged over ranks."""
        steps = self.state.epoch_loss_steps
        total = self._loss_sum if self._loss_sum is not None else self.state.epoch_loss_sum
        total = torch.as_tensor(total, dtype=torch.float32, device=self.device)
        local = total / steps if steps else torch.tensor(math.nan, device=self.device)
        return float(dist.all_reduce_mean(local))

    def train_step(
        self,
        views: list[torch.Tensor],
        lr: float,
        epoch: int,
        indices: torch.Tensor | None = None,
    ):
        """One optimisation step; returns (detached loss, logits), also for a skipped step.

        ``indices``: this rank's dataset indices of the batch, which the NN queue keeps so that
        no image is paired with its own earlier embedding.

        Nothing here reads a device value on the host (on GPU the step is queued, not
        waited for): a non-finite loss or gradient norm is recorded on the device and raised
        at the next log point or checkpoint (``_check_finite``), before anything is saved.
        Exceptions: fp16's GradScaler (it skips such steps itself), and
        ``train.skip_nonfinite``, which must know before stepping (all ranks decide together).
        """
        cfg, state = self.cfg, self.state
        set_lr(self.optimizer, lr)
        if self.device.type == "cuda" and cfg.train.channels_last and views[0].dim() == 4:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        with torch.autocast(
            self.device.type,
            dtype=self.amp_dtype or torch.float32,
            enabled=self.amp_dtype is not None,
        ):
            if indices is not None:
                indices = indices.to(self.device, non_blocking=True)
            logits, first, nn_labels = self.net(views, self.queue, indices)
            loss = self.loss_fn(logits)
        if cfg.train.skip_nonfinite and self._skip(loss):
            return loss.detach(), logits
        self._flag_nonfinite(loss, 0)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.optim.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            norm = nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.clip_grad)
            # With fp16 the scaler itself skips steps with inf/NaN gradients. The norm is of
            # the all-reduced gradients: every rank takes the same decision.
            if not self.scaler.is_enabled():
                if cfg.train.skip_nonfinite and self._skip(norm):
                    self.optimizer.zero_grad(set_to_none=True)
                    return loss.detach(), logits
                self._flag_nonfinite(norm, 1)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.queue is not None:
            labels = None if indices is None else self.targets[indices]
            if nn_labels is not None and labels is not None:
                self._count_nn_hits(nn_labels, labels)
            if epoch >= cfg.train.queue_start_epoch:
                self.queue.push_global(first.float(), indices, labels)
        if self._loss_sum is None:  # a step outside train_one_epoch (tests, tools)
            self._loss_sum = torch.tensor(self.state.epoch_loss_sum, device=self.device)
        self._loss_sum = self._loss_sum + loss.detach().float()
        state.epoch_loss_steps += 1
        return loss.detach(), logits

    def _count_nn_hits(self, nn_labels: torch.Tensor, labels: torch.Tensor) -> None:
        """The authors' NN-accuracy monitor: how often the neighbour shares the query's label
        (only where both are known); kept on the device until the next log step."""
        known = (labels >= 0) & (nn_labels >= 0)
        step = torch.stack([((nn_labels == labels) & known).sum(), known.sum()]).float()
        self._nn_hits = step if self._nn_hits is None else self._nn_hits + step

    def _skip(self, value: torch.Tensor) -> bool:
        """``train.skip_nonfinite``: whether any rank saw a non-finite ``value`` (counted)."""
        (nonfinite,) = dist.any_rank(not bool(torch.isfinite(value)), device=self.device)
        if nonfinite:
            self.state.skipped_steps += 1
        return nonfinite

    def _flag_nonfinite(self, value: torch.Tensor, what: int) -> None:
        code = 2 * self.state.global_step + what
        bad = ~torch.isfinite(value.detach()) & (self._first_bad < 0)
        self._first_bad = torch.where(bad, code, self._first_bad)

    def _check_finite(self) -> None:
        """Raise on every rank if any rank had a non-finite value since the last check."""
        codes = [c for c in dist.gather_object(int(self._first_bad)) if c >= 0]
        if not codes:
            return
        step, what = divmod(min(codes), 2)
        epoch, in_epoch = divmod(step, self.steps_per_epoch)
        raise TrainingError(
            f"non-finite {('loss', 'gradient norm')[what]} at epoch {epoch} step {in_epoch} "
            f"(global step {step}); stopped, and {self._last_good()}: rerun the same command "
            f"with {RECOVERY_HINT}"
        )

    def _step_record(self, epoch, lr, loss, logits, img_per_s) -> dict:
        # Distinct classes predicted for view 0 of this rank's batch, per head.
        per_head = [int(torch.unique(views[0].argmax(1)).numel()) for views in logits]
        record = {
            "epoch": epoch,
            "step": self.state.step,
            "global_step": self.state.global_step,
            "loss": float(dist.all_reduce_mean(loss.float())),
            "lr": lr,
            "img_per_s": round(img_per_s, 1),
            "active_classes": per_head[0],
            "active_classes_per_head": per_head,
            "skipped_steps": self.state.skipped_steps,
        }
        if self._nn_hits is not None:
            hits, queries = dist.all_reduce_sum(self._nn_hits).tolist()
            self._nn_hits = None
            if queries > 0:
                record["nn_acc"] = round(hits / queries, 4)
        self._log_metrics(record)
        return record

    # -- evaluation during and after training

    def evaluate(self, batch_size: int = 512) -> list[dict] | None:
        """Each head's NMI/AMI/ARI/ACC on the training data (when it has labels)."""
        if not is_labelled(self.dataset):
            return None
        return head_scores(self._training_outputs(batch_size))

    def _training_outputs(self, batch_size: int = 512):
        """Un-augmented outputs on the training data (from cached features when frozen)."""
        if isinstance(self.source, CachedFeatureSource):
            return self.source.outputs(self.model, self.cfg.loss.row_tau)
        return self._outputs(self.dataset, batch_size)

    def _outputs(self, ds: Dataset, batch_size: int = 512):
        # Evaluation must not move the training RNG streams: eval_every then never changes
        # the trained weights, and a resumed run matches an unbroken one.
        with torch.random.fork_rng(devices=[]):
            loader = eval_loader(
                ds, self.cfg.augment, self.channels, batch_size, self.cfg.data.workers
            )
            return run_model(self.model, loader, self.device, self.cfg.loss.row_tau)

    def monitor(self) -> dict:
        """The ``eval_every`` record: each head's scores on the training data and kNN top-1.

        kNN uses backbone features with the memory / queries of ``selfclassifier evaluate
        --knn`` (the dataset's train / test split, or a fixed 75/25 hold-out of a folder
        without splits), so the logged curve ends at the number evaluate reports.
        """
        if not is_labelled(self.dataset):
            return {}
        out = self._training_outputs()
        if self._probe is None:
            mode = "L" if self.cfg.data.grayscale else "RGB"
            self._probe = probe_source(self.cfg.data.path, self.cfg.data.split, None, mode)
        memory, queries = probe_outputs(self._probe, out, self._outputs)
        knn = knn_record(memory.features, memory.labels, queries.features, queries.labels)
        return {"heads": head_scores(out), "knn": knn}

    def _log_monitor(self, epoch: int, summary: dict) -> None:
        if not self.main or "knn" not in summary:
            return
        head = summary["heads"][0]
        self.log(
            f"epoch {epoch + 1}: kNN top-1 {summary['knn']['top1']:.4f}, head 0 "
            f"NMI {head['nmi']:.4f} ACC {head['acc']:.4f}"
        )

    # -- the whole run

    def fit(self) -> dict:
        try:
            return self._fit()
        finally:
            self.source.close()  # stop the loader's persistent workers
            if self._board is not None:
                self._board.close()

    def _fit(self) -> dict:
        cfg, state = self.cfg, self.state
        if isinstance(self.source, CachedFeatureSource):
            self.source.load()  # before the epoch timer: epochs then measure training alone
        with self._signals():
            if self.main:
                self.log(
                    f"training on {self.device} ({dist.world_size()} process(es)): "
                    f"{len(self.dataset)} images, {self.steps_per_epoch} steps/epoch, "
                    f"pipeline {self.source.pipeline}, precision "
                    f"{self.amp_dtype or torch.float32}"
                )
            while state.epoch < cfg.train.epochs:
                epoch, t0 = state.epoch, time.perf_counter()
                if state.step < self.steps_per_epoch:
                    self._train_epoch_guarded(epoch)
                if self._stopping:
                    self.save()
                    signum = self._stop_signal or signal.SIGTERM  # a rank without the signal
                    raise Interrupted(
                        signum,
                        f"received {signal.Signals(signum).name}: checkpoint saved at "
                        f"epoch {state.epoch} step {state.step}; run the same command to resume",
                    )
                self._end_epoch(epoch, t0)
        if state.skipped_steps and self.main:
            self.log(
                f"note: skipped {state.skipped_steps} step(s) with a non-finite loss or "
                "gradient (train.skip_nonfinite)"
            )
        return self.finish()

    def _train_epoch_guarded(self, epoch: int) -> None:
        """A loader worker that dies while the main process is mid-step (PyTorch reports it
        from a SIGCHLD handler, anywhere) may have interrupted an update: stop cleanly and
        let the rerun resume from the last checkpoint. Deaths seen while waiting for data are
        retried in place by ViewSource."""
        try:
            self.train_one_epoch(epoch)
        except RuntimeError as e:
            if "DataLoader worker" not in str(e):
                raise
            raise TrainingError(
                f"a data loader worker died at epoch {epoch} step {self.state.step} "
                f"({_first_line(e)}); {self._last_good()}: rerun the same command to resume "
                "(fewer --workers if memory is short)"
            ) from None

    def _end_epoch(self, epoch: int, t0: float) -> None:
        """History, optional evaluation, metrics, then the epoch's checkpoint."""
        cfg, state = self.cfg, self.state
        summary = {
            "epoch": epoch,
            "loss": self._epoch_mean_loss(),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        if state.skipped_steps:
            summary["skipped_steps"] = state.skipped_steps
        if cfg.train.eval_every and (epoch + 1) % cfg.train.eval_every == 0 and self.main:
            summary.update(self.monitor())
            self._log_monitor(epoch, summary)
        state.history.append({k: v for k, v in summary.items() if k != "heads"})
        self._log_metrics({"epoch_end": epoch, **summary})
        state.epoch, state.step = epoch + 1, 0
        state.epoch_loss_sum, state.epoch_loss_steps = 0.0, 0
        state.selection_loss = []  # the weights changed: scored again when training ends
        self._loss_sum = None
        self.save()

    def selection_losses(self) -> list[float] | None:
        """Each head's loss with the trained weights frozen (BatchNorm in eval mode), averaged
        over ``train.selection_passes`` passes over the data with augmentations no training
        step saw (those of the epochs after the last). None when no class count repeats in
        ``model.heads`` (nothing to choose) or the passes are disabled.

        Lower is better: among heads of equal size the lowest-loss one is the unsupervised
        pick (candidate heads and lowest-loss selection as in SCAN, Van Gansbeke et al. 2020;
        docs/RESULTS.md measures how well it finds the best head on digits). Every rank runs
        this: the loss's column softmax spans the global batch."""
        classes = self.model.num_classes
        passes = self.cfg.train.selection_passes
        if passes == 0 or len(set(classes)) == len(classes):
            return None
        cfg = self.cfg
        self.net.eval()
        total = torch.zeros(len(classes), device=self.device)
        steps = 0
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            for extra in range(passes):
                for views in self.source.epoch(cfg.train.epochs + extra):
                    with torch.autocast(
                        self.device.type,
                        dtype=self.amp_dtype or torch.float32,
                        enabled=self.amp_dtype is not None,
                    ):
                        logits, _, _ = self.net(views, None)
                    total += head_losses(
                        logits, cfg.loss.row_tau, cfg.loss.col_tau, cfg.loss.eps,
                        cfg.augment.global_crops,
                    )  # fmt: skip
                    steps += 1
        return [float(v) for v in dist.all_reduce_mean(total / max(steps, 1))]

    def finish(self) -> dict:
        losses = self.selection_losses()
        selected = None if losses is None else select_heads(self.model.num_classes, losses)
        if losses is not None and losses != self.state.selection_loss:
            self.state.selection_loss = losses  # evaluate, report, predict and load() read it
            self.save()
        if losses is not None and self.main:
            record = {"selection_loss": [round(v, 6) for v in losses], "selected": selected}
            self._log_metrics({"head_selection": record})
            picks = ", ".join(
                f"{c} classes: head {h}"
                for h, (c, pick) in enumerate(zip(self.model.num_classes, selected, strict=True))
                if pick and self.model.num_classes.count(c) > 1
            )
            self.log(f"head selection (lowest loss, no labels): {picks}")
        result = {"heads": self.evaluate()} if self.main else {}
        if self.main and result["heads"] is not None:
            if losses is not None:
                mark_selection(result["heads"], self.model.num_classes, losses)
            data = self.cfg.data
            result["data"] = {"path": data.path, "split": data.split, "samples": len(self.dataset)}
            write_text_atomic(self.out / "eval.json", json.dumps(result, indent=2))
        return result


RECOVERY_HINT = (
    "a lower learning rate (--lr or --set optim.lr=...), gradient clipping "
    "(--set optim.clip_grad=1.0) or --set train.precision=fp32; or add --skip-nonfinite to "
    "skip such steps"
)


class Interrupted(RuntimeError):
    """A stop signal arrived and the checkpoint is saved; ``signum`` says which signal."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


class StopNow(KeyboardInterrupt):
    """A second stop signal: stop at once without saving (the last checkpoint is intact)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _first_nonfinite(model: nn.Module) -> str | None:
    """Name of the first parameter or float buffer holding NaN/inf, else None (one sync)."""
    tensors = [(k, v) for k, v in model.state_dict().items() if v.is_floating_point()]
    if not tensors:
        return None
    finite = torch.stack([torch.isfinite(v).all() for _, v in tensors])
    if bool(finite.all()):
        return None
    return tensors[int((~finite).nonzero()[0])][0]


def _trim_metrics(path: Path, state: RunState) -> None:
    """Drop metrics a killed run logged after its checkpoint, and any half-written line.

    The resumed run logs those steps again, so metrics.jsonl stays one record per step.
    """
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        if "epoch_end" in record and int(record["epoch_end"]) >= state.epoch:
            continue
        if int(record.get("global_step", -1)) > state.global_step:
            continue
        kept.append(line + "\n")
    write_text_atomic(path, "".join(kept))


def _printable(text: str) -> str:
    """One field of skipped.txt: undecodable bytes and tabs/newlines escaped (as data does)."""
    text = os.fsencode(text).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


TEST_KILL_ENV = "SELFCLASSIFIER_TEST_KILL_AT_STEP"


def _test_kill_point() -> tuple[int, str] | None:
    """Fault injection for the crash tests: ``N`` = SIGKILL right after global step N's update
    (before its checkpoint); ``N:save`` = SIGKILL inside the checkpoint write at step N, after
    the temporary file is complete and before it replaces the old checkpoint."""
    spec = os.environ.get(TEST_KILL_ENV, "").strip()
    if not spec:
        return None
    step, _, where = spec.partition(":")
    return int(step), where or "step"


def _kill_self(*_args) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _lock_output(out: Path):
    """Hold a POSIX lock on OUT/.lock so two runs never train into one directory (a requeued
    job starting while the old one still writes). The kernel drops it when the process dies,
    even by SIGKILL; loader workers, being other processes, never hold it."""
    import fcntl

    f = open(out / ".lock", "a+")  # noqa: SIM115 - kept open for the whole run
    try:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        f.seek(0)
        owner = f.read().strip() or "unknown"
        f.close()
        if e.errno in (errno.EACCES, errno.EAGAIN):
            raise CheckpointError(
                f"another run (pid {owner}) is training into '{out}'; wait for it to end "
                "or pass another --out"
            ) from None
        return None  # a file system without locks: go on unlocked
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def _visible_to_all_ranks(path: Path) -> bool:
    """Whether ``path`` is a file, agreed by all ranks: every rank must resume from the same
    file (OUT on a filesystem all nodes share), or the ranks would start from different
    states."""
    seen = dist.gather_object(path.is_file())
    if any(seen) and not all(seen):
        missing = [r for r, ok in enumerate(seen) if not ok]
        raise TrainingError(
            f"checkpoint '{path}' is visible to some processes but not to ranks {missing}; "
            "put --out (and --resume) on a filesystem every node shares"
        )
    return seen[0]


def check_world_size(batch_size: int) -> None:
    """The global batch must split evenly; checked from the launcher's env before joining."""
    world = max(dist.world_size(), int(os.environ.get("WORLD_SIZE", "1") or 1))
    if batch_size % world:
        raise ConfigError(
            f"train.batch_size={batch_size} (the global batch) does not divide across "
            f"{world} processes; use a multiple of {world}"
        )


class _Progress:
    """tqdm bar on the main process (plain log lines when stderr is not a terminal)."""

    def __init__(self, total: int, epoch: int, epochs: int, enabled: bool, start: int = 0):
        self.bar = None
        self.enabled, self.prefix = enabled, f"epoch {epoch + 1}/{epochs}"
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=self.prefix, leave=False)
        self.last = start

    def update(self, step: int, record: dict) -> None:
        if not self.enabled:
            return
        info = {
            "loss": f"{record['loss']:.4f}",
            "lr": f"{record['lr']:.3g}",
            "img/s": f"{record['img_per_s']:.0f}",
            "classes": record["active_classes"],
        }
        if self.bar is not None:
            self.bar.update(step - self.last)
            self.bar.set_postfix(info)
        self.last = step

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def fit(
    cfg: Config,
    out_dir: str | os.PathLike,
    log=print,
    resume_from: str | os.PathLike | None = None,
) -> dict:
    """Train (resuming from OUT/checkpoint.pt, else ``resume_from``, if given) and evaluate.

    Returns the evaluation results on rank 0 (``{}`` on other ranks). Under torchrun every
    process calls this; the process group is joined here and left on the way out.
    """
    try:
        trainer = Trainer(cfg, out_dir, log, resume_from=resume_from)
        return trainer.fit()
    finally:
        dist.shutdown()


__all__ = [
    "Trainer",
    "fit",
    "format_table",
    "MultiCropForward",
    "local_batches",
    "epoch_order",
    "F",
]
