"""``train --eval-every``: the monitor's kNN and head scores in metrics.jsonl at epoch ends."""

from __future__ import annotations

from tests.helpers import read_jsonl

HEAD_KEYS = {"classes", "nmi", "ami", "ari", "acc"}


def test_eval_every_logs_knn_and_heads(digits_run):
    records = read_jsonl(digits_run / "metrics.jsonl")
    epoch_ends = [r for r in records if "epoch_end" in r]
    assert len(epoch_ends) == 1
    knn = epoch_ends[0]["knn"]
    assert knn["k"] == 20 and 0.0 <= knn["top1"] <= 1.0
    assert [h["classes"] for h in epoch_ends[0]["heads"]] == [10, 20]
    assert all(HEAD_KEYS <= set(h) for h in epoch_ends[0]["heads"])
