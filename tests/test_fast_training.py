"""Training with the fast folder path, and the GPU-minded step: no host syncs, foreach LARS,
activation checkpointing, a queue that never reads its fill level from the device."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.overrides import TorchFunctionMode

from selfclassifier.config import load_config
from selfclassifier.errors import TrainingError
from selfclassifier.model.backbones import build_backbone, enable_activation_checkpointing
from selfclassifier.optim import LARS, parameter_groups
from selfclassifier.queue import NNQueue
from selfclassifier.train.loop import Trainer
from selfclassifier.views import batched as augment
from selfclassifier.views.source import ViewSource

TINY = {
    "model": {"backbone": "resnet20", "heads": [4, 6], "hidden_dim": 32, "out_dim": 16},
    "augment": {"global_size": 16, "local_size": 8, "local_crops": 2},
    "train": {"batch_size": 8, "epochs": 1, "log_every": 1, "device": "cpu"},
    "data": {"workers": 0},
}


def tiny_config(path, **sections):
    over = {k: dict(v) for k, v in TINY.items()}
    over["data"]["path"] = str(path)
    for section, values in sections.items():
        over.setdefault(section, {}).update(values)
    return load_config("digits", over)


@pytest.fixture
def jpeg_folder(tmp_path):
    """Two classes x 10 small JPEGs (some large enough for reduced decoding)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "jpegs"
    for k, colour in enumerate([(200, 40, 40), (40, 40, 200)]):
        (root / f"c{k}").mkdir(parents=True)
        for i in range(10):
            size = (160, 120) if i % 2 else (40, 30)
            arr = rng.normal(colour, 25, size=(size[1], size[0], 3)).clip(0, 255)
            Image.fromarray(arr.astype(np.uint8)).save(root / f"c{k}" / f"{i}.jpg", quality=90)
    return root


# ----------------------------------------------------------------------------- the fast folder path


def test_cli_trains_through_the_fast_folder_path(jpeg_folder, tmp_path):
    out = tmp_path / "run"
    args = [
        sys.executable, "-m", "selfclassifier", "train", "--data", jpeg_folder, "--out", out,
        "--epochs", "2", "--batch-size", "8", "--workers", "1", "--device", "cpu",
        "--set", "augment.pipeline=fast", "--set", "model.backbone=resnet20",
        "--set", "model.heads=[4,6]", "--set", "model.hidden_dim=32",
        "--set", "model.out_dim=16", "--set", "augment.global_size=16",
        "--set", "augment.local_size=8", "--set", "augment.local_crops=2",
        "--set", "train.log_every=1",
    ]  # fmt: skip
    done = subprocess.run(list(map(str, args)), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "pipeline fast" in done.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "step" in r]
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert json.loads((out / "eval.json").read_text())["heads"][0]["classes"] == 4


@pytest.mark.parametrize("workers", [0, 1])
def test_fast_views_are_reproducible_and_resume_mid_epoch(jpeg_folder, workers):
    cfg = tiny_config(jpeg_folder, augment={"pipeline": "fast"}, data={"workers": workers})
    from selfclassifier.data.sources import build_dataset

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


# How a process can end with loader workers still running: a source left open; an iterator
# that outlives its source's close() (a stored traceback's frame holds it); an iterator whose
# source is already gone.
LEFT_OPEN = {
    "open source": "",
    "iterator held elsewhere": "held = source._loader._iterator\n",
    "source gone": "held = source._loader._iterator\nsource._loader._iterator = None\ndel source\n",
}


@pytest.mark.parametrize("how", LEFT_OPEN)
def test_a_process_with_live_loader_workers_still_exits(jpeg_folder, how):
    """Workers ignore SIGTERM (stops are the main process's job), so workers still running when
    the interpreter exits must be shut down, not joined forever (CI once hung here)."""
    code = (
        "import sys, torch\n"
        "from selfclassifier.data import build_dataset\n"
        "from selfclassifier.views import ViewSource\n"
        "from test_fast_training import tiny_config\n"
        f"cfg = tiny_config({str(jpeg_folder)!r}, augment={{'pipeline': 'fast'}}, "
        "data={'workers': 2})\n"
        f"source = ViewSource(build_dataset({str(jpeg_folder)!r}), cfg, 3, torch.device('cpu'))\n"
        "next(iter(source.epoch(0)))\n"
        f"{LEFT_OPEN[how]}"
        "print('left open')\n"
    )
    here = str(Path(__file__).parent)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=here
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "left open"


