"""``ViewSource``: the augmented views of every training step, on the training device."""

from __future__ import annotations

import atexit
import multiprocessing
import signal
import threading
import time
import warnings
import weakref

import torch
from torch.utils.data import DataLoader, Dataset

from selfclassifier import dist
from selfclassifier.config import Config
from selfclassifier.data.arrays import TensorImageDataset
from selfclassifier.errors import first_line
from selfclassifier.views import (
    BatchedMultiCrop,
    BatchedPhotometric,
    ClassicMultiCrop,
    MultiCropCutter,
    augment_at,
    compute_dtype,
)
from selfclassifier.views.order import local_batches, step_generator
from selfclassifier.views.workers import (
    _ClassicViews,
    _collate_views,
    _CollateCrops,
    _CroppedViews,
    _EpochBatches,
    _RowsOf,
    _worker_init,
)

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
        self.ds, self.cfg, self.channels, self.device = ds, cfg, channels, device
        pipeline = cfg.augment.pipeline
        self.in_memory = isinstance(ds, TensorImageDataset)
        if pipeline == "auto":
            pipeline = "fast" if self.in_memory or device.type == "cuda" else "classic"
        self.pipeline = pipeline
        self.device_stage: BatchedPhotometric | None = None
        self._loader: DataLoader | None = None
        self._stream = None  # the loader's iterator, positioned at self._position
        self._position = (0, 0)
        if self.in_memory:
            # The whole (small) dataset lives on the device; batches are index lookups.
            self.images = ds.images.to(device)
        self._size = 0  # the global crop side the engine below was built for
        self._use(0)

    def _use(self, epoch: int) -> None:
        """Build the view engine for ``epoch``'s recipe, unless the one in use already is:
        only ``augment.final_size`` changes it, once, for the last ``final_epochs``."""
        aug = augment_at(self.cfg.augment, self.cfg.train.epochs, epoch)
        if aug.global_size == self._size:
            return
        self._size = aug.global_size
        if self.in_memory:
            self.batched = BatchedMultiCrop(aug, self.channels)
            return
        self.close()  # the old engine's workers, if any
        cfg, device = self.cfg, self.device
        if self.pipeline == "fast":
            views = _CroppedViews(self.ds, MultiCropCutter(aug, self.channels), cfg.train.seed)
            dtype = compute_dtype(aug.compute_dtype, device)
            stage = BatchedPhotometric(aug, self.channels, dtype)
            on_cpu = device.type == "cpu"
            rows_of = _RowsOf(dist.rank(), cfg.train.batch_size)
            collate = _CollateCrops(stage if on_cpu else None, cfg.train.seed, rows_of)
            self.device_stage = None if on_cpu else stage
        else:
            views = _ClassicViews(self.ds, ClassicMultiCrop(aug, self.channels), cfg.train.seed)
            collate = _collate_views
        self._sampler = _EpochBatches(self.batches)
        self._stream, self._position = None, (0, 0)
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
        if self._loader is not None:
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
        self._use(epoch)
        if self.in_memory:
            # One upload of the epoch's indices: a host tensor copied per step would block.
            order = torch.stack(self.batches(epoch)[start_step:])
            if self.device.type == "cuda":
                order = order.pin_memory()
            order = order.to(self.device, non_blocking=True)
            rows = self._rows_of(order.shape[1])
            for k, idx in enumerate(order, start=start_step):
                # One generator per global step, shared by all ranks; each rank keeps its rows.
                g = step_generator(cfg.train.seed, epoch, k, self.device)
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
                        f"({first_line(e)}); restarting the loader at that step",
                        LoaderRestartWarning,
                        stacklevel=2,
                    )
                    self.close()
            self._position = (epoch, k + 1) if k + 1 < steps else (epoch + 1, 0)
            views = [v.to(self.device, non_blocking=True) for v in views]
            if self.device_stage is not None:
                g = step_generator(cfg.train.seed, epoch, k, self.device)
                rows = self._rows_of(views[0].shape[0])
                views = self.device_stage(views, g, channels_last=True, rows=rows)
            yield views


MAX_LOADER_RESTARTS = 3


class LoaderRestartWarning(UserWarning):
    """A DataLoader worker died and the epoch continued with a fresh loader."""
