"""Choosing among candidate heads without labels: the lowest loss among heads of equal size."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli
from hypothesis import given
from hypothesis import strategies as st

from selfclassifier.config import load_config, parse_set
from selfclassifier.loss import head_losses, self_classifier_loss
from selfclassifier.metrics import SELECTED_NOTE, format_table, select_heads
from selfclassifier.train import Trainer


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


def test_cli_marks_the_lowest_loss_head_in_eval_json_table_and_metrics(tmp_path):
    out = tmp_path / "run"
    r = run_cli(
        "train", "--out", out, "--epochs", "1", "--split", "test", "--device", "cpu",
        "--set", "model.heads=[5,5,5,8]", "--set", "model.hidden_dim=32",
        "--set", "model.out_dim=16",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    heads = json.loads((out / "eval.json").read_text())["heads"]
    losses = [h["selection_loss"] for h in heads]
    assert [h["selected"] for h in heads] == select_heads([5, 5, 5, 8], losses)
    pick = [h for h in range(3) if heads[h]["selected"]][0]
    assert f"5 classes: head {pick}" in r.stderr and SELECTED_NOTE in r.stdout + r.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    (record,) = [r["head_selection"] for r in records if "head_selection" in r]
    assert record["selected"] == [h["selected"] for h in heads]


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
