"""Score records (evaluate/scores.py): superclass scores, ours (clusters matched to the
superclasses) and the authors' (matched at the fine level), on answers known by hand."""

from __future__ import annotations

import pytest
import torch

from selfclassifier.data.arrays import TensorImageDataset
from selfclassifier.data.decode import DataError
from selfclassifier.evaluate.scores import (
    head_scores,
    superclass_mapping,
    superclass_scores,
    superclass_scores_authors,
)
from selfclassifier.inference import Outputs


def fake_outputs(labels, preds_per_head, classes_per_head) -> Outputs:
    """Outputs whose heads predict ``preds_per_head`` (one-hot probabilities)."""
    n = len(labels)
    probs = [
        torch.nn.functional.one_hot(torch.as_tensor(p), c).float()
        for p, c in zip(preds_per_head, classes_per_head, strict=True)
    ]
    return Outputs(torch.zeros(n, 4), torch.zeros(n, 2), probs, torch.as_tensor(labels))


def test_superclass_scores_known_answers(tmp_path):
    names = ["cat", "dog", "oak", "elm"]
    labels = [0, 1, 2, 3, 0, 1, 2, 3]
    out = fake_outputs(labels, [[0, 0, 1, 1, 0, 0, 1, 2], [5, 4, 3, 2, 5, 4, 3, 2]], [3, 6])
    mapping = tmp_path / "map.tsv"
    mapping.write_text("cat\tanimal\ndog\tanimal\noak\ttree\nelm\ttree\n")
    ds = TensorImageDataset(torch.zeros(8, 1, 2, 2, dtype=torch.uint8), labels, names)
    sup = superclass_scores(out, *superclass_mapping(str(mapping), ds))
    assert sup["names"] == ["animal", "tree"] and sup["classes"] == 2
    # Head 0 finds the superclasses except one elm, called class 2.
    assert sup["heads"][0]["acc"] == pytest.approx(7 / 8)
    assert sup["heads"][0]["acc_many_to_one"] == pytest.approx(1.0)
    # Head 1 finds the fine classes: perfect against them, and many-to-one on superclasses.
    assert sup["heads"][1]["acc_many_to_one"] == 1.0 and sup["heads"][1]["acc"] == 0.5
    # A one-to-one renaming of the classes changes no score.
    renamed = tmp_path / "renamed.tsv"
    renamed.write_text("".join(f"{n}\t{n.upper()}\n" for n in names))
    same = superclass_scores(out, *superclass_mapping(str(renamed), ds))
    for ours, fine in zip(same["heads"], head_scores(out), strict=True):
        assert ours == pytest.approx(fine)


def test_superclass_scores_authors_match_at_the_fine_level(tmp_path):
    names = ["cat", "dog", "oak", "trout"]
    labels = [1, 1, 1, 1, 0, 0, 2, 2, 3]
    # Cluster 1 holds a dog and two cats: matched to cat, so the dog is right as an animal.
    out = fake_outputs(labels, [[0, 0, 0, 1, 1, 1, 2, 2, 2]], [3])
    mapping = tmp_path / "map.tsv"
    mapping.write_text("cat\tanimal\ndog\tanimal\noak\tplant\n")  # no trout
    ds = TensorImageDataset(torch.zeros(9, 1, 2, 2, dtype=torch.uint8), labels, names)
    fine_to_super, super_names = superclass_mapping(str(mapping), ds, allow_missing=True)
    assert fine_to_super.tolist() == [0, 0, 1, -1]
    sup = superclass_scores_authors(out, fine_to_super, super_names, str(mapping))
    assert sup["samples"] == 8 and sup["fine_classes"] == 3  # the trout is left out
    assert sup["heads"][0]["acc"] == 1.0
    # Ours matches the three clusters to the two superclasses directly: 5 of 8 (trout unscored).
    assert superclass_scores(out, fine_to_super, super_names)["heads"][0]["acc"] == 5 / 8
    with pytest.raises(DataError, match="1 class\\(es\\) have no superclass"):
        superclass_mapping(str(mapping), ds)
