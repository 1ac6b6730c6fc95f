"""The run's checkpoint: ``RunCheckpoint`` alone finds, reads, restores and writes
OUT/checkpoint.pt; the training loop only says when.

A checkpoint holds everything needed to continue bitwise (model, optimiser, scaler, NN
queue, counters, RNG states) as tensors, numbers, strings, lists and dicts only, so it
loads with ``weights_only=True``. Writes are atomic and fsynced (``storage.save_atomic``):
a run killed at any instant leaves the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from selfclassifier import dist
from selfclassifier.config import LEGACY_VALUES, Config
from selfclassifier.errors import CheckpointError, TrainingError, first_line
from selfclassifier.model.build import load_state
from selfclassifier.storage import (
    FORMAT,
    DataRecord,
    load_checkpoint,
    save_atomic,
    write_text_atomic,
)
from selfclassifier.train.guards import injected_fault, kill_self


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

    def to_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "global_step": self.global_step,
            "skipped_steps": self.skipped_steps,
            "history": self.history,
            "epoch_loss_sum": self.epoch_loss_sum,
            "epoch_loss_steps": self.epoch_loss_steps,
            "selection_loss": self.selection_loss,
        }

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


class RunCheckpoint:
    """OUT/checkpoint.pt of one run: which file to resume, restoring from it, saving to it.

    ``saved_at`` is the (epoch, step) of the file on disk, for error messages that say what
    is kept.
    """

    def __init__(self, out: Path, cfg: Config, log: Callable[[str], None] = print):
        self.out, self.cfg, self.log = Path(out), cfg, log
        self.path = self.out / "checkpoint.pt"
        self.saved_at: tuple[int, int] | None = None
        self.fault = injected_fault()

    def find(self, resume_from: str | os.PathLike | None) -> Path | None:
        """OUT/checkpoint.pt when it exists (a restarted run), else ``resume_from``.

        OUT's own checkpoint wins: it is the newest state of this run, and restarting the
        same command (``--resume other.pt`` included) after a kill must not go back in time.
        """
        if visible_to_all_ranks(self.path):
            if resume_from is not None and Path(resume_from).resolve() != self.path.resolve():
                self.log(
                    f"note: {self.path} exists and is newer work of this run; "
                    f"resuming from it, not from {resume_from}"
                )
            return self.path
        if resume_from is None:
            return None
        if not visible_to_all_ranks(Path(resume_from)):
            raise CheckpointError(f"--resume: checkpoint '{resume_from}' not found")
        return Path(resume_from)

    def read(self, path: Path) -> dict:
        """The checkpoint at ``path``, refused in one line unless it is a run this config can
        continue. Runs before any data is read, so a wrong ``--out`` fails at once."""
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

    def restore(
        self,
        ckpt: dict,
        path: Path,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        queue: nn.Module | None,
        device: torch.device,
    ) -> RunState:
        """Put model, optimiser, scaler, queue and RNGs back as saved; returns the counters."""
        load_state(model, ckpt["model"], str(path))
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
            if ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            if queue is not None and ckpt.get("queue") is not None:
                queue.load_state_dict(ckpt["queue"])
            state = RunState.from_dict(ckpt["state"])
        except (ValueError, KeyError, RuntimeError, TypeError) as e:
            raise CheckpointError(
                f"training state in '{path}' does not match this run ({first_line(e)}); "
                "resume with the settings it was saved with"
            ) from None
        if isinstance(ckpt.get("torch_rng"), torch.Tensor):
            torch.set_rng_state(ckpt["torch_rng"].cpu())
        cuda_rng = ckpt.get("cuda_rng")
        if device.type == "cuda" and cuda_rng and len(cuda_rng) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([t.cpu() for t in cuda_rng])
        threads = int(ckpt.get("num_threads", torch.get_num_threads()))
        if self.cfg.train.deterministic and threads != torch.get_num_threads():
            self.log(
                f"note: {path} was written with {threads} CPU threads, this process uses "
                f"{torch.get_num_threads()}; results will not be bitwise identical to an "
                "uninterrupted run (set OMP_NUM_THREADS to match)"
            )
        self.saved_at = (state.epoch, state.step)
        if dist.is_main_process():
            trim_metrics(self.out / "metrics.jsonl", state)
        self.log(f"resuming from {path}: epoch {state.epoch}, step {state.step}")
        return state

    def contents(
        self,
        state: RunState,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        queue: nn.Module | None,
        data: DataRecord,
        device: torch.device,
    ) -> dict:
        """Everything needed to continue bitwise: tensors, numbers, strings, lists, dicts only."""
        return {
            "format": FORMAT,
            "config": self.cfg.to_dict(),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "queue": queue.state_dict() if queue is not None else None,
            "state": state.to_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
            "num_threads": torch.get_num_threads(),
            "data": data.to_dict(),
            "world_size": dist.world_size(),
        }

    def save(self, contents: Callable[[], dict], state: RunState) -> None:
        """Atomically replace the file with ``contents()`` (built on the main process only);
        every rank returns once it is on disk."""
        if dist.is_main_process():
            hook = kill_self if self.fault == (state.global_step, "save") else None
            save_atomic(contents(), self.path, before_replace=hook)
        self.saved_at = (state.epoch, state.step)
        dist.barrier()

    def last_good(self) -> str:
        """What an error message says about the file on disk."""
        if self.saved_at is None:
            return f"no checkpoint was written yet, so {self.path} is absent"
        epoch, step = self.saved_at
        return f"the last good checkpoint {self.path} (epoch {epoch}, step {step}) is kept"


# Settings a resumed run must share with its checkpoint: they shape the tensors in it.
RESUME_KEYS = (
    ("model", "backbone"),
    ("model", "heads"),
    ("model", "hidden_dim"),
    ("model", "out_dim"),
    ("model", "head_projection"),
    ("model", "mlp_layers"),
    ("model", "batch_norm"),
    ("model", "activation"),
    ("model", "freeze_heads"),
    ("model", "head_norm"),
    ("model", "head_scale"),
    ("optim", "optimizer"),
    ("optim", "exclude_norm_bias"),
    ("optim", "no_bias_wd"),
    ("train", "queue_size"),
)


def check_compatible(ckpt: dict, cfg: Config, source: str) -> None:
    """Refuse, in one line, a checkpoint whose architecture or optimiser differs from ``cfg``.

    Runs before any data is read, so a wrong ``--out`` or ``--resume`` fails at once.
    """
    saved = ckpt.get("config")
    if not isinstance(saved, dict):
        raise CheckpointError(f"checkpoint '{source}' holds no config; it cannot be resumed")
    now = cfg.to_dict()
    for section, key in RESUME_KEYS:
        # A key the checkpoint predates means what it meant then (config.LEGACY_VALUES).
        default = LEGACY_VALUES.get((section, key), now[section][key])
        old = (saved.get(section) or {}).get(key, default)
        if old != now[section][key]:
            raise CheckpointError(
                f"checkpoint '{source}' was trained with {section}.{key}={old!r} but this run "
                f"asks for {section}.{key}={now[section][key]!r}; use the settings it was "
                "trained with, or another --out to start a new run"
            )


def trim_metrics(path: Path, state: RunState) -> None:
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


def visible_to_all_ranks(path: Path) -> bool:
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
