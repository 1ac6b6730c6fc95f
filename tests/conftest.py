"""Fixtures shared by every test folder; the plain functions are in tests/helpers/.

* ``make_images``: the image-folder factory (``tests.helpers.images.write_images``) writing
  under this test's tmp_path.
* ``one_thread``: one intra-op thread for the test.
* ``dataset_reads``: the datasets training read (to prove a check ran before any work).
* Tiny runs trained once per session through the CLI (in process), for the tests of what
  reads a finished run (evaluate, predict, report, resume checks): ``digits_run``,
  ``folder_run`` and ``tiny_digits_run``. Tests copy them before changing anything.
"""

from __future__ import annotations

import pytest

from tests.helpers import TINY, TINY_DIGITS, heads, run_cli
from tests.helpers import one_thread as _one_thread
from tests.helpers.images import write_images


@pytest.fixture
def make_images(tmp_path):
    """``make_images(name="images", **kwargs)``: ``write_images(tmp_path / name, **kwargs)``."""

    def make(name: str = "images", **kwargs):
        return write_images(tmp_path / name, **kwargs)

    return make


@pytest.fixture
def dataset_reads(monkeypatch) -> list:
    """Records every dataset read of training, to prove a check ran before any work."""
    from selfclassifier.train import setup as train_setup

    calls: list = []
    real = train_setup.build_dataset

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_setup, "build_dataset", spy)
    return calls


@pytest.fixture
def one_thread():
    with _one_thread():
        yield


def _train(out, *args) -> None:
    with _one_thread():
        code, _, err = run_cli("train", "--out", out, *args)
    assert code == 0, err[-3000:]


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """OUT of a 1-epoch run on digits' 450-image test split, with ``--eval-every 1``."""
    out = tmp_path_factory.mktemp("digits_run") / "run"
    _train(out, "--split", "test", "--epochs", "1", "--batch-size", "150", "--eval-every", "1",
           *TINY, *heads(10, 20))  # fmt: skip
    return out


@pytest.fixture(scope="session")
def folder_run(tmp_path_factory):
    """(OUT, data folder) of a 1-epoch RGB run on a generated 3-class ImageFolder (3 x 8
    noisy 12 px PNGs of one colour per class)."""
    base = tmp_path_factory.mktemp("folder_run")
    data = write_images(base / "data")
    out = base / "run"
    _train(out, "--data", data, "--epochs", "1", "--batch-size", "8", "--workers", "0",
           *TINY, *heads(3, 6), "--set", "augment.global_size=12",
           "--set", "augment.local_crops=0")  # fmt: skip
    return out, data


@pytest.fixture(scope="session")
def tiny_digits_run(tmp_path_factory):
    """OUT of ``train TINY_DIGITS --epochs 1``: a finished first epoch (checkpoint at step 7)."""
    out = tmp_path_factory.mktemp("tiny_digits_run") / "run"
    _train(out, *TINY_DIGITS, "--epochs", "1")
    return out
