"""``cli.main`` as the user meets it: the real entry point, a separate interpreter, prints a
bad input as exactly one ``error:`` line on stderr (nothing on stdout) and exits 2. Every other
command test runs ``cli.main`` in process (``tests.helpers.run_cli``)."""

from __future__ import annotations

from tests.helpers import DIGITS_TEST, TINY, assert_one_error_line, heads, run_python


def test_real_entry_point_prints_one_line(tmp_path):
    proc = run_python(
        "-m", "selfclassifier", "train", "--out", tmp_path / "o", *DIGITS_TEST,
        "--epochs", "1", "--batch-size", "64", *TINY, *heads(1), timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == ""
    assert_one_error_line(proc.stderr, "model.heads[0] = 1: a head needs at least 2 classes")
