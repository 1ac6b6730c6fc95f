"""The training loop: ``Trainer`` builds a run, ``train_one_epoch`` and ``train_step`` are the
loop, ``fit`` drives it.

Read top to bottom: check cheap things, read the data, build model, queue, loss, optimiser
and the view source; resume if OUT holds a checkpoint; then per step: views -> multi-crop
forward (NN queue swap of view 0) -> loss -> backward -> step -> queue push. Every epoch
(and every ``checkpoint_every_steps``) ``RunCheckpoint`` writes the full state atomically to
OUT/checkpoint.pt, so a killed run restarted with the same command continues where it was.
The guards (signals, non-finite values, lock, fault injection), the monitor and head
selection live in their own modules; the loop only says when.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from selfclassifier import dist
from selfclassifier.config import Config, ConfigError
from selfclassifier.data import TensorImageDataset, dataset_targets
from selfclassifier.errors import first_line
from selfclassifier.heads import mark_selection
from selfclassifier.inference import dataset_channels
from selfclassifier.interop.pretrained import load_backbone_weights
from selfclassifier.loss import SelfClassifierLoss
from selfclassifier.model.backbones import check_backbone, enable_activation_checkpointing
from selfclassifier.model.build import build_model
from selfclassifier.optim import build_optimizer, lr_schedule, set_lr
from selfclassifier.queue import NNQueue
from selfclassifier.storage import DataRecord, check_writable, write_text_atomic
from selfclassifier.train.checkpoint import RunCheckpoint, RunState, trim_metrics
from selfclassifier.train.features import CachedFeatureSource
from selfclassifier.train.forward import MultiCropForward
from selfclassifier.train.guards import (
    RECOVERY_HINT,
    Interrupted,
    NonFiniteGuard,
    StopSignals,
    TrainingError,
    first_nonfinite,
    injected_fault,
    kill_self,
)
from selfclassifier.train.monitor import TrainingScores, monitor_line
from selfclassifier.train.progress import MetricsLog, Progress
from selfclassifier.train.selection import selection_losses, selection_summary
from selfclassifier.train.setup import (
    autocast_dtype,
    check_world_size,
    prepare_output,
    read_dataset,
    record_skipped,
    resolve_device,
    seed_everything,
    wrap_network,
)
from selfclassifier.train.tensorboard import MetricsBoard, require_tensorboard
from selfclassifier.views import ViewSource, eval_side


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
        self._fault = injected_fault()  # the crash tests' SIGKILL point, else None
        self._lock = None  # OUT/.lock, held while this process trains into OUT
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
        self.checkpoints = RunCheckpoint(self.out, cfg, self.log)
        resume = self.checkpoints.find(resume_from)
        ckpt = self.checkpoints.read(resume) if resume is not None else None
        if self.main:
            check_writable(self.out)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        seed_everything(cfg.train.seed)

        self.dataset = read_dataset(cfg) if dataset is None else dataset
        if len(self.dataset) < cfg.train.batch_size:
            raise ConfigError(
                f"train.batch_size={cfg.train.batch_size} exceeds the "
                f"{len(self.dataset)} images in '{cfg.data.path}'; lower --batch-size"
            )
        self.channels = dataset_channels(self.dataset)
        in_memory = isinstance(self.dataset, TensorImageDataset)
        self.data_record = DataRecord(
            channels=self.channels,
            image_size=self.dataset.image_size if in_memory else cfg.augment.global_size,
            classes=tuple(getattr(self.dataset, "classes", None) or ()),
            num_samples=len(self.dataset),
            in_memory=in_memory,
        )
        if self.main:
            self._lock = prepare_output(self.out, cfg, self.checkpoints.path, self.log)
            record_skipped(self.dataset, self.out, self.log)

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
            NNQueue(cfg.train.queue_size, self.model.embed_dim).to(self.device)
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
        if cfg.model.freeze_backbone:
            self.source = CachedFeatureSource(
                self.dataset, cfg, self.channels, self.model.backbone, self.device,
                self.amp_dtype, self.out / "features.pt", self.log,
            )  # fmt: skip
        else:
            self.source = ViewSource(self.dataset, cfg, self.channels, self.device)
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
            self.state = self.checkpoints.restore(
                ckpt, resume, self.model, self.optimizer, self.scaler, self.queue, self.device
            )
        elif self.main:  # records of an attempt killed before its first checkpoint are void
            trim_metrics(self.out / "metrics.jsonl", self.state)
        self.net = wrap_network(
            MultiCropForward(self.model, heads_fp32=cfg.train.head_precision == "fp32"),
            cfg,
            self.device,
        )
        self.signals = StopSignals()
        self._stopping = False  # agreed by all ranks at a step boundary
        self.nonfinite = NonFiniteGuard(self.device)
        self.scores = TrainingScores(cfg, self.dataset, self.channels, self.device, self.source)
        board = (  # after the restore: a resumed run continues its curves from its step
            MetricsBoard(self.out / "tensorboard", self.state.global_step)
            if cfg.train.tensorboard and self.main
            else None
        )
        self.metrics = MetricsLog(self.out / "metrics.jsonl", self.main, board)

    # -- one epoch, one step

    def train_one_epoch(self, epoch: int) -> dict:
        """Steps ``state.step..`` of ``epoch``; stops early (state kept) on a stop signal.

        Returns ``{"epoch", "loss"}``, the loss being the epoch's mean so far."""
        cfg, state = self.cfg, self.state
        self.net.train()
        progress = Progress(self.steps_per_epoch, epoch, cfg.train.epochs, self.main, state.step)
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
            if self._fault == (state.global_step, "step"):  # crash tests only
                kill_self()
            if save_now:
                self.save()
            if self._agree_to_stop(log_now or save_now):
                break
        progress.close()
        self._check_finite()
        return {"epoch": epoch, "loss": self._epoch_mean_loss()}

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
        at the next log point or checkpoint (``NonFiniteGuard``), before anything is saved.
        Exceptions: fp16's GradScaler (it skips such steps itself), and
        ``train.skip_nonfinite``, which must know before stepping (all ranks decide together).
        """
        cfg, state = self.cfg, self.state
        set_lr(self.optimizer, lr)
        if cfg.train.channels_last and views[0].dim() == 4:
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
        self.nonfinite.flag(loss, state.global_step, 0)
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
                self.nonfinite.flag(norm, state.global_step, 1)
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

    # -- the whole run

    def fit(self) -> dict:
        try:
            return self._fit()
        finally:
            self.source.close()  # stop the loader's persistent workers
            self.metrics.close()

    def _fit(self) -> dict:
        cfg, state = self.cfg, self.state
        if isinstance(self.source, CachedFeatureSource):
            self.source.load()  # before the epoch timer: epochs then measure training alone
        with self.signals.installed():
            self.log(
                f"training on {self.device} ({dist.world_size()} process(es)): "
                f"{len(self.dataset)} images, {self.steps_per_epoch} steps/epoch, "
                f"pipeline {self.source.pipeline}, precision {self.amp_dtype or torch.float32}"
            )
            while state.epoch < cfg.train.epochs:
                epoch, t0 = state.epoch, time.perf_counter()
                if state.step < self.steps_per_epoch:
                    self._train_epoch_guarded(epoch)
                if self._stopping:
                    self.save()
                    signum = self.signals.received or signal.SIGTERM  # a rank without it
                    raise Interrupted(
                        signum,
                        f"received {signal.Signals(signum).name}: checkpoint saved at "
                        f"epoch {state.epoch} step {state.step}; run the same command to resume",
                    )
                self._end_epoch(epoch, t0)
        if state.skipped_steps:
            self.log(
                f"note: skipped {state.skipped_steps} step(s) with a non-finite loss or "
                "gradient (train.skip_nonfinite)"
            )
        return self.finish()

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
            summary.update(self.scores.record(self.model))
            line = monitor_line(epoch, summary)
            if line is not None:
                self.log(line)
        state.history.append({k: v for k, v in summary.items() if k != "heads"})
        self.metrics.write({"epoch_end": epoch, **summary}, state.global_step)
        state.epoch, state.step = epoch + 1, 0
        state.epoch_loss_sum, state.epoch_loss_steps = 0.0, 0
        state.selection_loss = []  # the weights changed: scored again when training ends
        self._loss_sum = None
        self.save()

    def selection_losses(self) -> list[float] | None:
        """Each head's label-free selection loss (``train/selection.py``), or None."""
        return selection_losses(
            self.net, self.source, self.cfg, self.model.num_classes, self.device, self.amp_dtype
        )

    def finish(self) -> dict:
        """Score the candidate heads, then each head on the training data (eval.json)."""
        losses = self.selection_losses()
        if losses is not None and losses != self.state.selection_loss:
            self.state.selection_loss = losses  # evaluate, report, predict and load() read it
            self.save()
        if losses is not None:
            record, line = selection_summary(self.model.num_classes, losses)
            self.metrics.write({"head_selection": record}, self.state.global_step)
            self.log(line)
        result = {"heads": self.scores.heads(self.model)} if self.main else {}
        if self.main and result["heads"] is not None:
            if losses is not None:
                mark_selection(result["heads"], self.model.num_classes, losses)
            data = self.cfg.data
            result["data"] = {
                "path": data.path,
                "split": data.split,
                "samples": len(self.dataset),
                "input_size": eval_side(self.cfg.augment),
            }
            write_text_atomic(self.out / "eval.json", json.dumps(result, indent=2))
        return result

    # -- checkpoints

    def save(self) -> None:
        """Atomically replace OUT/checkpoint.pt, never with non-finite weights."""
        self._check_finite()
        bad = first_nonfinite(self.model)
        if dist.any_rank(bad is not None, device=self.device)[0]:
            raise TrainingError(
                f"'{bad or 'a tensor on another rank'}' became non-finite by epoch "
                f"{self.state.epoch} step {self.state.step}; {self.checkpoints.last_good()}, "
                f"not overwritten: rerun the same command with {RECOVERY_HINT}"
            )
        self.checkpoints.save(self._contents, self.state)

    def _contents(self) -> dict:
        if self._loss_sum is not None:
            self.state.epoch_loss_sum = float(self._loss_sum)
        return self.checkpoints.contents(
            self.state, self.model, self.optimizer, self.scaler, self.queue, self.data_record,
            self.device,
        )  # fmt: skip

    # -- bookkeeping

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
                f"({first_line(e)}); {self.checkpoints.last_good()}: rerun the same command "
                "to resume (fewer --workers if memory is short)"
            ) from None

    def _agree_to_stop(self, boundary: bool) -> bool:
        """Whether all ranks stop here (a stop signal reached any of them).

        One process decides from a host flag at every step. Several agree through a
        collective, which waits for the device, so they do it only at log and checkpoint
        steps: the same steps on every rank.
        """
        if dist.world_size() == 1 or boundary:
            (stop,) = dist.any_rank(self.signals.received is not None, device=self.device)
            self._stopping = self._stopping or stop
        return self._stopping

    def _check_finite(self) -> None:
        self.nonfinite.check(self.steps_per_epoch, self.checkpoints.last_good())

    def _skip(self, value: torch.Tensor) -> bool:
        """``train.skip_nonfinite``: whether any rank saw a non-finite ``value`` (counted)."""
        skip = self.nonfinite.skip(value)
        if skip:
            self.state.skipped_steps += 1
        return skip

    def _epoch_mean_loss(self) -> float:
        """Mean loss of this epoch's updated steps so far, averaged over ranks."""
        steps = self.state.epoch_loss_steps
        total = self._loss_sum if self._loss_sum is not None else self.state.epoch_loss_sum
        total = torch.as_tensor(total, dtype=torch.float32, device=self.device)
        local = total / steps if steps else torch.tensor(math.nan, device=self.device)
        return float(dist.all_reduce_mean(local))

    def _count_nn_hits(self, nn_labels: torch.Tensor, labels: torch.Tensor) -> None:
        """The authors' NN-accuracy monitor: how often the neighbour shares the query's label
        (only where both are known); kept on the device until the next log step."""
        known = (labels >= 0) & (nn_labels >= 0)
        step = torch.stack([((nn_labels == labels) & known).sum(), known.sum()]).float()
        self._nn_hits = step if self._nn_hits is None else self._nn_hits + step

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
        self.metrics.write(record, self.state.global_step)
        return record


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
