"""``selfclassifier train`` end to end, in process through ``cli.main``: runs on an image folder
(classic and fast paths) and on in-memory digits, resuming, the shipped CPU presets, and every
bad input as one ``error:`` line with exit 2 before any work."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import yaml

from selfclassifier import data
from selfclassifier.config import load_config
from selfclassifier.data.arrays import write_idx
from selfclassifier.storage import load_checkpoint
from tests.helpers import (
    DIGITS_TEST,
    TINY,
    assert_one_error_line,
    heads,
    read_jsonl,
    run_cli,
)
from tests.helpers.images import write_arrays

# ----------------------------------------------------------------------------- runs

FOLDER = [
    "--set", "augment.global_size=16", "--set", "augment.local_size=8",
    "--set", "augment.local_crops=2", "--set", "augment.pipeline=classic", "--workers", "0",
]  # fmt: skip


def test_two_step_cli_run_on_image_folder_then_resume(make_images, tmp_path):
    images = make_images(per_class=12, size=(24, 20))  # 3 classes: 36 images
    out = tmp_path / "run"
    args = ["train", "--data", images, "--out", out, "--epochs", "1", "--batch-size", "16",
            *TINY, *heads(4, 6), *FOLDER]  # fmt: skip
    code, stdout, err = run_cli(*args)
    assert code == 0, err
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["state"]["epoch"] == 1 and ckpt["state"]["global_step"] == 2  # 36 // 16
    metrics = read_jsonl(out / "metrics.jsonl")
    assert any("loss" in m and m.get("step") == 2 for m in metrics)
    result = json.loads((out / "eval.json").read_text())
    assert [h["classes"] for h in result["heads"]] == [4, 6]
    assert {"nmi", "ami", "ari", "acc"} <= set(result["heads"][0])
    assert "acc_many_to_one" in result["heads"][1]  # 6 clusters > 3 labels
    assert "nmi" in stdout  # the table

    # the same command with more epochs continues from the saved epoch
    code, _, err = run_cli(*[a if a != "1" else "2" for a in args])
    assert code == 0, err
    assert "resuming from" in err and "epoch 1, step 0" in err
    ckpt2 = load_checkpoint(out / "checkpoint.pt")
    assert ckpt2["state"]["epoch"] == 2 and ckpt2["state"]["global_step"] == 4


def test_cli_trains_through_the_fast_folder_path(make_images, tmp_path):
    jpegs = make_images("jpegs", classes=2, per_class=10, size=[(40, 30), (160, 120)], fmt="jpeg")
    out = tmp_path / "run"
    code, _, err = run_cli(
        "train", "--data", jpegs, "--out", out, "--epochs", "2", "--batch-size", "8",
        "--workers", "1", *TINY, *heads(4, 6), "--set", "augment.pipeline=fast",
        "--set", "augment.global_size=16", "--set", "augment.local_size=8",
        "--set", "augment.local_crops=2", "--set", "train.log_every=1",
    )  # fmt: skip
    assert code == 0, err
    assert "pipeline fast" in err
    losses = [r["loss"] for r in read_jsonl(out / "metrics.jsonl") if "step" in r]
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert json.loads((out / "eval.json").read_text())["heads"][0]["classes"] == 4


def test_digits_in_memory_run_writes_config_and_checkpoint(tmp_path):
    out = tmp_path / "digits"
    code, _, err = run_cli(
        "train", "--out", out, "--epochs", "1", "--batch-size", "600", *TINY, *heads(4, 6),
        "--set", "train.queue_size=1400",
    )  # fmt: skip
    assert code == 0, err
    assert (out / "config.yaml").is_file() and (out / "checkpoint.pt").is_file()
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["data"]["channels"] == 1 and ckpt["queue"]["count"].item() == 1200


def test_a_run_with_final_size_trains_on_both_sides_and_evaluates_at_the_last(tmp_path):
    """Digits' 8 px crops, then 12 px crops for the last epoch (the views' sides per epoch are
    checked in views/test_source.py): the run completes, records the schedule, and the model it
    writes takes 12 px inputs (eval_size 0 = final_size)."""
    out = tmp_path / "grow"
    code, _, err = run_cli(
        "train", "--out", out, "--epochs", "2", "--batch-size", "600", *TINY, *heads(4, 6),
        "--set", "augment.final_size=12", "--set", "augment.final_epochs=1",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads((out / "eval.json").read_text())["heads"][0]["nmi"] >= 0
    import selfclassifier

    model = selfclassifier.load(out / "checkpoint.pt", device="cpu")
    assert model.image_size == 12
    saved = yaml.safe_load((out / "config.yaml").read_text())["augment"]
    assert (saved["global_size"], saved["final_size"], saved["final_epochs"]) == (8, 12, 1)


def test_digits_preset_as_shipped_selects_one_of_its_per_head_candidates(tmp_path):
    """What `make demo` runs (every model key as shipped: 16 candidates with a projection
    each), shortened to two epochs on digits' test split."""
    out = tmp_path / "demo"
    code, _, err = run_cli("train", "--out", out, "--epochs", "2", *DIGITS_TEST)
    assert code == 0, err
    preset = load_config("digits").model
    assert preset.head_projection == "per_head" and preset.heads.count(10) == 16
    result = json.loads((out / "eval.json").read_text())["heads"]
    assert [h["classes"] for h in result] == preset.heads
    ten = [h for h in result if h["classes"] == 10]
    picked = [h for h in ten if h["selected"]]
    assert len(picked) == 1
    assert picked[0]["selection_loss"] == min(h["selection_loss"] for h in ten)
    import selfclassifier

    model = selfclassifier.load(out / "checkpoint.pt", device="cpu")  # one embedding per head
    assert model.model.embed_dim == len(preset.heads) * preset.out_dim


