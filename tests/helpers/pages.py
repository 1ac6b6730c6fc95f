"""Reading the report's HTML, and opening it in a real headless browser."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest


class _PageParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.sections, self.links, self.ids, self.areas = [], [], [], set(), []
        self.rows = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "img":
            self.imgs.append(attrs)
        elif tag == "section":
            self.sections.append(attrs)
        elif tag == "a":
            self.links.append(attrs.get("href", ""))
        elif tag == "area":
            self.areas.append(attrs)
        elif tag == "tr" and "data-head" in attrs:
            self.rows.append(attrs)


def parse(index: pathlib.Path) -> _PageParser:
    parser = _PageParser()
    parser.feed(index.read_text(encoding="utf-8"))
    return parser


def assert_img_srcs_resolve(index: pathlib.Path) -> list[dict]:
    imgs = parse(index).imgs
    assert imgs
    for img in imgs:
        src = img["src"]
        assert not src.startswith(("/", "file:", "http")), src  # relative, so the folder moves
        assert (index.parent / src).is_file(), src
    return imgs


# ----------------------------------------------------------------------------- browser


def find_chromium() -> str | None:
    """The first Chromium-like browser on PATH, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def require_chromium() -> str:
    """Chromium's path; skip without one, except under CI, which must run the browser test."""
    path = find_chromium()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but no chromium on PATH: install the Debian package `chromium`")
        pytest.skip("no chromium on PATH (apt-get install -y chromium)")
    return path


def run_headless(chromium: str, profile: pathlib.Path, *args: str) -> str:
    """Chromium itself is the process here (a browser, not python)."""
    flags = [
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-gpu",
        "--allow-file-access-from-files",
        f"--user-data-dir={profile}",  # a fresh profile: no first-run state, no lock clashes
        "--virtual-time-budget=5000",  # let window.onload run before dumping
    ]
    result = subprocess.run(
        [chromium, *flags, *args], capture_output=True, text=True, timeout=90, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def body_counts(dom: str) -> tuple[dict, dict]:
    """The page's own counts on <body>: ``data-*-images`` and ``data-map-*`` attributes."""
    body = re.search(r"<body([^>]*)>", dom)
    assert body, dom[:2000]
    images = dict(re.findall(r'data-([a-z-]+)-images="(\d+)"', body.group(1)))
    found = dict(re.findall(r'data-map-([a-z-]+)="([^"]*)"', body.group(1)))
    return images, found
