"""The benchmark commands run and print the documented JSON (their figures are not tested)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from tests.helpers import run_cli

TINY_RECIPE = """
model: {backbone: resnet20, heads: [4, 6], hidden_dim: 32, out_dim: 16}
augment: {global_size: 32, local_size: 16, local_crops: 2}
optim: {optimizer: lars}
train: {queue_size: 64, device: cpu}
data: {workers: 0}
"""


def bench(*args) -> dict:
    """``selfclassifier bench ARGS`` in process; its JSON document."""
    code, out, err = run_cli("bench", *args)
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def bench_images(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "images"
    return out, bench("make-images", out, "--n", 6)


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    path = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    path.write_text(TINY_RECIPE)
    return path


def test_make_images_writes_realistic_jpegs(bench_images):
    out, report = bench_images
    files = sorted(out.glob("*.jpg"))
    assert report["images"] == len(files) == 6
    for f in files:
        with Image.open(f) as im:
            assert im.format == "JPEG" and im.size == (500, 375)
        assert 25_000 < f.stat().st_size < 120_000
    assert 30 < report["mean_kb"] < 100


def test_bench_data_measures_both_pipelines_in_one_run(bench_images, recipe):
    out, _ = bench_images
    result = bench(
        "data", "--images", out, "--pipeline", "classic,fast", "--workers", 0,
        "--recipe", recipe, "--batch-size", 2, "--batches", 2, "--device", "cpu",
    )  # fmt: skip
    assert [r["pipeline"] for r in result["runs"]] == ["classic", "fast"]
    for r in result["runs"]:
        assert {"pipeline", "workers", "images", "images_per_s", "images_per_s_per_worker"} <= set(
            r
        )
        assert r["images"] == 4 and r["images_per_s"] > 0
    ratio = result["runs"][1]["images_per_s"] / result["runs"][0]["images_per_s"]
    assert abs(result["fast_over_classic"] - ratio) < 0.01


@pytest.mark.parametrize("source", [["--synthetic"], ["--images"]])
def test_bench_train_reports_throughput_memory_and_data_wait(bench_images, recipe, source):
    out, _ = bench_images
    if source == ["--images"]:
        source = ["--images", out, "--set", "augment.pipeline=fast"]
    r = bench(
        "train", "--config", recipe, "--steps", 2, "--warmup", 1, "--batch-size", 4, *source
    )  # fmt: skip
    assert {
        "device",
        "images_per_s",
        "step_ms_median",
        "peak_mem_gib",
        "data_wait_fraction",
    } <= set(r)
    assert r["images_per_s"] > 0 and r["step_ms_median"] > 0
    assert 0 <= r["data_wait_fraction"] <= 1
    assert r["data"] == ("synthetic" if "--synthetic" in source else str(out))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_bench_train_on_a_builtin_dataset_reports_its_precision(precision):
    r = bench(
        "train", "--config", "digits", "--images", "digits", "--steps", 2, "--warmup", 1,
        "--batch-size", 8, "--device", "cpu", "--set", f"train.precision={precision}",
    )  # fmt: skip
    assert r["data"] == "digits" and r["images_per_s"] > 0
    assert r["precision"] == {"fp32": "float32", "bf16": "bfloat16"}[precision]
    assert r["channels_last"] is True


def test_bench_rejects_bad_input_in_one_line(tmp_path):
    code, _, err = run_cli("bench", "data", "--images", tmp_path, "--pipeline", "turbo")
    assert code == 2 and err.startswith("error:") and "turbo" in err
    assert "Traceback" not in err