def test_resume_flag_requires_a_checkpoint(tmp_path):
    code, _, err = run_cli("train", "--out", tmp_path / "empty", "--resume", *TINY, *heads(4, 6))
    assert code == 2 and "no checkpoint" in err
    assert "Traceback" not in err


# ----------------------------------------------------------------------------- the CPU presets


def fashion_like_idx(root, n_train=96, n_test=32, seed=0):
    """Fashion-MNIST-shaped IDX files (28x28 uint8, 10 labels): each class a bright bar at
    its own position, plus noise."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 40, (n, 28, 28))
        for i, k in enumerate(labels):
            images[i, 2 * k + 3 : 2 * k + 7, 4:24] += 200
        write_idx(str(root / f"{prefix}-images-idx3-ubyte.gz"), images.astype(np.uint8))
        write_idx(str(root / f"{prefix}-labels-idx1-ubyte.gz"), labels.astype(np.uint8))
    return root


def test_fashion_mnist_cpu_recipe_runs_a_few_dozen_steps(tmp_path, one_thread):
    """The shipped Fashion-MNIST CPU recipe end to end on a small synthetic IDX set written
    here (the real files are not needed by the test suite)."""
    data_dir = fashion_like_idx(tmp_path / "fashion")
    out = tmp_path / "run"
    code, _, err = run_cli(
        "train", "--config", "fashion_mnist_cpu", "--data", data_dir, "--out", out,
        "--epochs", "8", "--batch-size", "32", "--device", "cpu", "--workers", "0",
    )  # fmt: skip
    assert code == 0, err
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["state"]["global_step"] == 8 * (128 // 32)  # train + test: the 'all' split
    losses = [m["loss"] for m in read_jsonl(out / "metrics.jsonl") if "loss" in m]
    assert losses and all(np.isfinite(losses))
    result = json.loads((out / "eval.json").read_text())
    preset_heads = load_config("fashion_mnist_cpu").model.heads
    assert [h["classes"] for h in result["heads"]] == preset_heads
    # scored at the preset's eval_size: its 16 px crops' images at 20 px
    assert result["data"] == {
        "path": str(data_dir), "split": "all", "samples": 128, "input_size": 20,
    }  # fmt: skip
    assert result["heads"][0]["active_classes"] >= 2  # not collapsed


# README "Your own images": the CPU preset, shrunk to one epoch, on a folder of a few hundred
# PNGs in the ImageFolder layout written here: real Fashion-MNIST images when the Debian
# package ``dataset-fashion-mnist`` is installed (skipped otherwise), and synthetic ones always.

PER_CLASS = 30  # 10 classes x 30 = 300 images


def fashion_mnist_folder(root, per_class: int = PER_CLASS):
    """The first ``per_class`` train images of each Fashion-MNIST class as PNGs."""
    ds = data.load_idx_dataset(data.FASHION_MNIST_DIR, "train")
    targets = ds.targets.numpy()
    keep = np.concatenate([np.flatnonzero(targets == k)[:per_class] for k in range(10)])
    names = [c.replace("/", "_") for c in data.FASHION_MNIST_CLASSES]  # 'T-shirt/top'
    return write_arrays(root, ds.images[keep, 0].numpy(), targets[keep], names)


def synthetic_folder(root, per_class: int = PER_CLASS, seed: int = 0):
    """28x28 grey images: class k is a bright bar at its own height, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), per_class)
    images = rng.integers(0, 40, (len(labels), 28, 28))
    for i, k in enumerate(labels):
        images[i, 2 * k + 3 : 2 * k + 7, 4:24] += 200
    return write_arrays(root, images.astype(np.uint8), labels, [f"c{k}" for k in range(10)])


