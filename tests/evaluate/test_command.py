"""``selfclassifier evaluate`` (evaluate/command.py) on tiny trained runs, in process: the
heads (with label-free scores), kNN, linear probe, k-means and superclasses, ours and the
authors' protocols, pixel baselines without a checkpoint, and bad input in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from selfclassifier.data.arrays import write_idx
from selfclassifier.data.sources import build_dataset
from selfclassifier.evaluate.authors import kmeans_authors
from selfclassifier.evaluate.metrics import LABEL_FREE_NOTE
from selfclassifier.evaluate.protocols import kmeans_metrics, knn_top1
from tests.helpers import run_cli
from tests.helpers.images import write_images

HEAD_KEYS = {"classes", "nmi", "ami", "ari", "acc"}
WHERE_KEYS = {"memory", "memory_samples", "queries", "query_samples"}


def evaluate(tmp_path, *args) -> tuple[dict, str]:
    """Run ``selfclassifier evaluate ARGS --json FILE`` in process: (parsed FILE, stdout)."""
    path = tmp_path / "eval.json"
    code, out, err = run_cli(
        "evaluate", *args, "--device", "cpu", "--workers", "0", "--json", path
    )  # fmt: skip
    assert code == 0, err
    return json.loads(path.read_text()), out


def evaluate_json(tmp_path, *args) -> dict:
    return evaluate(tmp_path, *args)[0]


def assert_scores(scores: dict) -> None:
    for key in ("nmi", "ami", "ari", "acc"):
        assert isinstance(scores[key], float), key
        assert -1.0 <= scores[key] <= 1.0, (key, scores[key])


# ----------------------------------------------------------------------------- digits


def test_evaluate_defaults_reproduce_training_scores(digits_run, tmp_path):
    """No --data: the recorded data and split, so the heads match train's eval.json."""
    # The batch size of training's own evaluation, so even float ties break the same way.
    result = evaluate_json(tmp_path, str(digits_run / "checkpoint.pt"), "--batch-size", "512")
    assert set(result) == {"checkpoint", "data", "features", "heads", "heads_protocol"}
    assert result["heads_protocol"] == "ours"
    assert result["data"] == {"path": "digits", "split": "test", "samples": 450, "input_size": 8}
    trained = json.loads((digits_run / "eval.json").read_text())["heads"]
    assert len(result["heads"]) == len(trained)
    for ours, theirs in zip(result["heads"], trained, strict=True):
        assert ours == pytest.approx(theirs)


def test_evaluate_every_protocol(digits_run, tmp_path):
    ckpt = str(digits_run / "checkpoint.pt")
    parity = tmp_path / "parity.tsv"
    parity.write_text("# digit -> parity\n" + "".join(f"{d}\t{'eo'[d % 2]}\n" for d in range(10)))
    result, printed = evaluate(
        tmp_path, ckpt, "--knn", "--linear", "--kmeans", "--superclasses", str(parity)
    )
    assert set(result) == {
        "checkpoint", "data", "features", "heads", "heads_protocol", "knn", "linear", "kmeans",
        "superclasses",
    }  # fmt: skip
    for key in ("knn", "linear", "kmeans", "superclasses"):
        assert result[key]["protocol"] == "ours", key
    assert result["features"] == "backbone"
    assert [h["classes"] for h in result["heads"]] == [10, 20]
    for head in result["heads"]:
        assert HEAD_KEYS <= set(head)
        assert_scores(head)
    assert "acc_many_to_one" in result["heads"][1]  # 20 classes > 10 labels
    knn, linear = result["knn"], result["linear"]
    assert {"k", "temperature", "top1"} | WHERE_KEYS <= set(knn)
    assert knn["k"] == 20 and knn["temperature"] == 0.07
    # Digits' fixed split: train-split memory, test-split queries (the evaluation data here).
    assert (knn["memory_samples"], knn["query_samples"]) == (1347, 450)
    assert {"top1", "train_top1"} | WHERE_KEYS <= set(linear)
    for value in (knn["top1"], linear["top1"], linear["train_top1"]):
        assert 0.0 <= value <= 1.0
    # Even after one tiny epoch, frozen features beat chance (0.1) by far.
    assert knn["top1"] > 0.3 and linear["top1"] > 0.3
    assert result["kmeans"]["k"] == 10
    assert_scores(result["kmeans"])
    sup = result["superclasses"]
    assert sup["classes"] == 2 and sup["names"] == ["e", "o"]
    assert [h["classes"] for h in sup["heads"]] == [10, 20]
    assert all("acc_many_to_one" in h for h in sup["heads"])  # both heads > 2 superclasses
    assert f"top-1 {knn['top1']:.4f}" in printed and "k-means (k=10" in printed
    assert "superclasses (2, from" in printed


