"""What the main process shows and writes as a run goes: the progress bar and metrics.jsonl
(plus TensorBoard when asked)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


class Progress:
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


class MetricsLog:
    """OUT/metrics.jsonl, one JSON record per logged step and epoch, mirrored to TensorBoard
    when a board is given. Silent on other ranks (``enabled`` False)."""

    def __init__(self, path: Path, enabled: bool, board=None):
        self.path, self.enabled, self.board = path, enabled, board

    def write(self, record: dict, global_step: int) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.board is not None:
            self.board.write(record, global_step)

    def close(self) -> None:
        if self.board is not None:
            self.board.close()
