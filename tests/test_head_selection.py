"""Choosing among candidate heads without labels: the lowest loss among heads of equal size."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli
from hypothesis import given
from hypothesis import strategies as st

import selfclassifier
from selfclassifier.config import load_config, parse_set
from selfclassifier.evaluate.metrics import SELECTED_NOTE, format_table
from selfclassifier.heads import select_heads, selection_losses_of
from selfclassifier.loss import head_losses, self_classifier_loss
from selfclassifier.storage import load_checkpoint
from selfclassifier.train.loop import Trainer


@given(
    st.lists(
        st.tuples(st.sampled_from([2, 3, 10]), st.floats(0, 10, allow_nan=False)),
        min_size=1,
        max_size=12,
    )
)
def test_exactly_one_lowest_loss_head_per_class_count(heads):
    classes, losses = [c for c, _ in heads], [v for _, v in heads]
    selected = select_heads(classes, losses)
    for c in set(classes):
        members = [h for h, k in enumerate(classes) if k == c]
        picked = [h for h in members if selected[h]]
        assert len(picked) == 1
        assert losses[picked[0]] == min(losses[h] for h in members)
        assert picked[0] == min(h for h in members if losses[h] == losses[picked[0]])


@pytest.mark.parametrize("views", [2, 4])
def test_head_losses_are_each_heads_loss_and_average_to_the_loss(views):
    torch.manual_seed(0)
    logits = [[torch.randn(16, c) for _ in range(views)] for c in (3, 3, 5)]
    per_head = head_losses(logits, 0.1, 0.05)
    assert per_head.shape == (3,)
    for h, head in enumerate(logits):
        torch.testing.assert_close(per_head[h], self_classifier_loss([head], 0.1, 0.05))
    torch.testing.assert_close(per_head.mean(), self_classifier_loss(logits, 0.1, 0.05))


def _tiny(tmp_path, *overrides: str) -> Trainer:
    cfg = load_config(
        "digits",
        parse_set(
            [
                "model.hidden_dim=32",
                "model.out_dim=16",
                "train.epochs=1",
                "train.batch_size=256",
                "train.device=cpu",
                "data.split=test",
                *overrides,
            ]
        ),
    )
    return Trainer(cfg, tmp_path / "run", log=lambda m: None)


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


@pytest.mark.parametrize("heads,passes", [("[4,6]", 1), ("[4,4,6]", 0)])
def test_no_selection_when_nothing_to_choose_or_disabled(tmp_path, heads, passes):
    trainer = _tiny(tmp_path, f"model.heads={heads}", f"train.selection_passes={passes}")
    assert trainer.selection_losses() is None


@pytest.fixture(scope="module")
def candidates_run(tmp_path_factory):
    """One epoch on digits' test split with three 5-class candidates and an 8-class head."""
    out = tmp_path_factory.mktemp("selection") / "run"
    r = run_cli(
        "train", "--out", out, "--epochs", "1", "--split", "test", "--device", "cpu",
        "--set", "model.heads=[5,5,5,8]", "--set", "model.hidden_dim=32",
        "--set", "model.out_dim=16",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    heads = json.loads((out / "eval.json").read_text())["heads"]
    pick = next(h for h in range(3) if heads[h]["selected"])
    return out, r, heads, pick


def test_cli_marks_the_lowest_loss_head_in_eval_json_table_and_metrics(candidates_run):
    out, r, heads, pick = candidates_run
    losses = [h["selection_loss"] for h in heads]
    assert [h["selected"] for h in heads] == select_heads([5, 5, 5, 8], losses)
    assert f"5 classes: head {pick}" in r.stderr and SELECTED_NOTE in r.stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    (record,) = [r["head_selection"] for r in records if "head_selection" in r]
    assert record["selected"] == [h["selected"] for h in heads]
    assert load_checkpoint(out / "checkpoint.pt")["state"]["selection_loss"] == losses


def test_evaluate_report_and_load_use_the_selected_head(candidates_run, tmp_path):
    out, _, heads, pick = candidates_run
    r = run_cli("evaluate", out / "checkpoint.pt", "--json", tmp_path / "e.json", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    scored = json.loads((tmp_path / "e.json").read_text())["heads"]
    assert [h["selected"] for h in scored] == [h["selected"] for h in heads]
    assert [h["acc"] for h in scored] == pytest.approx([h["acc"] for h in heads])
    assert SELECTED_NOTE in r.stdout

    model = selfclassifier.load(out / "checkpoint.pt")
    assert model.default_head == pick
    images = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    classes, _ = model.predict(images)
    assert torch.equal(classes, model.predict(images, head=pick)[0])

    r = run_cli("report", out / "checkpoint.pt", "--out", tmp_path / "rep", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert f"head {pick} (5 classes)" in (tmp_path / "rep" / "index.html").read_text()


@pytest.mark.parametrize(
    "entry", [None, "oops", [1.0, 2.0], [1.0, 2.0, float("nan"), 1.0], [1, 2, "3", 4]]
)
def test_missing_or_malformed_selection_entries_mean_no_selection(entry):
    ckpt = {"state": {"epoch": 1} if entry is None else {"selection_loss": entry}}
    assert selection_losses_of(ckpt, 4) == []
    assert selection_losses_of({"state": {"selection_loss": [1, 2.5, 0.5, 3]}}, 4) == [
        1.0, 2.5, 0.5, 3.0,
    ]  # fmt: skip


def test_more_training_clears_the_selection_until_it_ends(tmp_path):
    trainer = _tiny(tmp_path, "model.heads=[4,4,6]")
    trainer.fit()
    assert len(load_checkpoint(tmp_path / "run" / "checkpoint.pt")["state"]["selection_loss"]) == 3
    trainer.state.selection_loss = [1.0, 2.0, 3.0]
    trainer._end_epoch(1, 0.0)  # what a resumed run does after each further epoch
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["state"]["selection_loss"] == []


def test_table_marks_selected_heads_only_when_scored():
    plain = [{"classes": 4, "nmi": 0.5, "ami": 0.5, "ari": 0.4, "acc": 0.6}]
    assert "*" not in format_table(plain) and "selection_loss" not in format_table(plain)
    scored = [
        {**plain[0], "selection_loss": 1.25, "selected": False},
        {**plain[0], "selection_loss": 1.0, "selected": True},
    ]
    lines = format_table(scored).splitlines()
    assert lines[0].split()[-1] == "selection_loss"
    assert lines[1].split()[0] == "0" and lines[2].split()[0] == "1*"
    assert lines[2].split()[-1] == "1.0000" and lines[-1] == SELECTED_NOTE


def test_frozen_backbone_runs_score_their_candidate_heads_too(tmp_path):
    trainer = _tiny(tmp_path, "model.heads=[4,4]", "model.freeze_backbone=true")
    losses = trainer.selection_losses()  # views drawn from the cached backbone features
    assert len(losses) == 2 and all(0 < v < 10 for v in losses)