# ----------------------------------------------------------------------------- the authors'


AUTHORS_REPO = "elad-amrani/self-classifier"


def test_evaluate_both_protocols_side_by_side(digits_run, tmp_path):
    ckpt = str(digits_run / "checkpoint.pt")
    parity = tmp_path / "parity.tsv"
    parity.write_text("".join(f"{d}\t{'eo'[d % 2]}\n" for d in range(10)))
    result, printed = evaluate(
        tmp_path, ckpt, "--knn", "--linear", "--kmeans", "--superclasses", str(parity),
        "--protocol", "both", "--linear-epochs", "1", "--linear-batch-size", "512",
    )  # fmt: skip
    ours = {"knn", "linear", "kmeans", "superclasses"}
    theirs = {f"{key}_authors" for key in ours | {"heads"}}
    assert (
        set(result) == {"checkpoint", "data", "features", "heads", "heads_protocol"} | ours | theirs
    )
    assert result["heads_protocol"] == "ours"
    for key in ours:
        assert result[key]["protocol"] == "ours", key
    for key in theirs:
        assert result[key]["protocol"] == "authors", key
        assert result[key]["reference"].startswith(AUTHORS_REPO + " src/"), key
    assert result["knn"]["k"] == 20 and result["knn"]["temperature"] == 0.07  # ours unchanged

    knn = result["knn_authors"]
    assert knn["k"] == [10, 20, 100, 200] and knn["temperature"] == 0.1
    assert (knn["memory_samples"], knn["query_samples"]) == (1347, 450)
    assert list(knn["top1_by_k"]) == ["10", "20", "100", "200"]
    assert result["kmeans_authors"]["k"] == 10 and result["kmeans_authors"]["samples"] == 450

    linear = result["linear_authors"]
    assert (linear["epochs"], linear["batch_size"], linear["lr"]) == (1, 512, 0.8)
    assert linear["features"] == "backbone" and linear["memory_samples"] == 1347
    assert 0.0 <= linear["top1"] <= linear["best_top1"] <= 1.0

    # Heads: NMI is the same formula; ACC differs only where a head over-clusters.
    heads = result["heads_authors"]
    assert heads["samples"] == 450
    for mine, authors in zip(result["heads"], heads["heads"], strict=True):
        assert authors["classes"] == mine["classes"]
        assert authors["nmi"] == pytest.approx(mine["nmi"])
        assert mine["acc"] - 1e-9 <= authors["acc"] <= mine.get("acc_many_to_one", 1.0) + 1e-9
    # Superclasses: theirs keeps NMI against the fine labels, ours is against the superclasses.
    sup = result["superclasses_authors"]
    assert (sup["classes"], sup["fine_classes"], sup["samples"]) == (2, 10, 450)
    for fine, authors in zip(heads["heads"], sup["heads"], strict=True):
        assert authors["nmi"] == pytest.approx(fine["nmi"])
        assert authors["acc"] >= fine["acc"] - 1e-9  # a right fine match is a right superclass

    assert "kNN, authors' protocol (T=0.1" in printed and "k=200" in printed
    assert "linear probe, authors' recipe (1 epochs" in printed
    assert "superclasses, authors' scoring (2, from" in printed


