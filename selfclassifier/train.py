"""Training: one readable ``train_one_epoch`` and ``fit()`` around it.

Read top to bottom: build data, model, optimiser; resume if OUT holds a checkpoint; then per
step: augment -> multi-crop forward (NN queue swap of view 1) -> loss -> backward -> step.
Every epoch (and every ``checkpoint_every_steps``) the full state is written atomically to
OUT/checkpoint.pt, so a killed run restarted with the same command continues where it was.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from selfclassifier import dist, features
from selfclassifier.augment import BatchedMultiCrop, ClassicMultiCrop
from selfclassifier.checkpoint import (
    FORMAT,
    CheckpointError,
    build_model,
    load_checkpoint,
    load_state,
    save_atomic,
)
from selfclassifier.config import Config, ConfigError, to_yaml
from selfclassifier.data import ImageFileDataset, TensorImageDataset, build_dataset, is_labelled
from selfclassifier.inference import Outputs, dataset_channels, eval_loader, run_model
from selfclassifier.loss import SelfClassifierLoss
from selfclassifier.metrics import head_metrics
from selfclassifier.optim import build_optimizer, cosine_lr, set_lr
from selfclassifier.pretrained import load_backbone_weights
from selfclassifier.queue import NNQueue


class TrainingError(RuntimeError):
    """Training cannot go on; ``str(e)`` is one line saying why and what to do."""


# ----------------------------------------------------------------------------- the network step


class MultiCropForward(nn.Module):
    """What DDP wraps: views -> (logits[head][view], embedding of view 1 before the NN swap)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, views: list[torch.Tensor], queue: NNQueue | None = None):
        if views[0].dim() == 2:  # cached backbone features (frozen-backbone mode)
            embeddings = list(self.model.project(torch.cat(views)).chunk(len(views)))
        else:
            embeddings = self.model.embed_views(views)
        first = embeddings[0]
        if queue is not None and queue.full:
            # The nearest neighbour carries no gradient: view 1's branch then only trains the
            # heads, while the other views pull the backbone towards the neighbour's class.
            embeddings = [queue.nearest(first)] + list(embeddings[1:])
        per_view = [self.model.classify(e) for e in embeddings]
        logits = [[pv[h] for pv in per_view] for h in range(len(self.model.heads))]
        return logits, first


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
    """Per-sample multi-crop with a seed fixed by (seed, epoch, index): resumable anywhere."""

    def __init__(self, ds: Dataset, transform: ClassicMultiCrop, seed: int):
        self.ds, self.transform, self.seed, self.epoch = ds, transform, seed, 0

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        image, _ = self.ds[i]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_sample_seed(self.seed, self.epoch, i))
            return self.transform(image)