def test_gpu_stage_placement_gives_the_same_views(jpeg_folder, monkeypatch):
    """The batched stage runs in the workers on CPU and on the device otherwise: same views."""
    cfg = tiny_config(jpeg_folder, augment={"pipeline": "fast", "compute_dtype": "float32"})
    from selfclassifier.data.sources import build_dataset

    ds = build_dataset(str(jpeg_folder))
    in_workers = list(ViewSource(ds, cfg, 3, torch.device("cpu")).epoch(0))
    on_device = ViewSource(ds, cfg, 3, torch.device("cpu"))
    stage = on_device._loader.collate_fn.stage
    on_device._loader.collate_fn.stage, on_device.device_stage = None, stage
    for a, b in zip(in_workers[0], list(on_device.epoch(0))[0], strict=True):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------- no host syncs

SYNCING = {"item", "__bool__", "__float__", "__int__", "__index__", "tolist", "nonzero",
           "masked_select", "unique", "numpy", "cpu"}  # fmt: skip


class SyncSpy(TorchFunctionMode):
    """Records every call that makes the host wait for a device value."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        bool_index = name in ("__getitem__", "__setitem__") and any(
            isinstance(a, torch.Tensor) and a.dtype == torch.bool for a in _flat(args[1:2])
        )
        if name in SYNCING or bool_index:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def _flat(items):
    for a in items:
        if isinstance(a, tuple | list):
            yield from _flat(a)
        else:
            yield a


@pytest.mark.parametrize("optimizer", ["lars", "sgd"])
def test_train_step_reads_nothing_back_from_the_device(tmp_path, optimizer):
    cfg = tiny_config("digits", optim={"optimizer": optimizer}, train={"queue_size": 24})
    trainer = Trainer(cfg, tmp_path, log=lambda m: None)
    views = next(iter(trainer.source.epoch(0)))
    trainer.queue.push(torch.nn.functional.normalize(torch.randn(24, 16), dim=1))
    trainer.train_step(views, 0.1, epoch=0)  # first step creates optimizer state
    with SyncSpy() as spy:
        for _ in range(2):
            loss, _ = trainer.train_step(views, 0.1, epoch=0)
    assert spy.calls == []
    assert torch.isfinite(loss)


def test_batched_stage_reads_nothing_back_on_an_accelerator(monkeypatch):
    """With the accelerator branch (torch.where instead of row selection), no syncs."""
    monkeypatch.setattr(augment, "_rows_are_cheap", lambda device: False)
    real_order = augment._op_order

    def order(n, host):  # drawn from a CPU generator by construction: no device involved
        assert host.device.type == "cpu"
        return orders.pop(0)

    orders = [real_order(4, torch.Generator().manual_seed(k)) for k in range(4)]
    monkeypatch.setattr(augment, "_op_order", order)
    cfg = load_config("imagenet").augment
    cfg.global_size, cfg.local_size, cfg.local_crops, cfg.rotation = 16, 8, 2, 5.0
    stage = augment.BatchedPhotometric(cfg, 3, torch.bfloat16)
    views = [torch.randint(0, 256, (4, s, s, 3), dtype=torch.uint8) for s in (16, 16, 8, 8)]
    g = torch.Generator().manual_seed(0)
    stage.normalize(torch.zeros(1, 3, 1, 1))  # the one-off upload of mean/std
    with SyncSpy() as spy:
        out = stage(views, g, channels_last=True)
    assert spy.calls == [] and all(v.dtype == torch.float32 for v in out)


def test_non_finite_loss_is_caught_at_the_next_check_and_never_saved(tmp_path):
    cfg = tiny_config("digits", train={"epochs": 1, "log_every": 3})
    trainer = Trainer(cfg, tmp_path, log=lambda m: None)
    real = trainer.loss_fn
    trainer.loss_fn = lambda logits: real(logits) * float("nan")
    with pytest.raises(TrainingError, match="non-finite loss"):
        trainer.fit()
    assert not (tmp_path / "checkpoint.pt").exists()


def test_skip_nonfinite_still_skips_steps(tmp_path):
    cfg = tiny_config("digits", train={"epochs": 1, "skip_nonfinite": True})
    trainer = Trainer(cfg, tmp_path, log=lambda m: None)
    real = trainer.loss_fn
    trainer.loss_fn = lambda logits: real(logits) * float("nan")
    before = [p.clone() for p in trainer.model.parameters()]
    for views in itertools.islice(trainer.source.epoch(0), 3):
        loss, _ = trainer.train_step(views, 0.1, epoch=0)  # returned for the step's log record
        assert not torch.isfinite(loss)
    assert trainer.state.skipped_steps == 3
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))


# ----------------------------------------------------------------------------- optimiser, queue


def reference_lars_step(params, state, lr, momentum, wd, trust=0.001, eps=1e-8, exclude=()):
    """apex LARC (clip off) over SGD, one parameter at a time, written out plainly."""
    with torch.no_grad():
        for i, p in enumerate(params):
            if i in exclude:  # plain SGD; their group has no weight decay
                d_p = p.grad.clone()
            else:
                w, g = p.norm(), p.grad.norm()
                d_p = p.grad.clone()
                if w > 0 and g > 0:
                    d_p = (p.grad + wd * p) * (trust * w / (g + wd * w + eps))
            state[i] = d_p.clone() if i not in state else state[i] * momentum + d_p
            p -= lr * state[i]


def test_foreach_lars_matches_the_per_parameter_update():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.BatchNorm1d(7), torch.nn.Linear(7, 3))
    ref = [p.detach().clone().requires_grad_(True) for p in net.parameters()]
    opt = LARS(
        parameter_groups(net, 1e-2, exclude_norm_bias=True), lr=0.5, momentum=0.9, weight_decay=1e-2
    )
    for group in opt.param_groups[1:]:
        group["lars_exclude"] = True
    exclude = {i for i, p in enumerate(net.parameters()) if p.ndim <= 1}
    state: dict = {}
    for step in range(3):
        x = torch.randn(8, 5)
        opt.zero_grad()
        net(x).square().sum().backward()
        for r, p in zip(ref, net.parameters(), strict=True):
            r.grad = p.grad.clone()
        opt.step()
        reference_lars_step(ref, state, 0.5, 0.9, 1e-2, exclude=exclude)
        for r, p in zip(ref, net.parameters(), strict=True):
            torch.testing.assert_close(p, r, atol=1e-6, rtol=1e-5, msg=f"step {step}")


def test_queue_fill_level_survives_a_checkpoint_without_device_reads():
    q = NNQueue(size=4, dim=2)
    q.push(torch.eye(2))
    assert not q.full
    q.push(torch.eye(2))
    assert q.full
    fresh = NNQueue(size=4, dim=2)
    fresh.load_state_dict(q.state_dict())
    assert fresh.full and fresh.nearest(torch.tensor([[0.0, 1.0]]))[0].tolist() == [[0.0, 1.0]]
    holder = torch.nn.Module()
    holder.queue = NNQueue(size=4, dim=2)
    holder.load_state_dict({"queue." + k: v for k, v in q.state_dict().items()})
    assert holder.queue.full  # the hook also runs when a parent module loads


# ----------------------------------------------------------------------------- checkpointing


@pytest.mark.parametrize("name,size", [("resnet20", 16), ("resnet18", 32), ("vit_tiny_patch4", 16)])
def test_activation_checkpointing_keeps_outputs_gradients_and_names(name, size):
    torch.manual_seed(0)
    plain = build_backbone(name, 3, size)
    ckpt = build_backbone(name, 3, size)
    ckpt.load_state_dict(plain.state_dict())
    enable_activation_checkpointing(ckpt)
    assert list(ckpt.state_dict()) == list(plain.state_dict())
    x = torch.randn(4, 3, size, size)
    out_a, out_b = plain(x), ckpt(x)
    torch.testing.assert_close(out_a, out_b)
    out_a.square().sum().backward()
    out_b.square().sum().backward()
    for (n, a), b in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=n)


def test_trainer_applies_activation_checkpointing(tmp_path):
    cfg = tiny_config("digits", train={"grad_checkpointing": True})
    trainer = Trainer(cfg, tmp_path, log=lambda m: None)
    block = trainer.model.backbone.layers[0]
    assert "forward" in vars(block)  # wrapped in place
    views = next(iter(trainer.source.epoch(0)))
    loss, _ = trainer.train_step(views, 0.1, epoch=0)
    assert torch.isfinite(loss)