def test_authors_knn_and_kmeans_on_pixels_known_answer(tmp_path):
    """On raw pixels (no model) the authors' kNN and k-means are numbers we can compute here:
    memory = digits' train split, queries = its test split."""
    args = ("--knn", "--kmeans", "--features", "pixels", "--data", "digits", "--split", "test")
    result = evaluate_json(tmp_path, *args, "--protocol", "authors")
    assert set(result) == {"checkpoint", "data", "features", "knn_authors", "kmeans_authors"}
    train, test = (build_dataset("digits", split) for split in ("train", "test"))
    raw = [ds.images.flatten(1).float() / 255 for ds in (train, test)]
    for k, top1 in result["knn_authors"]["top1_by_k"].items():
        expected = knn_top1(raw[0], train.targets, raw[1], test.targets, int(k), temperature=0.1)
        assert top1 == pytest.approx(expected, abs=1e-6), k
    kmeans = result["kmeans_authors"]
    expected = kmeans_authors(raw[0], raw[1], test.targets, k=10)
    assert {m: kmeans[m] for m in expected} == pytest.approx(expected, abs=1e-6)
    assert kmeans["acc"] > 0.6  # pixels of digits cluster well


def test_evaluate_authors_only_with_a_partial_mapping(digits_run, tmp_path):
    """BREEDS-like: the mapping covers digits 0-5 only. Ours refuses it, theirs scores the
    images of those classes."""
    ckpt = str(digits_run / "checkpoint.pt")
    partial = tmp_path / "partial.tsv"
    partial.write_text("0\tlow\n1\tlow\n2\tlow\n3\thigh\n4\thigh\n5\thigh\n")
    args = [ckpt, "--superclasses", str(partial), "--device", "cpu", "--workers", "0"]
    code, _, err = run_cli("evaluate", *args)
    assert code == 2
    assert "4 class(es) have no superclass" in err
    result = evaluate_json(tmp_path, ckpt, "--superclasses", str(partial), "--protocol", "authors")
    assert set(result) == {
        "checkpoint", "data", "features", "heads", "heads_protocol", "heads_authors",
        "superclasses_authors",
    }  # fmt: skip
    sup = result["superclasses_authors"]
    test_labels = build_dataset("digits", "test").targets
    assert sup["fine_classes"] == 6 and sup["samples"] == int((test_labels < 6).sum())
    assert sup["names"] == ["high", "low"]


def test_authors_linear_probe_needs_a_model():
    args = ["--linear", "--features", "pixels", "--data", "digits", "--protocol", "authors"]
    code, _, err = run_cli("evaluate", *args)
    assert code == 2
    err = err.strip().splitlines()
    assert len(err) == 1 and "give a CHECKPOINT" in err[0]


def test_evaluate_pixel_features_known_answer(digits_run, tmp_path):
    """Pixels are digits' raw intensities, whatever the model learnt: kNN and k-means on
    them are fixed numbers we can compute here without the model."""
    ckpt = str(digits_run / "checkpoint.pt")
    result = evaluate_json(tmp_path, ckpt, "--knn", "--kmeans", "--features", "pixels")
    assert result["features"] == "pixels"
    train, test = (build_dataset("digits", split) for split in ("train", "test"))
    raw = [ds.images.flatten(1).float() / 255 for ds in (train, test)]
    expected = knn_top1(raw[0], train.targets, raw[1], test.targets, k=20)
    assert result["knn"]["top1"] == pytest.approx(expected, abs=1e-6)
    assert expected > 0.9  # sklearn's digits are easy for kNN on pixels
    kmeans = kmeans_metrics(raw[1], test.targets, k=10)
    assert result["kmeans"] == pytest.approx({"k": 10, **kmeans, "protocol": "ours"}, abs=1e-6)


def test_pixel_baselines_need_no_checkpoint(digits_run, tmp_path):
    """``evaluate --features pixels --data D`` without a model gives the same baselines as
    through a checkpoint whose input is the native resolution (digits: 8 px)."""
    args = ("--knn", "--linear", "--kmeans", "--features", "pixels", "--data", "digits")
    bare = evaluate_json(tmp_path, *args)
    with_model = evaluate_json(tmp_path, str(digits_run / "checkpoint.pt"), *args)
    assert "heads" not in bare and "input_size" not in bare["data"]  # no model ran
    assert bare["data"] == {k: v for k, v in with_model["data"].items() if k != "input_size"}
    for protocol in ("knn", "kmeans"):
        assert bare[protocol] == pytest.approx(with_model[protocol], abs=1e-6)
    assert bare["linear"]["top1"] == pytest.approx(with_model["linear"]["top1"], abs=0.02)