def _collate_views(samples: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    return [torch.stack(v) for v in zip(*samples, strict=True)]


class ViewSource:
    """Yields the augmented views of each step of an epoch, on the training device.

    In-memory datasets (digits, IDX) are augmented batch-wise on the device with the
    ``fast`` engine; image folders use loader workers with the ``classic`` engine (or decode
    in workers and augment batch-wise when the pipeline is ``fast``).

    The views of a sample depend only on (seed, epoch, step, its row in the global batch)
    for the ``fast`` engine and on (seed, epoch, sample index) for the ``classic`` one, never
    on the number of processes: a run on W processes sees exactly the views of a 1-process run.
    """

    def __init__(self, ds: Dataset, cfg: Config, channels: int, device: torch.device):
        self.ds, self.cfg, self.device = ds, cfg, device
        pipeline = cfg.augment.pipeline
        in_memory = isinstance(ds, TensorImageDataset)
        if pipeline == "auto":
            pipeline = "fast" if in_memory or device.type == "cuda" else "classic"
        self.pipeline = pipeline
        if in_memory:
            # The whole (small) dataset lives on the device; batches are index lookups.
            self.images = ds.images.to(device)
        if pipeline == "fast":
            self.batched = BatchedMultiCrop(cfg.augment, channels)
        if not in_memory:
            if pipeline == "fast":
                raise ConfigError(
                    "augment.pipeline=fast for image folders is not available "
                    "yet; use augment.pipeline=classic"
                )
            self.views = _ClassicViews(ds, ClassicMultiCrop(cfg.augment, channels), cfg.train.seed)

    def steps_per_epoch(self) -> int:
        return len(self.ds) // self.cfg.train.batch_size

    def epoch(self, epoch: int, start_step: int = 0):
        cfg = self.cfg
        batches = local_batches(len(self.ds), cfg.train.batch_size, cfg.train.seed, epoch)
        batches = batches[start_step:]
        if isinstance(self.ds, TensorImageDataset):
            for k, idx in enumerate(batches, start=start_step):
                # One generator per global step, shared by all ranks; each rank keeps its rows.
                g = torch.Generator(device=self.device)
                g.manual_seed(_sample_seed(cfg.train.seed, epoch, k))
                rows = (dist.rank() * len(idx), cfg.train.batch_size)
                yield self.batched(self.images[idx.to(self.device)], g, rows)
            return
        self.views.epoch = epoch
        loader = DataLoader(
            self.views,
            batch_sampler=[b.tolist() for b in batches],
            collate_fn=_collate_views,
            num_workers=cfg.data.workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        for views in loader:
            yield [v.to(self.device, non_blocking=True) for v in views]


class CachedFeatureSource:
    """Frozen-backbone mode: each step's views are cached backbone features (B, D).

    The cache (OUT/features.pt) is computed on first use, after any resume has restored the
    backbone, and reused while its key (weights, data, augmentation, views, seed) matches.
    """

    pipeline = "cached-features"

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

    def epoch(self, epoch: int, start_step: int = 0):
        cfg = self.cfg
        feats, _ = self.load()
        batches = local_batches(
            len(self.trainer.dataset), cfg.train.batch_size, cfg.train.seed, epoch
        )
        for k, idx in enumerate(batches[start_step:], start=start_step):
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
    ):
        self.cfg, self.out = cfg, Path(out_dir)
        self.resume_from = Path(resume_from) if resume_from is not None else None
        self.device = resolve_device(cfg.train.device)
        dist.init_from_env(self.device.type)
        self.main = dist.is_main_process()
        # Only rank 0 talks: other ranks would repeat every line.
        self.log = log if self.main else (lambda msg: None)
        world = dist.world_size()
        if cfg.train.batch_size % world:
            raise ConfigError(
                f"train.batch_size={cfg.train.batch_size} (the global batch) does not divide "
                f"across {world} processes; use a multiple of {world}"
            )
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        seed_everything(cfg.train.seed)
        self._prepare_output()

        grayscale = cfg.data.grayscale
        mode = "L" if grayscale else "RGB"
        self.dataset = build_dataset(
            cfg.data.path, cfg.data.split, mode=mode, strict=cfg.data.strict
        )
        if grayscale is None and isinstance(self.dataset, ImageFileDataset):
            pass  # folders default to RGB, already read so
        self._record_skipped()
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

        self.model = build_model(cfg, self.channels, cfg.augment.global_size).to(self.device)
        if cfg.model.init_backbone and not self.checkpoint_path.is_file():
            report = load_backbone_weights(self.model.backbone, cfg.model.init_backbone)
            self.log(f"backbone initialised from {cfg.model.init_backbone}: {report}")
        if cfg.model.freeze_backbone:
            if world > 1:
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
        # Linear scaling on the GLOBAL batch, so the same command gives the same schedule on
        # any number of processes.
        self.lr = cfg.optim.lr * cfg.train.batch_size / 256
        self.optimizer = build_optimizer(
            self.model,
            cfg.optim.optimizer,
            self.lr,
            cfg.optim.weight_decay,
            cfg.optim.momentum,
            cfg.optim.exclude_norm_bias,
            fused=self.device.type == "cuda",
        )
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
        self.total_steps = cfg.train.epochs * self.steps_per_epoch
        self.warmup_steps = int(round(cfg.optim.warmup_epochs * self.steps_per_epoch))
        self.state = RunState()
        self._maybe_resume()
        self.net = self._wrap(MultiCropForward(self.model))
        self._stop_signal: int | None = None  # set by the handler, on this rank only
        self._stopping = False  # agreed by all ranks at a step boundary

    # -- setup helpers

    def _prepare_output(self) -> None:
        if not self.main:
            return
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            probe = self.out / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise TrainingError(
                f"output directory '{self.out}' is not writable "
                f"({e.strerror or e}); pass --out to a writable directory"
            ) from None
        (self.out / "config.yaml").write_text(to_yaml(self.cfg))

    def _record_skipped(self) -> None:
        skipped = getattr(self.dataset, "skipped", [])
        if skipped and self.main:
            with open(self.out / "skipped.txt", "w", encoding="utf-8", errors="replace") as f:
                for path, reason in skipped:
                    f.write(f"{path}\t{reason}\n")
            self.log(
                f"warning: skipped {len(skipped)} unreadable image(s), listed in "
                f"{self.out / 'skipped.txt'}"
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

    def _maybe_resume(self) -> None:
        """Load ``resume_from`` or OUT/checkpoint.pt when present, on every rank alike.

        Every rank reads the same file (OUT must be on a filesystem all nodes share), so all
        start from identical weights, optimiser state, queue and position; the checkpoint's
        process count does not matter (positions count global batches).
        """
        path = self.resume_from or self.checkpoint_path
        seen = dist.gather_object(path.is_file())
        if any(seen) and not all(seen):
            missing = [r for r, ok in enumerate(seen) if not ok]
            raise TrainingError(
                f"checkpoint '{path}' is visible to some processes but not to ranks {missing}; "
                "put --out (and --resume) on a filesystem every node shares"
            )
        if not seen[0]:
            return
        ckpt = load_checkpoint(path, map_location=self.device)
        if "state" not in ckpt or "optimizer" not in ckpt:
            raise CheckpointError(
                f"'{path}' holds model weights only (a converted or exported model), not a "
                "training run to resume; start a new run with --init-backbone it instead"
            )
        load_state(self.model, ckpt["model"], str(path))
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(
                f"optimizer state in '{path}' does not match the config "
                f"({e}); resume with the settings it was saved with"
            ) from None
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.queue is not None and ckpt.get("queue") is not None:
            self.queue.load_state_dict(ckpt["queue"])
        s = ckpt["state"]
        self.state = RunState(
            int(s["epoch"]),
            int(s["step"]),
            int(s["global_step"]),
            int(s.get("skipped_steps", 0)),
            list(s.get("history", [])),
        )
        if "torch_rng" in ckpt:
            torch.set_rng_state(ckpt["torch_rng"].cpu())
        if self.state.step >= self.steps_per_epoch:  # saved at an epoch end by an older layout
            self.state.epoch, self.state.step = self.state.epoch + 1, 0
        self.log(f"resuming from {path}: epoch {self.state.epoch}, step {self.state.step}")

    # -- checkpoints

    def checkpoint(self) -> dict:
        return {
            "format": FORMAT,
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "queue": self.queue.state_dict() if self.queue is not None else None,
            "state": {
                "epoch": self.state.epoch,
                "step": self.state.step,
                "global_step": self.state.global_step,
                "skipped_steps": self.state.skipped_steps,
                "history": self.state.history,
            },
            "torch_rng": torch.get_rng_state(),
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
        if self.main:
            save_atomic(self.checkpoint(), self.checkpoint_path)
        dist.barrier()

    # -- logging

    def _log_metrics(self, record: dict) -> None:
        if self.main:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    # -- signals

    @contextlib.contextmanager
    def _signals(self):
        """SIGTERM / SIGINT ask the loop to checkpoint and stop at the next step boundary."""

        def ask_stop(signum, frame):
            self._stop_signal = signum

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
        cfg, state = self.cfg, self.state
        self.net.train()
        progress = _Progress(
            self.steps_per_epoch, epoch, cfg.train.epochs, self.main, start=state.step
        )
        losses = []
        t_last, seen = time.perf_counter(), 0
        for views in self.source.epoch(epoch, start_step=state.step):
            lr = cosine_lr(
                state.global_step,
                self.total_steps,
                self.warmup_steps,
                self.lr,
                cfg.optim.min_lr * cfg.train.batch_size / 256,
            )
            set_lr(self.optimizer, lr)
            if self.device.type == "cuda" and cfg.train.channels_last and views[0].dim() == 4:
                views = [v.contiguous(memory_format=torch.channels_last) for v in views]
            with torch.autocast(
                self.device.type,
                dtype=self.amp_dtype or torch.float32,
                enabled=self.amp_dtype is not None,
            ):
                logits, first = self.net(views, self.queue)
                loss = self.loss_fn(logits)
            # Skipping or stopping changes the control flow: all ranks decide together.
            nonfinite, stop = dist.any_rank(
                not bool(torch.isfinite(loss)), self._stop_signal is not None, device=self.device
            )
            self._stopping = self._stopping or stop
            if nonfinite:
                self._skip_nonfinite()
                if self._stopping:
                    break
                continue
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if cfg.optim.clip_grad > 0:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.clip_grad)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.queue is not None and epoch >= cfg.train.queue_start_epoch:
                self.queue.push_global(first.float())
            state.step += 1
            state.global_step += 1
            seen += views[0].shape[0] * dist.world_size()
            losses.append(loss.detach())
            if state.step % cfg.train.log_every == 0 or state.step == self.steps_per_epoch:
                now = time.perf_counter()
                record = self._step_record(epoch, lr, losses[-1], logits, seen / (now - t_last))
                t_last, seen = now, 0
                progress.update(state.step, record)
            if (
                cfg.train.checkpoint_every_steps
                and state.global_step % cfg.train.checkpoint_every_steps == 0
            ):
                self.save()
            if self._stopping:
                break
        progress.close()
        mean_loss = float(dist.all_reduce_mean(torch.stack(losses).mean())) if losses else math.nan
        return {"epoch": epoch, "loss": mean_loss}

    def _skip_nonfinite(self) -> None:
        """A non-finite loss on some rank: count a skipped step, or stop with advice."""
        if self.cfg.train.skip_nonfinite:
            self.state.skipped_steps += 1
            self.state.step += 1
            self.state.global_step += 1
            return
        raise TrainingError(
            f"non-finite loss at epoch {self.state.epoch} step {self.state.step}; the last good "
            f"checkpoint {self.checkpoint_path} is untouched: resume from it with a lower "
            "--set optim.lr=..., gradient clipping (--set optim.clip_grad=1.0), "
            "--set train.precision=fp32, or --set train.skip_nonfinite=true"
        )

    def _step_record(self, epoch, lr, loss, logits, img_per_s) -> dict:
        classes = int(torch.unique(logits[0][0].argmax(1)).numel())
        record = {
            "epoch": epoch,
            "step": self.state.step,
            "global_step": self.state.global_step,
            "loss": float(dist.all_reduce_mean(loss.float())),
            "lr": lr,
            "img_per_s": round(img_per_s, 1),
            "active_classes": classes,
        }
        self._log_metrics(record)
        return record

    # -- evaluation during and after training

    def evaluate(self, batch_size: int = 512) -> list[dict] | None:
        """Each head's NMI/AMI/ARI/ACC on the training data (when it has labels)."""
        if not is_labelled(self.dataset):
            return None
        if isinstance(self.source, CachedFeatureSource):
            out = self.source.outputs(self.model, self.cfg.loss.row_tau)
        else:
            loader = eval_loader(
                self.dataset, self.cfg.augment, self.channels, batch_size, self.cfg.data.workers
            )
            out = run_model(self.model, loader, self.device, self.cfg.loss.row_tau)
        return [
            head_metrics(out.labels.numpy(), p.argmax(1).numpy(), p.shape[1]) for p in out.probs
        ]

    # -- the whole run

    def fit(self) -> dict:
        cfg, state = self.cfg, self.state
        if self.main:
            self.log(
                f"training on {self.device} ({dist.world_size()} process(es)): "
                f"{len(self.dataset)} images, {self.steps_per_epoch} steps/epoch, "
                f"pipeline {self.source.pipeline}, precision "
                f"{self.amp_dtype or torch.float32}"
            )
        if isinstance(self.source, CachedFeatureSource):
            self.source.load()  # before the epoch timer: epochs then measure training alone
        with self._signals():
            while state.epoch < cfg.train.epochs:
                epoch = state.epoch
                t0 = time.perf_counter()
                summary = self.train_one_epoch(epoch)
                if self._stopping and state.step < self.steps_per_epoch:
                    self.save()
                    name = signal.Signals(self._stop_signal or signal.SIGTERM).name
                    raise Interrupted(
                        f"received {name}: checkpoint saved at epoch {epoch} step "
                        f"{state.step}; run the same command to resume"
                    )
                state.epoch, state.step = epoch + 1, 0
                summary["seconds"] = round(time.perf_counter() - t0, 2)
                if cfg.train.eval_every and (epoch + 1) % cfg.train.eval_every == 0 and self.main:
                    summary["heads"] = self.evaluate()
                state.history.append({k: v for k, v in summary.items() if k != "heads"})
                self._log_metrics({"epoch_end": epoch, **summary})
                self.save()
                if self._stopping:
                    raise Interrupted(
                        "received a stop signal: checkpoint saved; run the same command to resume"
                    )
        return self.finish()

    def finish(self) -> dict:
        result = {"heads": self.evaluate()} if self.main else {}
        if self.main and result["heads"] is not None:
            with open(self.out / "eval.json", "w") as f:
                json.dump(result, f, indent=2)
        return result


class Interrupted(RuntimeError):
    """A stop signal arrived; the checkpoint is saved."""


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


def format_table(heads: list[dict]) -> str:
    cols = ["classes", "nmi", "ami", "ari", "acc", "acc_many_to_one"]
    lines = [
        "head  " + "  ".join(f"{c:>15}" if c == "acc_many_to_one" else f"{c:>7}" for c in cols)
    ]
    for i, h in enumerate(heads):
        cells = []
        for c in cols:
            v = h.get(c)
            w = 15 if c == "acc_many_to_one" else 7
            cells.append(
                f"{'-':>{w}}"
                if v is None
                else (f"{v:>{w}d}" if isinstance(v, int) else f"{v:>{w}.4f}")
            )
        lines.append(f"{i:>4}  " + "  ".join(cells))
    return "\n".join(lines)


def fit(
    cfg: Config,
    out_dir: str | os.PathLike,
    log=print,
    resume_from: str | os.PathLike | None = None,
) -> dict:
    """Train (resuming from ``resume_from`` or OUT/checkpoint.pt if present) and evaluate.

    Returns the evaluation results on rank 0 (``{}`` on other ranks). Under torchrun every
    process calls this; the process group is joined here and left on the way out.
    """
    try:
        return Trainer(cfg, out_dir, log, resume_from).fit()
    finally:
        dist.shutdown()


__all__ = ["Trainer", "fit", "MultiCropForward", "local_batches", "epoch_order", "F"]
