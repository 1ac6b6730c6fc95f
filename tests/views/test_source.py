"""``ViewSource``: the loader side of training. Views are reproducible and resume mid-epoch,
the batched stage gives the same views in the workers or on the device, a dead worker restarts
the epoch where it stopped, and a process left with live loader workers still exits."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from selfclassifier.config import load_config
from selfclassifier.data.folders import load_image_folder
from selfclassifier.data.sources import build_dataset
from selfclassifier.views import LoaderRestartWarning, ViewSource
from tests.helpers import REPO, small_views_config, start_python
from tests.helpers.images import write_images


@pytest.fixture
def jpeg_folder(make_images):
    """Two classes x 10 small JPEGs (every other one large enough for reduced decoding)."""
    return make_images("jpegs", classes=2, per_class=10, size=[(40, 30), (160, 120)], fmt="jpeg")


@pytest.mark.parametrize("workers", [0, 1])
def test_fast_views_are_reproducible_and_resume_mid_epoch(jpeg_folder, workers):
    cfg = small_views_config(jpeg_folder, augment={"pipeline": "fast"}, data={"workers": workers})
    ds = build_dataset(str(jpeg_folder))
    source = ViewSource(ds, cfg, 3, torch.device("cpu"))
    first = list(source.epoch(0))
    again = list(source.epoch(0))  # the same persistent workers, a second pass
    resumed = list(source.epoch(0, start_step=1))
    other = list(source.epoch(1))
    source.close()
    assert (
        len(first) == 2 and [v.shape for v in first[0]] == [(8, 3, 16, 16)] * 2 + [(8, 3, 8, 8)] * 2
    )
    assert all(torch.equal(a, b) for a, b in zip(first[1], again[1], strict=True))
    assert all(torch.equal(a, b) for a, b in zip(first[1], resumed[0], strict=True))
    assert not torch.equal(first[0][0], other[0][0])


def test_gpu_stage_placement_gives_the_same_views(jpeg_folder, monkeypatch):
    """The batched stage runs in the workers on CPU and on the device otherwise: same views."""
    cfg = small_views_config(jpeg_folder, augment={"pipeline": "fast", "compute_dtype": "float32"})
    ds = build_dataset(str(jpeg_folder))
    in_workers = list(ViewSource(ds, cfg, 3, torch.device("cpu")).epoch(0))
    on_device = ViewSource(ds, cfg, 3, torch.device("cpu"))
    stage = on_device._loader.collate_fn.stage
    on_device._loader.collate_fn.stage, on_device.device_stage = None, stage
    for a, b in zip(in_workers[0], list(on_device.epoch(0))[0], strict=True):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------- loader workers


class _KillsItsWorkerOnce(torch.utils.data.Dataset):
    """Item 0 SIGKILLs the worker process the first time (like the OOM killer would)."""

    def __init__(self, ds, flag: Path):
        self.ds, self.flag = ds, flag
        self.paths, self.targets, self.mode = ds.paths, ds.targets, ds.mode

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        import os
        import signal

        if i == 0 and torch.utils.data.get_worker_info() is not None and not self.flag.exists():
            self.flag.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return self.ds[i]


def test_dead_worker_restarts_the_epoch_where_it_stopped(tmp_path, make_images):
    images = make_images("img", classes=0, per_class=8, size=(12, 10))
    cfg = load_config("digits", {"train": {"batch_size": 4, "seed": 3}})
    cfg.augment.pipeline, cfg.augment.global_size = "classic", 8
    folder = load_image_folder(images)
    device = torch.device("cpu")

    def views(ds, workers: int) -> list[torch.Tensor]:
        cfg.data.workers = workers
        source = ViewSource(ds, cfg, 3, device)
        try:
            return [torch.cat(v) for v in source.epoch(0)]
        finally:
            source.close()

    expected = views(folder, 0)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        got = views(_KillsItsWorkerOnce(folder, tmp_path / "fired"), 1)
    assert (tmp_path / "fired").exists()  # the worker did die
    assert any(issubclass(w.category, LoaderRestartWarning) for w in record)
    assert len(got) == len(expected)
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


# How a process can end with loader workers still running: a source left open; an iterator
# that outlives its source's close() (a stored traceback's frame holds it); an iterator whose
# source is already gone.
LEFT_OPEN = {
    "open source": "",
    "iterator held elsewhere": "held = source._loader._iterator\n",
    "source gone": "held = source._loader._iterator\nsource._loader._iterator = None\ndel source\n",
}


def _leave_open(folder: Path, how: str) -> str:
    return (
        "import torch\n"
        "from selfclassifier.data import build_dataset\n"
        "from selfclassifier.views import ViewSource\n"
        "from tests.helpers import small_views_config\n"
        f"cfg = small_views_config({str(folder)!r}, augment={{'pipeline': 'fast'}}, "
        "data={'workers': 2})\n"
        f"source = ViewSource(build_dataset({str(folder)!r}), cfg, 3, torch.device('cpu'))\n"
        "next(iter(source.epoch(0)))\n"
        f"{LEFT_OPEN[how]}"
        "print('left open')\n"
    )


@pytest.fixture(scope="module")
def left_open(tmp_path_factory) -> dict:
    """One interpreter per way of leaving workers open, all started at once (they spend their
    time starting up, so on a small machine together is faster than one after the other)."""
    folder = write_images(
        tmp_path_factory.mktemp("left_open") / "jpegs",
        classes=2, per_class=10, size=[(40, 30), (160, 120)], fmt="jpeg",
    )  # fmt: skip
    procs = {how: start_python("-c", _leave_open(folder, how), cwd=REPO) for how in LEFT_OPEN}
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize("how", LEFT_OPEN)
def test_a_process_with_live_loader_workers_still_exits(left_open, how):
    """Workers ignore SIGTERM (stops are the main process's job), so workers still running when
    the interpreter exits must be shut down, not joined forever (CI once hung here). The
    interpreter's exit is the point: a separate process."""
    proc = left_open[how]
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.strip() == "left open"


# ----------------------------------------------------------------------------- final_size


def _in_memory(n: int = 16):
    from selfclassifier.data.arrays import TensorImageDataset

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
    return TensorImageDataset(images, torch.zeros(n, dtype=torch.long), ["a"])


@pytest.mark.parametrize("kind", ["in_memory", "fast", "classic"])
def test_final_size_cuts_larger_global_crops_in_the_last_epochs_only(jpeg_folder, kind):
    """Epochs 0-1 of 3 cut 16 px global crops, epoch 2 cuts 24 px ones; local crops keep their
    side; an earlier epoch revisited (a resume) gets its own side and views back."""
    schedule = {"global_size": 16, "final_size": 24, "final_epochs": 1}
    if kind == "in_memory":
        ds, channels = _in_memory(), 1
        cfg = small_views_config(augment=schedule, train={"epochs": 3})
    else:
        ds, channels = build_dataset(str(jpeg_folder)), 3
        cfg = small_views_config(
            jpeg_folder, augment={**schedule, "pipeline": kind}, train={"epochs": 3}
        )
    source = ViewSource(ds, cfg, channels, torch.device("cpu"))
    sides = {e: [tuple(v.shape[-2:]) for v in list(source.epoch(e))[0]] for e in (1, 2)}
    first = list(source.epoch(1))
    source.close()
    assert sides[1] == [(16, 16)] * 2 + [(8, 8)] * 2
    assert sides[2] == [(24, 24)] * 2 + [(8, 8)] * 2
    fresh = ViewSource(ds, cfg, channels, torch.device("cpu"))
    again = list(fresh.epoch(1))  # a fresh source, as after a resume
    fresh.close()
    assert all(torch.equal(a, b) for a, b in zip(first[0], again[0], strict=True))


def test_eval_side_and_the_recipe_of_each_epoch():
    from selfclassifier.config import AugmentConfig
    from selfclassifier.views import augment_at, eval_side

    aug = AugmentConfig(global_size=16, final_size=20, final_epochs=2)
    assert [augment_at(aug, 5, e).global_size for e in range(5)] == [16, 16, 16, 20, 20]
    assert augment_at(aug, 5, 4).final_size == 20 and aug.global_size == 16  # a copy
    assert eval_side(aug) == 20  # eval_size 0: the side training ended at
    aug.eval_size = 24
    assert eval_side(aug) == 24
    plain = AugmentConfig(global_size=16)
    assert augment_at(plain, 5, 4) is plain and eval_side(plain) == 16
