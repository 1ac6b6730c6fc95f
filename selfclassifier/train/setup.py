"""Run set-up: the device, autocast precision, seeds, the world size, reading the dataset,
preparing OUT and wrapping the network for data parallelism and compilation."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from selfclassifier import dist
from selfclassifier.config import Config, ConfigError, to_yaml
from selfclassifier.data import UnreadableImageWarning, build_dataset
from selfclassifier.dist import resolve_device as resolve_device  # the trainer's device
from selfclassifier.errors import printable
from selfclassifier.storage import remove_stale_temporaries, write_text_atomic
from selfclassifier.train.guards import lock_output


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX): there bf16 autocast
    made the Fashion-MNIST preset's step 1.5-2.4x faster (docs/PERFORMANCE.md); elsewhere
    oneDNN emulates bf16 and it is slower than float32."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 on CUDA devices that support it, fp32 on CPU. ``native_bf16``: bf16 wherever
    the device computes it in hardware (those CUDA devices, and CPUs with AVX512-BF16 or AMX)."""
    if precision in ("auto", "native_bf16"):
        if device.type == "cuda":
            native = torch.cuda.is_bf16_supported()
        else:
            native = precision == "native_bf16" and device.type == "cpu" and cpu_has_native_bf16()
        precision = "bf16" if native else "fp32"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_world_size(batch_size: int) -> None:
    """The global batch must split evenly; checked from the launcher's env before joining."""
    world = max(dist.world_size(), int(os.environ.get("WORLD_SIZE", "1") or 1))
    if batch_size % world:
        raise ConfigError(
            f"train.batch_size={batch_size} (the global batch) does not divide across "
            f"{world} processes; use a multiple of {world}"
        )


def read_dataset(cfg: Config):
    """The dataset ``cfg.data`` names, with skipped-file warnings gathered into one line
    (see :func:`record_skipped`)."""
    mode = "L" if cfg.data.grayscale else "RGB"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreadableImageWarning)
        return build_dataset(cfg.data.path, cfg.data.split, mode=mode, strict=cfg.data.strict)


def prepare_output(out: Path, cfg: Config, checkpoint: Path, log: Callable[[str], None]):
    """Create OUT, lock it, clear a killed run's partial checkpoint, write config.yaml.
    Returns the lock (held while the process lives). Main process only."""
    out.mkdir(parents=True, exist_ok=True)
    lock = lock_output(out)
    for tmp in remove_stale_temporaries(checkpoint):
        log(f"note: removed {tmp.name}, a partial checkpoint left by a killed run")
    write_text_atomic(out / "config.yaml", to_yaml(cfg))
    return lock


def record_skipped(dataset, out: Path, log: Callable[[str], None]) -> None:
    """OUT/skipped.txt lists the unreadable files the scan left out (one warning line says
    so), or is removed: a stale list from an earlier run would mislead. Main process only."""
    skipped = getattr(dataset, "skipped", [])
    path = out / "skipped.txt"
    if not skipped:
        path.unlink(missing_ok=True)
        return
    lines = "".join(f"{printable(p)}\t{printable(r)}\n" for p, r in skipped)
    write_text_atomic(path, lines)
    log(f"warning: skipped {len(skipped)} unreadable image file(s); they are listed in {path}")


def wrap_network(net: nn.Module, cfg: Config, device: torch.device) -> nn.Module:
    """channels_last, DistributedDataParallel under torchrun, then torch.compile."""
    if cfg.train.channels_last:
        net = net.to(memory_format=torch.channels_last)
    net = dist.data_parallel(net, device, sync_bn=cfg.model.sync_bn)
    if cfg.train.compile:
        net = torch.compile(net)
    return net