SOURCES = {
    "synthetic": synthetic_folder,
    "fashion_mnist": pytest.param(
        fashion_mnist_folder,
        marks=pytest.mark.skipif(
            not os.path.isdir(data.FASHION_MNIST_DIR),
            reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
        ),
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("make_folder", SOURCES.values(), ids=SOURCES.keys())
def test_cpu_preset_trains_on_an_image_folder_with_classes_k(tmp_path, make_folder, one_thread):
    folder = make_folder(tmp_path / "images")
    out = tmp_path / "run"
    code, _, err = run_cli(
        "train", "--config", "images_cpu", "--data", folder, "--classes", "10",
        "--epochs", "1", "--batch-size", "60", "--workers", "0", "--device", "cpu",
        "--out", out, "--set", "model.hidden_dim=64", "--set", "model.out_dim=32",
    )  # fmt: skip
    assert code == 0, err[-3000:]
    recorded = yaml.safe_load((out / "config.yaml").read_text())
    assert recorded["model"]["heads"] == [10] * 6 + [20, 40]
    assert recorded["augment"]["global_size"] == load_config("images_cpu").augment.global_size
    result = json.loads((out / "eval.json").read_text())
    assert result["data"]["samples"] == 10 * PER_CLASS
    result_heads = result["heads"]
    assert [h["classes"] for h in result_heads] == [10] * 6 + [20, 40]
    # The selection pass ran: exactly one selected head per class count, chosen by its loss.
    ten = [h for h in result_heads if h["classes"] == 10]
    assert sum(h["selected"] for h in ten) == 1
    best = min(ten, key=lambda h: h["selection_loss"])
    assert best["selected"]
    assert all(np.isfinite(h["selection_loss"]) for h in result_heads)
    assert all("acc_many_to_one" in h for h in result_heads if h["classes"] > 10)
    losses = read_jsonl(out / "metrics.jsonl")
    assert all(np.isfinite(m["loss"]) for m in losses if "loss" in m)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "bad,fragment",
    [
        (["--data", "/nonexistent/path"], "/nonexistent/path"),
        (["--set", "model.backbone=resnet7"], "unknown backbone 'resnet7'"),
        (["--batch-size", "1"], "train.batch_size must be >= 2"),
    ],
)
def test_bad_inputs_exit_2_with_one_line(tmp_path, bad, fragment):
    code, _, err = run_cli("train", "--out", tmp_path / "x", "--epochs", "1", *TINY, *heads(4, 6),
                           *bad)  # fmt: skip
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0]


# Config checks run before any work: no dataset read, no OUT made.
BAD_BASE = [*DIGITS_TEST, "--epochs", "1", "--batch-size", "64", *TINY, *heads(10)]


def train(out, *args) -> tuple[int, str]:
    """``train --out OUT BAD_BASE ARGS`` in process: (exit code, stderr)."""
    code, _, err = run_cli("train", "--out", out, *BAD_BASE, *args)
    return code, err


BAD_CONFIGS = {
    "unknown key": (["--set", "train.bogus=1"], "unknown config key 'train.bogus'"),
    "unknown section": (["--set", "trian.epochs=1"], "unknown config section 'trian'"),
    "wrong type": (["--set", "train.epochs=abc"], "train.epochs: expected an integer"),
    "wrong type flag": (["--epochs", "abc"], "argument --epochs: invalid int value"),
    "wrong list type": (["--set", "model.heads=10"], "model.heads: expected a list"),
    "head below 2": (["--set", "model.heads=[10,1]"], "model.heads[1] = 1"),
    "no heads": (["--set", "model.heads=[]"], "model.heads must list at least one"),
    "batch below 2": (["--batch-size", "1"], "train.batch_size must be >= 2"),
    "row tau zero": (["--set", "loss.row_tau=0"], "loss.row_tau must be > 0"),
    "col tau negative": (["--set", "loss.col_tau=-0.05"], "loss.col_tau must be > 0"),
    "negative local crops": (["--set", "augment.local_crops=-1"], "augment.local_crops"),
    "negative global crops": (["--set", "augment.global_crops=-2"], "augment.global_crops"),
    "scale zero": (["--set", "augment.global_scale=[0.0,1.0]"], "augment.global_scale"),
    "scale above 1": (["--set", "augment.local_scale=[0.5,1.5]"], "augment.local_scale"),
    "unknown backbone": (["--set", "model.backbone=resnet999"], "unknown backbone 'resnet999'"),
    "unknown preset": (["--config", "no_such_preset"], "unknown preset 'no_such_preset'"),
    "empty data path": (["--data", ""], "data.path is empty"),
    "bad set syntax": (["--set", "epochs"], "--set expects section.key=value"),
}


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_bad_config_is_one_line_exit_2_before_any_work(tmp_path, dataset_reads, name):
    args, needle = BAD_CONFIGS[name]
    out = tmp_path / "out"
    code, err = train(out, *args)
    assert code == 2
    assert_one_error_line(err, needle)
    assert not out.exists() and dataset_reads == []