def test_pixel_baselines_on_an_idx_folder_at_native_size(tmp_path):
    """Two well-separated classes of 12x10 images: k-means on pixels is perfect, and the
    split flag picks the part of the IDX files scored."""
    rng = np.random.default_rng(0)
    root = tmp_path / "idx"
    root.mkdir()
    for prefix, n in (("train", 40), ("t10k", 20)):
        labels = np.arange(n) % 2
        images = rng.integers(0, 30, (n, 12, 10))
        images[labels == 0, :, :5] += 200  # bright left half vs bright right half
        images[labels == 1, :, 5:] += 200
        write_idx(str(root / f"{prefix}-images-idx3-ubyte.gz"), images.astype(np.uint8))
        write_idx(str(root / f"{prefix}-labels-idx1-ubyte.gz"), labels.astype(np.uint8))
    result, first = evaluate(tmp_path, "--kmeans", "--features", "pixels", "--data", str(root))
    assert result["data"]["samples"] == 60 and result["kmeans"]["acc"] == 1.0
    result, second = evaluate(
        tmp_path, "--kmeans", "--features", "pixels", "--data", str(root), "--split", "test"
    )
    assert result["data"]["samples"] == 20
    assert "k-means (k=2, pixels features)" in first + second


@pytest.mark.parametrize(
    "args, message",
    [
        (["--kmeans"], "give a CHECKPOINT"),
        (["--kmeans", "--data", "digits"], "give a CHECKPOINT"),
        (["--kmeans", "--features", "pixels", "--data", "{folder}"], "same-size images"),
        (["--features", "pixels", "--data", "digits", "--superclasses", "x"], "--superclasses"),
        (["--features", "pixels", "--data", "digits", "--eval-size", "12"], "--eval-size"),
    ],
)
def test_checkpoint_free_evaluate_errors(tmp_path, args, message):
    folder = write_images(tmp_path / "folder", per_class=2)
    args = [a.format(folder=folder) for a in args]
    code, _, err = run_cli("evaluate", *args)
    assert code == 2
    err = err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_evaluate_with_train_data(digits_run, tmp_path):
    """--train-data is the whole memory (here RGB files read as grey for a 1-channel model);
    the evaluation data are the queries."""
    folder = write_images(tmp_path / "memory", per_class=2)
    result = evaluate_json(
        tmp_path, str(digits_run / "checkpoint.pt"), "--train-data", str(folder), "--knn"
    )
    where = {k: result["knn"][k] for k in WHERE_KEYS}
    assert where == {
        "memory": f"{folder} (all)",
        "memory_samples": 6,
        "queries": "digits (test)",
        "query_samples": 450,
    }


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.pt"], "not found"),
        (["{ckpt}", "--data", "{flat}"], "has no labels"),
        (["{ckpt}", "--superclasses", "{missing}"], "--superclasses: cannot read"),
        (["{ckpt}", "--superclasses", "{bad}"], "not one of the dataset's classes"),
        (["{ckpt}", "--data", "nowhere"], "is not a known dataset"),
        (["{ckpt}", "--device", "cuda:7"], "--device"),
    ],
)
def test_evaluate_errors_are_one_line(digits_run, tmp_path, args, message):
    if message == "--device" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(np.full((8, 8), 128, dtype=np.uint8)).save(flat / "a.png")
    bad = tmp_path / "bad.tsv"
    bad.write_text("ten\tbig\n")
    names = {"ckpt": digits_run / "checkpoint.pt", "flat": flat, "missing": tmp_path / "x.tsv"}
    args = [a.format(**names, bad=bad) for a in args]
    code, _, err = run_cli("evaluate", *args, "--workers", "0")
    assert code == 2
    err = err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]
    assert "Traceback" not in "\n".join(err)


