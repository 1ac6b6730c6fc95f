import json

import pytest
import torch
from conftest import TINY, run_cli

from selfclassifier.config import load_config, parse_set
from selfclassifier.storage import load_checkpoint
from selfclassifier.train.loop import Trainer
from selfclassifier.views.order import epoch_order, local_batches

FOLDER = [
    "--set",
    "augment.global_size=16",
    "--set",
    "augment.local_size=8",
    "--set",
    "augment.local_crops=2",
    "--set",
    "augment.pipeline=classic",
    "--workers",
    "0",
]


def test_epoch_order_depends_only_on_seed_and_epoch():
    assert torch.equal(epoch_order(50, 1, 3), epoch_order(50, 1, 3))
    assert not torch.equal(epoch_order(50, 1, 3), epoch_order(50, 1, 4))
    batches = local_batches(50, 16, seed=1, epoch=3)
    assert len(batches) == 3 and all(len(b) == 16 for b in batches)
    assert len(set(torch.cat(batches).tolist())) == 48


def test_two_step_cli_run_on_image_folder_then_resume(image_folder, tmp_path):
    out = tmp_path / "run"
    args = [
        "train",
        "--data",
        image_folder,
        "--out",
        out,
        "--epochs",
        "1",
        "--batch-size",
        "16",
        *TINY,
        *FOLDER,
    ]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["state"]["epoch"] == 1 and ckpt["state"]["global_step"] == 2  # 36 // 16
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in m and m.get("step") == 2 for m in metrics)
    result = json.loads((out / "eval.json").read_text())
    assert [h["classes"] for h in result["heads"]] == [4, 6]
    assert {"nmi", "ami", "ari", "acc"} <= set(result["heads"][0])
    assert "acc_many_to_one" in result["heads"][1]  # 6 clusters > 3 labels
    assert "nmi" in r.stdout  # the table

    # the same command with more epochs continues from the saved epoch
    r2 = run_cli(*[a if a != "1" else "2" for a in args])
    assert r2.returncode == 0, r2.stderr
    assert "resuming from" in r2.stderr and "epoch 1, step 0" in r2.stderr
    ckpt2 = load_checkpoint(out / "checkpoint.pt")
    assert ckpt2["state"]["epoch"] == 2 and ckpt2["state"]["global_step"] == 4


def test_digits_in_memory_run_writes_config_and_checkpoint(tmp_path):
    out = tmp_path / "digits"
    r = run_cli(
        "train",
        "--out",
        out,
        "--epochs",
        "1",
        "--batch-size",
        "600",
        *TINY,
        "--set",
        "train.queue_size=1400",
    )
    assert r.returncode == 0, r.stderr
    assert (out / "config.yaml").is_file() and (out / "checkpoint.pt").is_file()
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["data"]["channels"] == 1 and ckpt["queue"]["count"].item() == 1200


def test_resume_flag_requires_a_checkpoint(tmp_path):
    r = run_cli("train", "--out", tmp_path / "empty", "--resume", *TINY)
    assert r.returncode == 2 and "no checkpoint" in r.stderr
    assert "Traceback" not in r.stderr


def test_trainer_loss_decreases_on_digits(tmp_path):
    cfg = load_config(
        "digits",
        parse_set(
            [
                "model.heads=[10]",
                "model.hidden_dim=64",
                "model.out_dim=32",
                "train.epochs=4",
                "train.batch_size=256",
                "optim.warmup_epochs=0",
            ]
        ),
    )
    trainer = Trainer(cfg, tmp_path / "t", log=lambda m: None)
    first = trainer.train_one_epoch(0)["loss"]
    trainer.state.epoch, trainer.state.step = 1, 0
    for epoch in (1, 2, 3):
        last = trainer.train_one_epoch(epoch)["loss"]
        trainer.state.step = 0
    assert last < first


@pytest.mark.parametrize(
    "bad,fragment",
    [
        (["--data", "/nonexistent/path"], "/nonexistent/path"),
        (["--set", "model.backbone=resnet7"], "unknown backbone 'resnet7'"),
        (["--batch-size", "1"], "train.batch_size must be >= 2"),
    ],
)
def test_bad_inputs_exit_2_with_one_line(tmp_path, bad, fragment):
    r = run_cli("train", "--out", tmp_path / "x", "--epochs", "1", *TINY, *bad)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0]