def test_batch_not_divisible_across_ranks(tmp_path, dataset_reads, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")  # as torchrun would set; checked before joining
    code, err = train(tmp_path / "out", "--batch-size", "64")
    assert code == 2
    assert_one_error_line(err, "train.batch_size=64 (the global batch)", "across 3 processes")
    assert dataset_reads == []


@pytest.mark.parametrize("kind", ["missing", "empty dir", "a file"])
def test_bad_data_path(tmp_path, kind):
    data_dir = tmp_path / "data"
    if kind == "empty dir":
        (data_dir / "sub").mkdir(parents=True)
    elif kind == "a file":
        data_dir.write_text("not a dataset")
    out = tmp_path / "out"
    code, err = train(out, "--data", data_dir)
    assert code == 2
    assert_one_error_line(err, str(data_dir))
    assert not out.exists()


@pytest.mark.parametrize(
    ("preset", "k", "heads"),
    [
        ("digits", 5, [5] * 16 + [10, 20]),  # the preset's 16 candidates, at the new K
        ("images_cpu", 20, [20] * 6 + [40, 80]),
        ("imagenet", 100, [100] * 6 + [200, 400]),  # one head per size: six candidates
        ("fashion_mnist_cpu", 7, [7] * 6),  # candidates only: no over-clustering heads added
    ],
)
def test_classes_flag_keeps_the_presets_number_of_candidates(preset, k, heads):
    from selfclassifier.cli import build_parser
    from selfclassifier.cli.train import _cli_overrides

    args = build_parser().parse_args(["train", "--config", preset, "--classes", str(k)])
    assert load_config(preset, _cli_overrides(args)).model.heads == heads


def test_classes_flag_conflicts_and_bad_values_are_one_line(tmp_path):
    base = ["train", "--config", "images_cpu", "--data", tmp_path, "--out", tmp_path]
    code, _, err = run_cli(*base, "--classes", "5", "--set", "model.heads=[5,10]")
    assert code == 2
    err = err.strip()
    assert err.startswith("error: --classes") and "\n" not in err
    code, _, err = run_cli(*base, "--classes", "1")
    assert code == 2
    err = err.strip()
    assert "at least 2 classes" in err and "\n" not in err


def test_a_run_with_input_norm_embeds_brighter_images_the_same(make_images, tmp_path):
    import selfclassifier

    images = make_images(per_class=8, size=(16, 16))
    out = tmp_path / "run"
    code, _, err = run_cli(
        "train", "--data", images, "--out", out, "--epochs", "1", "--batch-size", "12",
        *TINY, *heads(4), *FOLDER, "--set", "model.input_norm=image",
    )  # fmt: skip
    assert code == 0, err
    model = selfclassifier.load(out / "checkpoint.pt", device="cpu")
    assert model.cfg.model.input_norm == "image"
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model.embed(x * 2.5 + 0.7), model.embed(x), atol=1e-4, rtol=1e-4)


def test_per_head_projections_train_with_a_queue_evaluate_and_predict(make_images, tmp_path):
    import selfclassifier

    images = make_images(per_class=8, size=(16, 16))
    out = tmp_path / "run"
    code, _, err = run_cli(
        "train", "--data", images, "--out", out, "--epochs", "2", "--batch-size", "12",
        *TINY, *heads(4, 4, 8), *FOLDER, "--set", "model.head_projection=per_head",
        "--set", "train.queue_size=24",
    )  # fmt: skip
    assert code == 0, err
    model = selfclassifier.load(out / "checkpoint.pt", device="cpu")
    assert model.embed(torch.randn(3, 3, 16, 16)).shape == (3, 3 * 16)
    code, text, err = run_cli(
        "evaluate", out / "checkpoint.pt", "--data", images, "--device", "cpu"
    )
    assert code == 0, err
    assert "knn" in text.lower() or "nmi" in text.lower()
    # resuming with the other layout is refused: the tensors differ
    code, _, err = run_cli(
        "train", "--data", images, "--out", out, "--epochs", "3", "--batch-size", "12",
        *TINY, *heads(4, 4, 8), *FOLDER, "--resume",
    )  # fmt: skip
    assert code != 0 and "head_projection" in err and "\n" not in err.strip()
