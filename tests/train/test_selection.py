"""Scoring candidate heads at the end of training (train/selection.py): each head's loss on a
fresh augmented pass, no labels; the lowest of each size is marked selected in eval.json, the
table, metrics.jsonl and the checkpoint, and evaluate, report and ``load`` use it."""

from __future__ import annotations

import json

import pytest
import torch

import selfclassifier
from selfclassifier.config import parse_set
from selfclassifier.evaluate.metrics import SELECTED_NOTE
from selfclassifier.heads import select_heads
from selfclassifier.storage import load_checkpoint
from selfclassifier.train.loop import Trainer
from tests.helpers import DIGITS_TEST, TINY, heads, read_jsonl, run_cli, tiny_config


def _tiny(tmp_path, *overrides: str) -> Trainer:
    """One epoch on digits' test split, 256 per step, the digits preset's views; ``--set``
    style overrides."""
    sections = {"data": {"split": "test"}, "train": {"epochs": 1, "batch_size": 256}}
    for section, values in parse_set(list(overrides)).items():
        sections.setdefault(section, {}).update(values)
    return Trainer(tiny_config(**sections), tmp_path / "run", log=lambda m: None)


def test_selection_scores_heads_without_changing_the_model(tmp_path):
    trainer = _tiny(tmp_path, "model.heads=[4,4,6]")
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    rng = torch.get_rng_state()
    losses = trainer.selection_losses()
    assert len(losses) == 3 and all(v > 0 for v in losses)
    assert losses == trainer.selection_losses()  # the same fresh views every time
    assert torch.equal(torch.get_rng_state(), rng)  # training RNG streams untouched
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm stats included


@pytest.mark.parametrize("candidates,passes", [("[4,6]", 1), ("[4,4,6]", 0)])
def test_no_selection_when_nothing_to_choose_or_disabled(tmp_path, candidates, passes):
    trainer = _tiny(tmp_path, f"model.heads={candidates}", f"train.selection_passes={passes}")
    assert trainer.selection_losses() is None


@pytest.fixture(scope="module")
def candidates_run(tmp_path_factory):
    """One epoch on digits' test split with three 5-class candidates and an 8-class head."""
    out = tmp_path_factory.mktemp("selection") / "run"
    code, stdout, err = run_cli(
        "train", "--out", out, "--epochs", "1", *DIGITS_TEST, *TINY, *heads(5, 5, 5, 8)
    )
    assert code == 0, err
    run_heads = json.loads((out / "eval.json").read_text())["heads"]
    pick = next(h for h in range(3) if run_heads[h]["selected"])
    return out, stdout, err, run_heads, pick


def test_cli_marks_the_lowest_loss_head_in_eval_json_table_and_metrics(candidates_run):
    out, stdout, err, run_heads, pick = candidates_run
    losses = [h["selection_loss"] for h in run_heads]
    assert [h["selected"] for h in run_heads] == select_heads([5, 5, 5, 8], losses)
    assert f"5 classes: head {pick}" in err and SELECTED_NOTE in stdout
    records = read_jsonl(out / "metrics.jsonl")
    (record,) = [r["head_selection"] for r in records if "head_selection" in r]
    assert record["selected"] == [h["selected"] for h in run_heads]
    assert load_checkpoint(out / "checkpoint.pt")["state"]["selection_loss"] == losses


def test_evaluate_report_and_load_use_the_selected_head(candidates_run, tmp_path):
    out, _, _, run_heads, pick = candidates_run
    code, stdout, err = run_cli(
        "evaluate", out / "checkpoint.pt", "--json", tmp_path / "e.json", "--device", "cpu"
    )
    assert code == 0, err
    scored = json.loads((tmp_path / "e.json").read_text())["heads"]
    assert [h["selected"] for h in scored] == [h["selected"] for h in run_heads]
    assert [h["acc"] for h in scored] == pytest.approx([h["acc"] for h in run_heads])
    assert SELECTED_NOTE in stdout

    model = selfclassifier.load(out / "checkpoint.pt")
    assert model.default_head == pick
    images = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    classes, _ = model.predict(images)
    assert torch.equal(classes, model.predict(images, head=pick)[0])

    code, _, err = run_cli(
        "report", out / "checkpoint.pt", "--out", tmp_path / "rep", "--device", "cpu"
    )
    assert code == 0, err
    assert f"head {pick} (5 classes)" in (tmp_path / "rep" / "index.html").read_text()


def test_more_training_clears_the_selection_until_it_ends(tmp_path):
    trainer = _tiny(tmp_path, "model.heads=[4,4,6]")
    trainer.fit()
    assert len(load_checkpoint(tmp_path / "run" / "checkpoint.pt")["state"]["selection_loss"]) == 3
    trainer.state.selection_loss = [1.0, 2.0, 3.0]
    trainer._end_epoch(1, 0.0)  # what a resumed run does after each further epoch
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["state"]["selection_loss"] == []


def test_frozen_backbone_runs_score_their_candidate_heads_too(tmp_path):
    trainer = _tiny(tmp_path, "model.heads=[4,4]", "model.freeze_backbone=true")
    losses = trainer.selection_losses()  # views drawn from the cached backbone features
    assert len(losses) == 2 and all(0 < v < 10 for v in losses)
