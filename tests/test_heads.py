"""The label-free rule for choosing among candidate heads: the lowest selection loss among
heads of equal size, and reading the recorded losses back from a checkpoint."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from selfclassifier.heads import select_heads, selection_losses_of


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


@pytest.mark.parametrize(
    "entry", [None, "oops", [1.0, 2.0], [1.0, 2.0, float("nan"), 1.0], [1, 2, "3", 4]]
)
def test_missing_or_malformed_selection_entries_mean_no_selection(entry):
    ckpt = {"state": {"epoch": 1} if entry is None else {"selection_loss": entry}}
    assert selection_losses_of(ckpt, 4) == []
    assert selection_losses_of({"state": {"selection_loss": [1, 2.5, 0.5, 3]}}, 4) == [
        1.0, 2.5, 0.5, 3.0,
    ]  # fmt: skip
