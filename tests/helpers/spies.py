"""A torch function mode that records every call making the host wait for a device value."""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

SYNCING = {"item", "__bool__", "__float__", "__int__", "__index__", "tolist", "nonzero",
           "masked_select", "unique", "numpy", "cpu"}  # fmt: skip


class SyncSpy(TorchFunctionMode):
    """Records every call that makes the host wait for a device value."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        bool_index = name in ("__getitem__", "__setitem__") and any(
            isinstance(a, torch.Tensor) and a.dtype == torch.bool for a in _flat(args[1:2])
        )
        if name in SYNCING or bool_index:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def _flat(items):
    for a in items:
        if isinstance(a, tuple | list):
            yield from _flat(a)
        else:
            yield a
