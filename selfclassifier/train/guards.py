"""What keeps a run safe: stop signals, the output lock, non-finite values, and the crash
tests' fault injection. The loop asks these; none of them knows about the loop.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
from pathlib import Path

import torch
from torch import nn

from selfclassifier import dist
from selfclassifier.errors import CheckpointError, Interrupted, TrainingError

__all__ = [
    "RECOVERY_HINT",
    "Interrupted",
    "NonFiniteGuard",
    "StopNow",
    "StopSignals",
    "TrainingError",
    "first_nonfinite",
    "kill_self",
    "lock_output",
    "injected_fault",
]

RECOVERY_HINT = (
    "a lower learning rate (--lr or --set optim.lr=...), gradient clipping "
    "(--set optim.clip_grad=1.0) or --set train.precision=fp32; or add --skip-nonfinite to "
    "skip such steps"
)


class StopNow(KeyboardInterrupt):
    """A second stop signal: stop at once without saving (the last checkpoint is intact)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def first_nonfinite(model: nn.Module) -> str | None:
    """Name of the first parameter or float buffer holding NaN/inf, else None (one sync)."""
    tensors = [(k, v) for k, v in model.state_dict().items() if v.is_floating_point()]
    if not tensors:
        return None
    finite = torch.stack([torch.isfinite(v).all() for _, v in tensors])
    if bool(finite.all()):
        return None
    return tensors[int((~finite).nonzero()[0])][0]


TEST_KILL_ENV = "SELFCLASSIFIER_TEST_KILL_AT_STEP"


def injected_fault() -> tuple[int, str] | None:
    """Fault injection for the crash tests: ``N`` = SIGKILL right after global step N's update
    (before its checkpoint); ``N:save`` = SIGKILL inside the checkpoint write at step N, after
    the temporary file is complete and before it replaces the old checkpoint."""
    spec = os.environ.get(TEST_KILL_ENV, "").strip()
    if not spec:
        return None
    step, _, where = spec.partition(":")
    return int(step), where or "step"


def kill_self(*_args) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def lock_output(out: Path):
    """Hold a POSIX lock on OUT/.lock so two runs never train into one directory (a requeued
    job starting while the old one still writes). The kernel drops it when the process dies,
    even by SIGKILL; loader workers, being other processes, never hold it."""
    import fcntl

    f = open(out / ".lock", "a+")  # noqa: SIM115 - kept open for the whole run
    try:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        f.seek(0)
        owner = f.read().strip() or "unknown"
        f.close()
        if e.errno in (errno.EACCES, errno.EAGAIN):
            raise CheckpointError(
                f"another run (pid {owner}) is training into '{out}'; wait for it to end "
                "or pass another --out"
            ) from None
        return None  # a file system without locks: go on unlocked
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


class StopSignals:
    """SIGTERM / SIGINT ask the loop to checkpoint and stop at the next step boundary.

    A second signal stops at once (:class:`StopNow`); the checkpoint on disk is then the last
    one written, intact because writes are atomic. ``received`` is the first signal, on this
    rank only (the loop agrees with the other ranks at step boundaries).
    """

    def __init__(self):
        self.received: int | None = None

    @contextlib.contextmanager
    def installed(self):
        def ask_stop(signum, frame):
            if self.received is not None:
                raise StopNow(signum)
            self.received = signum  # no printing here: the handler may interrupt a print

        old = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                old[sig] = signal.signal(sig, ask_stop)
            except ValueError:  # not the main thread
                pass
        try:
            yield self
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)


class NonFiniteGuard:
    """Non-finite losses and gradient norms, found without making any step wait.

    ``flag`` records the first bad value on the device (as ``2 * global step + what``, what
    0 = loss, 1 = gradient norm); ``check`` raises it on every rank at the next log point or
    checkpoint, before anything is saved. ``skip`` is ``train.skip_nonfinite``'s decision,
    which must be known before stepping (all ranks decide together).
    """

    WHAT = ("loss", "gradient norm")

    def __init__(self, device: torch.device):
        self.device = device
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)

    def flag(self, value: torch.Tensor, global_step: int, what: int) -> None:
        code = 2 * global_step + what
        bad = ~torch.isfinite(value.detach()) & (self.first_bad < 0)
        self.first_bad = torch.where(bad, code, self.first_bad)

    def check(self, steps_per_epoch: int, last_good: str) -> None:
        """Raise on every rank if any rank had a non-finite value since the last check."""
        codes = [c for c in dist.gather_object(int(self.first_bad)) if c >= 0]
        if not codes:
            return
        step, what = divmod(min(codes), 2)
        epoch, in_epoch = divmod(step, steps_per_epoch)
        raise TrainingError(
            f"non-finite {self.WHAT[what]} at epoch {epoch} step {in_epoch} "
            f"(global step {step}); stopped, and {last_good}: rerun the same command "
            f"with {RECOVERY_HINT}"
        )

    def skip(self, value: torch.Tensor) -> bool:
        """Whether any rank saw a non-finite ``value`` (the step is then skipped)."""
        (nonfinite,) = dist.any_rank(not bool(torch.isfinite(value)), device=self.device)
        return nonfinite
