"""Read the tensors of any ``torch.save`` file without running code from it.

``torch.load(weights_only=True)`` refuses a whole file as soon as it meets one object it does
not know, such as the pickled nearest-neighbour queue in the Self-Classifier authors'
checkpoints. :func:`read_tensors` reads such files anyway: its unpickler resolves only a short
allow-list of harmless names (tensor rebuilders, ``OrderedDict``, builtin containers, dtypes)
and turns every other global into an inert :class:`Opaque` placeholder that records its
arguments and never calls anything. Tensor data comes straight from the zip archive's
``data/<key>`` records. No ``__reduce__``, ``__setstate__`` or import from the file runs.
"""

from __future__ import annotations

import builtins
import collections
import io
import os
import pickle
import zipfile
from pathlib import Path

import torch

from selfclassifier.checkpoint import CheckpointError


class Opaque:
    """Stand-in for an object of a class the file names but that is never imported or run.

    ``type(obj).__qualname__`` is the original ``module.name``; ``args`` and ``state`` hold what
    the pickle would have passed to it (tensors inside them are real tensors).
    """

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.state, obj.items = args, None, []
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state) -> None:
        self.state = state

    # list- and dict-like pickles append items to the object they build
    def append(self, item) -> None:
        self.items.append(item)

    def extend(self, items) -> None:
        self.items.extend(items)

    def __setitem__(self, key, value) -> None:
        self.items.append((key, value))

    def __repr__(self) -> str:
        return f"<opaque {type(self).__qualname__}>"


_BUILTINS = {
    "set", "frozenset", "tuple", "list", "dict", "int", "float", "complex", "bool", "str",
    "bytes", "bytearray", "slice", "range",
}  # fmt: skip


_STORAGE_DTYPES = {
    "UntypedStorage": torch.uint8,
    "ByteStorage": torch.uint8,
    "CharStorage": torch.int8,
    "ShortStorage": torch.int16,
    "IntStorage": torch.int32,
    "LongStorage": torch.int64,
    "BoolStorage": torch.bool,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
}


class _StorageType:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _rebuild_tensor(storage, offset, size, stride, *rest):
    if not isinstance(storage, torch.Tensor):
        raise CheckpointError("a tensor in the file has no readable storage")
    if len(size) == 0:
        return storage[offset].clone()
    return storage.as_strided(tuple(size), tuple(stride), offset)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype, *rest):
    return _rebuild_tensor(storage.view(dtype), offset, size, stride)


def _rebuild_parameter(data, *rest):
    return data


_TORCH_UTILS = {
    "_rebuild_tensor": _rebuild_tensor,
    "_rebuild_tensor_v2": _rebuild_tensor,
    "_rebuild_tensor_v3": _rebuild_tensor_v3,
    "_rebuild_parameter": _rebuild_parameter,
    "_rebuild_parameter_with_state": _rebuild_parameter,
}


class _TensorOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self.archive, self.prefix = archive, prefix
        self.storages: dict[str, torch.Tensor] = {}
        self.skipped: set[str] = set()
        self._stubs: dict[str, type] = {}

    def find_class(self, module: str, name: str):
        if module == "torch._utils" and name in _TORCH_UTILS:
            return _TORCH_UTILS[name]
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module in ("builtins", "__builtin__") and name in _BUILTINS:
            return getattr(builtins, name)
        if module == "_codecs" and name == "encode":  # how protocol 2 spells bytes
            return lambda text, encoding="latin1": text.encode(encoding)
        if module == "torch":
            if name in _STORAGE_DTYPES:
                return _StorageType(_STORAGE_DTYPES[name])
            value = getattr(torch, name, None)
            if isinstance(value, torch.dtype):
                return value
            if name == "Size":
                return tuple
            if name == "device":
                return torch.device
        return self._stub(f"{module}.{name}")

    def _stub(self, qualname: str) -> type:
        self.skipped.add(qualname)
        if qualname not in self._stubs:
            self._stubs[qualname] = type(qualname, (Opaque,), {"__qualname__": qualname})
        return self._stubs[qualname]

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] in ("storage", b"storage")):
            raise CheckpointError(f"unsupported persistent record {str(pid)[:80]}")
        storage_type, key, _location, numel = pid[1:5]
        dtype = storage_type.dtype if isinstance(storage_type, _StorageType) else None
        if dtype is None:
            raise CheckpointError(f"tensor storage {key} has an unknown type")
        if key not in self.storages:
            nbytes = numel * torch.empty((), dtype=dtype).element_size()
            raw = bytearray(self.archive.read(f"{self.prefix}data/{key}"))[:nbytes]
            if len(raw) < nbytes:
                raise CheckpointError(f"tensor storage {key} is truncated")
            self.storages[key] = (
                torch.frombuffer(raw, dtype=torch.uint8).view(dtype)
                if nbytes
                else torch.empty(0, dtype=dtype)
            )
        return self.storages[key]


def read_tensors(path: str | os.PathLike) -> tuple[object, list[str]]:
    """(the file's object with unknown objects replaced by :class:`Opaque`, their class names).

    Reads the zip format that ``torch.save`` writes since PyTorch 1.6. Raises CheckpointError
    (one line) for missing, non-torch, legacy-format or damaged files.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' not found")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"'{path}' is not a PyTorch zip checkpoint (files saved before PyTorch 1.6 are not "
            "supported: re-save it with torch.save in a recent PyTorch)"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [
                n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1
            ]
            if len(pickles) != 1:
                raise CheckpointError(f"'{path}' is a zip file but not a torch.save checkpoint")
            prefix = pickles[0][: -len("data.pkl")]
            names = set(archive.namelist())
            if f"{prefix}byteorder" in names and archive.read(f"{prefix}byteorder") != b"little":
                raise CheckpointError(f"'{path}' stores big-endian tensors, which are unsupported")
            unpickler = _TensorOnlyUnpickler(io.BytesIO(archive.read(pickles[0])), archive, prefix)
            obj = unpickler.load()
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, KeyError, EOFError, pickle.UnpicklingError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint '{path}' is damaged or truncated ({type(e).__name__}: {str(e)[:120]})"
        ) from None
    return obj, sorted(unpickler.skipped)


def tensor_dict(obj) -> dict[str, torch.Tensor]:
    """The ``str -> Tensor`` entries of a mapping (anything else is dropped)."""
    if not isinstance(obj, dict):
        return {}
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
