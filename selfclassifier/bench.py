"""Benchmarks that return JSON-ready dicts (the CLI prints them); never timed tests.

* ``make_images``: a folder of realistic JPEGs (about 500x375, smooth content plus noise,
  ~60 KB each, like ImageNet's) so anyone can rerun the input-pipeline figures.
* ``bench_data``: images/s the input pipeline delivers to the training device (decode,
  augmentation and, for ``fast``, the batched device stage), with no model.
* ``bench_train``: end-to-end training steps/s with the real loader (or in-memory synthetic
  images), median step time, peak device memory and the fraction of time spent waiting for
  data.

Timings start after warm-up batches so worker start-up and one-off allocations are excluded.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from selfclassifier.config import Config, ConfigError, load_config
from selfclassifier.data.arrays import TensorImageDataset
from selfclassifier.data.sources import build_dataset
from selfclassifier.inference import dataset_channels
from selfclassifier.train.loop import Trainer
from selfclassifier.train.setup import resolve_device
from selfclassifier.views.source import ViewSource


def _smooth_image(rng: np.random.Generator, width: int, height: int, noise: float) -> Image.Image:
    """Blobs and low-frequency waves of random colours plus pixel noise: natural-ish spectra."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.zeros((height, width, 3), np.float32) + rng.uniform(40, 200, 3)
    for _ in range(12):
        cx, cy, s = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(20, 150)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * s * s))
        out += rng.uniform(-120, 120, 3) * blob[..., None]
    for _ in range(4):
        fx, fy = rng.uniform(-0.05, 0.05, 2)
        wave = np.cos(fx * x + fy * y + rng.uniform(0, 2 * np.pi))
        out += rng.uniform(-30, 30, 3) * wave[..., None]
    out += rng.normal(0, noise, out.shape)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def _write_image(path: Path, seed: int, index: int, size, quality: int, noise: float) -> int:
    rng = np.random.default_rng([seed, index])  # each image on its own: any worker count
    _smooth_image(rng, size[0], size[1], noise).save(path, "JPEG", quality=quality)
    return path.stat().st_size