def test_eval_size_changes_the_input_and_is_recorded(digits_run, tmp_path):
    """--eval-size runs the model at another side; the JSON says which, and the default is
    the recorded one (digits: 8 px crops, so 8 px input)."""
    ckpt = str(digits_run / "checkpoint.pt")
    default = evaluate_json(tmp_path, ckpt)
    code, _, err = run_cli("evaluate", ckpt, "--eval-size", "12", "--json", tmp_path / "e.json")
    assert code == 0 and "450 images, 12 px input" in err
    larger = json.loads((tmp_path / "e.json").read_text())
    assert default["data"]["input_size"] == 8 and larger["data"]["input_size"] == 12
    assert [h["classes"] for h in larger["heads"]] == [h["classes"] for h in default["heads"]]
    for head in larger["heads"]:
        assert_scores(head)
    code, _, err = run_cli("evaluate", ckpt, "--eval-size", "0")
    assert code == 2 and "--eval-size" in err


# ----------------------------------------------------------------------------- image folders


def test_evaluate_folder_without_splits_uses_a_holdout(folder_run, tmp_path):
    out, data = folder_run
    result = evaluate_json(tmp_path, str(out / "checkpoint.pt"), "--knn", "--linear", "--kmeans")
    assert result["data"] == {"path": str(data), "split": "all", "samples": 24, "input_size": 12}
    knn = result["knn"]
    assert (knn["memory_samples"], knn["query_samples"]) == (18, 6)
    assert "hold-out" in knn["memory"] and "hold-out" in knn["queries"]
    assert result["kmeans"]["k"] == 3
    # Three flat colours: any non-degenerate feature separates them.
    assert knn["top1"] == 1.0 and result["linear"]["top1"] == 1.0


def test_authors_protocols_on_image_files_with_a_holdout(folder_run, tmp_path):
    """The authors' linear probe decodes and crops the memory's files (the hold-out's 75%)."""
    out, _ = folder_run
    args = ("--knn", "--linear", "--kmeans", "--protocol", "authors", "--linear-epochs", "2")
    result = evaluate_json(tmp_path, str(out / "checkpoint.pt"), *args)
    for key in ("knn_authors", "linear_authors", "kmeans_authors"):
        record = result[key]
        assert (record["memory_samples"], record["query_samples"]) == (18, 6), key
        assert "hold-out" in record["memory"] and record["protocol"] == "authors"
    assert result["knn_authors"]["top1_by_k"]["10"] == 1.0  # three flat colours
    assert 0.0 <= result["linear_authors"]["top1"] <= result["linear_authors"]["best_top1"] <= 1
    assert "knn" not in result and "linear" not in result and "kmeans" not in result


# ----------------------------------------------------------------------------- without labels

FREE_KEYS = {"active_classes", "size_entropy", "silhouette"}


def assert_label_free(head: dict) -> None:
    assert FREE_KEYS <= set(head)
    assert 1 <= head["active_classes"] <= head["classes"]
    assert 0.0 <= head["size_entropy"] <= 1.0
    assert head["silhouette"] is None or -1.0 <= head["silhouette"] <= 1.0


def test_evaluate_and_train_report_label_free_scores(digits_run, tmp_path):
    path = tmp_path / "e.json"
    code, printed, err = run_cli(
        "evaluate", digits_run / "checkpoint.pt", "--device", "cpu", "--json", path,
        "--batch-size", "512",
    )  # fmt: skip
    assert code == 0, err
    assert "size_entropy" in printed and "silhouette" in printed and LABEL_FREE_NOTE in printed
    heads = json.loads(path.read_text())["heads"]
    assert [h["classes"] for h in heads] == [10, 20]
    for head in heads:
        assert_label_free(head)
    trained = json.loads((digits_run / "eval.json").read_text())["heads"]
    for ours, theirs in zip(heads, trained, strict=True):  # train's eval.json has them too
        assert {k: theirs[k] for k in FREE_KEYS} == pytest.approx({k: ours[k] for k in FREE_KEYS})
