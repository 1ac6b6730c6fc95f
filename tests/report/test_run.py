"""``selfclassifier report`` on a trained run (report/run.py): the gallery of a head, every
head's label-free scores, the embedding map, and the page in a real headless browser."""

from __future__ import annotations

from PIL import Image

from selfclassifier.report.embedding_map import MAP_PX
from tests.helpers import run_cli
from tests.helpers.pages import (
    assert_img_srcs_resolve,
    body_counts,
    parse,
    require_chromium,
    run_headless,
)


def test_report_on_digits(digits_run, tmp_path):
    report = tmp_path / "report"
    args = ["report", digits_run / "checkpoint.pt", "--out", report]
    code, out, err = run_cli(*args, "--head", "1", "--device", "cpu")
    assert code == 0, err
    assert f"wrote {report / 'index.html'}" in out
    page = (report / "index.html").read_text(encoding="utf-8")
    assert "head 1 (20 classes)" in page and "metrics" in page
    assert (report / "grid.png").is_file()
    imgs = assert_img_srcs_resolve(report / "index.html")
    assert 0 < len(imgs) <= 20 * 16
    code, _, err = run_cli(*args, "--head", "2")
    assert code == 2
    assert "--head 2: the model has heads 0..1" in err


def test_report_on_files_loads_in_headless_chromium(folder_run, tmp_path):
    chromium = require_chromium()
    out, data = folder_run
    report = tmp_path / "report"
    code, _, err = run_cli("report", out / "checkpoint.pt", "--out", report, "--workers", "0")
    assert code == 0, err
    index = report / "index.html"
    imgs = assert_img_srcs_resolve(index)
    sections = parse(index).sections
    assert 1 <= len(sections) <= 3
    dom = run_headless(chromium, tmp_path / "profile", "--dump-dom", index.resolve().as_uri())
    counts, _ = body_counts(dom)
    assert counts["broken"] == "0" and counts["loaded"] == counts["total"] == str(len(imgs))
    shot = tmp_path / "report.png"
    run_headless(
        chromium, tmp_path / "profile", "--window-size=1000,1400", f"--screenshot={shot}",
        index.resolve().as_uri(),
    )  # fmt: skip
    assert shot.stat().st_size > 10_000


def test_report_command_on_digits_draws_the_map_in_headless_chromium(digits_run, tmp_path):
    """`selfclassifier report` on a trained digits run: every head's label-free scores, and
    the map of all 450 images (default --map-points), whole and linked, in a real browser."""
    report = tmp_path / "report"
    ckpt = digits_run / "checkpoint.pt"
    code, _, err = run_cli("report", ckpt, "--out", report, "--device", "cpu")
    assert code == 0, err
    index = report / "index.html"
    page = parse(index)
    assert [r["data-head"] for r in page.rows] == ["0", "1"]
    text = index.read_text(encoding="utf-8")
    assert "<th>silhouette</th>" in text and "<th>size entropy</th>" in text
    assert "t-SNE of the embeddings of 450 of 450 images" in text
    assert Image.open(report / "map.png").size == (MAP_PX, MAP_PX)
    assert {a["href"][1:] for a in page.areas} <= {
        f"class-{s['data-class']}" for s in page.sections
    }
    assert all(link[1:] in page.ids for link in page.links if link.startswith("#"))

    chromium = require_chromium()
    dom = run_headless(chromium, tmp_path / "profile", "--dump-dom", index.resolve().as_uri())
    counts, found = body_counts(dom)
    assert counts["broken"] == "0"
    assert found["rendered"] == f"{MAP_PX}x{MAP_PX}" and found["dead-links"] == "0"

    code, _, err = run_cli("report", ckpt, "--out", tmp_path / "none", "--map-points", "0")
    assert code == 0, err
    assert not (tmp_path / "none" / "map.png").exists()