def make_images(
    out_dir: str | os.PathLike,
    n: int = 256,
    seed: int = 0,
    size: tuple[int, int] = (500, 375),
    quality: int = 90,
    noise: float = 10.0,
    workers: int = 1,
) -> dict:
    """Write ``n`` JPEGs to ``out_dir`` (flat); returns {"dir", "images", "mean_kb"}.

    The same (n, seed) gives the same files whatever ``workers`` (processes) is.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(out / f"img_{i:05d}.jpg", seed, i, size, quality, noise) for i in range(n)]
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            sizes = list(pool.map(_write_image, *zip(*jobs, strict=True), chunksize=8))
    else:
        sizes = [_write_image(*job) for job in jobs]
    return {"dir": str(out), "images": n, "mean_kb": round(sum(sizes) / max(n, 1) / 1e3, 1)}


def _machine() -> str:
    return f"{platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _repeat_epochs(source: ViewSource):
    epoch = 0
    while True:
        yield from source.epoch(epoch)
        epoch += 1


def bench_data(
    images: str,
    pipeline: str,
    workers: int,
    recipe: str = "imagenet",
    batch_size: int = 32,
    batches: int = 16,
    warmup: int = 2,
    device: str = "auto",
) -> dict:
    """Views/s (counted in images) the ``pipeline`` delivers on ``device``, without a model.

    The first ``warmup`` batches (worker start-up, first allocations) are not timed; then
    ``batches`` batches of ``batch_size`` images are, cycling over the folder as needed.
    """
    overrides = {
        "data": {"path": images, "workers": workers},
        "augment": {"pipeline": pipeline},
        "train": {"batch_size": batch_size, "device": device},
    }
    cfg = load_config(recipe, overrides)
    dev = resolve_device(cfg.train.device)
    ds = build_dataset(images, "all", mode="L" if cfg.data.grayscale else "RGB")
    if len(ds) < batch_size:
        raise ConfigError(
            f"--batch-size {batch_size} exceeds the {len(ds)} images in '{images}'; "
            "lower --batch-size or add images (selfclassifier bench make-images)"
        )
    source = ViewSource(ds, cfg, dataset_channels(ds), dev)
    stream = _repeat_epochs(source)
    for _ in range(warmup):
        next(stream)
    _sync(dev)
    start = time.perf_counter()
    for _ in range(batches):
        next(stream)
    _sync(dev)
    seconds = time.perf_counter() - start
    source.close()  # its workers would go on prefetching into the next measurement
    rate = batches * batch_size / seconds
    return {
        "pipeline": source.pipeline,
        "workers": workers,
        "images": batches * batch_size,
        "images_per_s": round(rate, 1),
        "images_per_s_per_worker": round(rate / max(workers, 1), 1),
        "recipe": recipe,
        "batch_size": batch_size,
        "device": _device_name(dev),
        "torch_threads": torch.get_num_threads(),
    }


def _synthetic_dataset(n: int, size: int = 256, seed: int = 0) -> TensorImageDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    return TensorImageDataset(images, torch.full((n,), -1, dtype=torch.long), name="synthetic")


def _fill_queue(trainer: Trainer) -> None:
    """Fill the NN queue so every timed step pays for the nearest-neighbour look-up."""
    q = trainer.queue
    if q is None:
        return
    g = torch.Generator(device=q.items.device).manual_seed(0)
    items = torch.randn(q.items.shape, generator=g, device=q.items.device)
    q.push(torch.nn.functional.normalize(items, dim=1))


def bench_train(
    config: str = "imagenet",
    steps: int = 30,
    batch_size: int = 256,
    images: str | None = None,
    synthetic: bool = False,
    warmup: int = 5,
    workers: int | None = None,
    device: str = "auto",
    overrides: dict | None = None,
) -> dict:
    """Time ``steps`` training steps after ``warmup`` ones; data from ``images`` or synthetic.

    data_wait_fraction = time blocked waiting for the next batch / wall time. On GPU the
    step is queued asynchronously, so a step's wall time is the GPU's pace and any time the
    loader cannot keep up shows as data wait. step_ms_median comes from CUDA events on GPU.
    """
    over: dict = {section: dict(values) for section, values in (overrides or {}).items()}
    over.setdefault("train", {}).update({"batch_size": batch_size, "device": device})
    # steps run at the peak lr; a short schedule (a list of floats) keeps set-up cheap on big data
    over["train"].setdefault("epochs", 1_000)
    if workers is not None:
        over.setdefault("data", {})["workers"] = workers
    if images:
        over.setdefault("data", {})["path"] = images
    cfg: Config = load_config(config, over)
    dataset = None
    if synthetic or not images:
        # Images a bit larger than the global crops, like ImageNet resized to 256 for 224.
        side = max(8, round(cfg.augment.global_size * 256 / 224))
        dataset = _synthetic_dataset(max(2 * batch_size, 64), side)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(cfg, out, log=lambda _msg: None, dataset=dataset)
        return _time_steps(trainer, steps, warmup, synthetic or not images)


def _time_steps(trainer: Trainer, steps: int, warmup: int, synthetic: bool) -> dict:
    dev, cfg = trainer.device, trainer.cfg
    _fill_queue(trainer)
    trainer.net.train()
    stream = _repeat_epochs(trainer.source)
    cuda = dev.type == "cuda"
    peak_lr = float(max(trainer.lrs))  # once: the schedule spans every step of a long run
    for _ in range(warmup):
        trainer.train_step(next(stream), peak_lr, epoch=0)
    _sync(dev)
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    wait, marks, walls = 0.0, [], []
    syncs = 0
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")  # counts host syncs without failing
        try:
            for _ in range(steps):
                t0 = time.perf_counter()
                views = next(stream)
                wait += time.perf_counter() - t0
                trainer.train_step(views, peak_lr, epoch=0)
                if cuda:
                    marks.append(torch.cuda.Event(enable_timing=True))
                    marks[-1].record()
                walls.append(time.perf_counter() - t0)
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode("default")
        syncs = sum("synchroniz" in str(w.message) for w in caught)
    _sync(dev)
    seconds = time.perf_counter() - start
    if cuda and len(marks) > 1:
        step_ms = [a.elapsed_time(b) for a, b in zip(marks, marks[1:], strict=False)]
    else:
        step_ms = [w * 1e3 for w in walls]
    trainer._check_finite()
    batch = cfg.train.batch_size
    return {
        "device": _device_name(dev),
        "images_per_s": round(steps * batch / seconds, 1),
        "step_ms_median": round(statistics.median(step_ms), 2),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated(dev) / 2**30, 2) if cuda else None,
        "data_wait_fraction": round(wait / seconds, 3),
        "batch_size": batch,
        "steps": steps,
        "data": "synthetic" if synthetic else cfg.data.path,
        "pipeline": trainer.source.pipeline,
        "workers": cfg.data.workers,
        "precision": str(trainer.amp_dtype or torch.float32).replace("torch.", ""),
        "channels_last": cfg.train.channels_last,
        "compile": cfg.train.compile,
        "grad_checkpointing": cfg.train.grad_checkpointing,
        "host_syncs_in_timed_steps": syncs if cuda else None,
        "machine": _machine(),
    }
