"""Errors users see, each carrying the exit code the command line ends with.

Every failure a user can cause or fix is a :class:`SelfClassifierError`; ``str(e)`` is one
line that names the bad input and how to fix it. The command line prints it as
``error: ...`` and exits with ``e.exit_code``:

* 1 (``EXIT_FAILED``) -- the run failed while running (non-finite loss, a checkpoint write);
* 2 (``EXIT_BAD_INPUT``) -- bad input or configuration, found before any training step;
* 128 + signal -- stopped by a signal after saving a checkpoint (:class:`Interrupted`).

Each class keeps the built-in base it always had (``ValueError`` or ``RuntimeError``), so
code that caught those still does.

>>> e = CheckpointWriteError("disk full")
>>> isinstance(e, CheckpointError), e.exit_code, str(DataError("x")), DataError.exit_code
(True, 1, 'x', 2)
"""

from __future__ import annotations

import os

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_SIGNAL_BASE = 128


class SelfClassifierError(Exception):
    """Base of every error the command line reports in one line; ``exit_code`` says how."""

    exit_code = EXIT_BAD_INPUT
    prefix = "error"  # what the command line prints before the message


class ConfigError(SelfClassifierError, ValueError):
    """A configuration value is invalid; the message names the key and how to fix it."""


class DataError(SelfClassifierError, ValueError):
    """A dataset cannot be read; the message names the path and how to fix it."""


class UnreadableImage(DataError):
    """One image file cannot be decoded (not an image, truncated, unsupported, too large)."""


class UnknownBackbone(SelfClassifierError, ValueError):
    """``model.backbone`` names no known architecture."""


class CheckpointError(SelfClassifierError, RuntimeError):
    """A checkpoint is missing, unsafe, corrupt or does not match the run."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (disk full, read-only): the run failed, not the input."""

    exit_code = EXIT_FAILED


class ExportError(SelfClassifierError, ValueError):
    """A model cannot be exported in the asked format."""


class CLIError(SelfClassifierError):
    """A user mistake the command line reports in one line (exit code 2)."""


class TrainingError(SelfClassifierError, RuntimeError):
    """Training cannot go on; ``str(e)`` is one line saying why and what to do."""

    exit_code = EXIT_FAILED


class Interrupted(SelfClassifierError, RuntimeError):
    """A stop signal arrived and the checkpoint is saved; ``signum`` says which signal."""

    prefix = "stopped"

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum
        self.exit_code = EXIT_SIGNAL_BASE + signum


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters), or its type name."""
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def one_line(text, limit: int | None = None) -> str:
    """``text`` with every run of whitespace (newlines included) made one space, optionally
    cut to ``limit`` characters."""
    text = " ".join(str(text).split())
    if limit is not None and len(text) > limit:
        return text[: limit - 3] + "..."
    return text


def printable(path: str) -> str:
    """A path (or any text) safe to print on one line: undecodable bytes and control
    characters (tabs and newlines included) escaped.

    >>> printable("a\\tb\\nc")
    'a\\\\tb\\\\nc'
    """
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
