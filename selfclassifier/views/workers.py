"""The loader's worker side: per-sample datasets keyed by (epoch, step, index), the endless
batch sampler, worker set-up and collate functions.
"""

from __future__ import annotations

import ctypes
import math
import random
import signal
import warnings
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from selfclassifier.data.decode import DataError, UnreadableImageWarning
from selfclassifier.data.folders import ImageFileDataset
from selfclassifier.errors import first_line
from selfclassifier.views import BatchedPhotometric, ClassicMultiCrop, MultiCropCutter
from selfclassifier.views.order import sample_seed, step_generator


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
                torch.manual_seed(sample_seed(self.seed, epoch, i))
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
                f"skipping sample {j}: {type(e).__name__}: {first_line(e)}",
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
            rng = random.Random(sample_seed(self.seed, epoch, i))
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
        g = step_generator(self.seed, epoch, step, "cpu")
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
