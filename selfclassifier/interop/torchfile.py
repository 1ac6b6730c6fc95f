"""Read other people's ``torch.save`` files with torch's weights-only loader, foreign objects inert.

``torch.load(weights_only=True)`` refuses a whole file as soon as it names one class it does not
know, such as the pickled ``utils.NNQueue`` in the Self-Classifier authors' checkpoints, or the
``argparse.Namespace``, numpy scalars and ``pathlib`` paths of timm / torchvision / DINO training
checkpoints. :func:`read_tensors` lists the globals of the file that torch does not allow
(:func:`torch.serialization.get_unsafe_globals_in_checkpoint`, a static scan), registers a fresh
:class:`Opaque` subclass under each of those names (:class:`torch.serialization.safe_globals`)
and lets torch load the file. Every such object becomes an inert placeholder that keeps the
arguments and state the pickle hands it; nothing is imported from the file and no function it
names is called. (The registration is process-wide while the file loads, so do not load other
files from other threads meanwhile.)

What torch's loader refuses even so, and what the hand-written unpickler that this module held
before read (each is now a one-line CheckpointError; none occurs in the files ``convert`` and
``--init-backbone`` are for: the authors' ResNet and ViT releases, saved by PyTorch 1.7.1 in the
zip format with pickle protocol 2 and one foreign class, ``utils.NNQueue``, or timm /
torchvision / DINO state dicts and training checkpoints):

* a global from ``sys``, ``os``, ``posix`` or ``nt`` (an ``os.system`` payload): "Trying to load
  unsupported GLOBAL posix.system whose module posix is blocked." The file is refused whole.
* an object of a ``dict`` or ``list`` subclass (``collections.defaultdict``, Lightning's
  ``AttributeDict`` hyper-parameters, ``EasyDict``): "Can only SETITEM for dict,
  collections.OrderedDict, collections.Counter, but got <class '...defaultdict'>" ("Can only
  append to lists, but got ..." for a list subclass).
* pickle protocol 3 or higher (``torch.save(..., pickle_protocol=4)``; the default is 2):
  "Unsupported operand 149" (protocol 4's FRAME; protocol 3's bytes: "Unsupported operand 67").

Files in the pre-1.6 (non-zip) format were not read before either: the scan above needs the zip
format ("Expected input to be a checkpoint returned by torch.save"); ``--init-backbone`` reads
them with plain ``weights_only`` loading (:func:`selfclassifier.storage.load_file`).
"""

from __future__ import annotations

import os
import pickle
import pickletools
import re
import zipfile
from pathlib import Path

import torch
from torch._utils import IMPORT_MAPPING, NAME_MAPPING  # the renames torch's loader applies

from selfclassifier.storage import CheckpointError


class Opaque:
    """Stand-in for an object of a class the file names but that is never imported or run.

    ``type(obj).__qualname__`` is the ``module.name`` the file gives; ``args`` and ``state`` hold
    what the pickle would have passed to it (tensors inside them are real tensors).
    """

    def __new__(cls, *args):
        obj = object.__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args):
        pass

    def __setstate__(self, state) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<opaque {type(self).__qualname__}>"


def _names_as_written(path: Path) -> dict[str, str]:
    """{name torch looks up: name the pickle spells} for each global (``builtins.exec`` is
    written ``__builtin__.exec`` by protocol 2). CheckpointError if no ``data.pkl`` record."""
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise CheckpointError(f"'{path}' is a zip file but not a torch.save checkpoint")
        data = archive.read(pickles[0])
    names = {}
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name == "GLOBAL":
            module, name = arg.split(" ", 1)
            looked_up = NAME_MAPPING.get((module, name), (IMPORT_MAPPING.get(module, module), name))
            names[".".join(looked_up)] = f"{module}.{name}"
    return names


def _reason(e: BaseException) -> str:
    """The line of torch's long message that says what it rejected."""
    pattern = r"(Trying to load .*|Can only .*|Unsupported (?:operand|global).*|Only persistent.*)"
    match = re.search(pattern, str(e))
    text = match.group(1) if match else (str(e).strip().splitlines() or [type(e).__name__])[-1]
    return text.strip().rstrip(".")[:200]


def read_tensors(path: str | os.PathLike) -> tuple[object, list[str]]:
    """(the file's object with foreign objects as :class:`Opaque` placeholders, their names).

    Reads the zip format that ``torch.save`` writes since PyTorch 1.6. Raises CheckpointError
    (one line) for missing, non-torch, legacy-format, damaged or refused files.
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
        written = _names_as_written(path)
        stubs = {}
        for name in torch.serialization.get_unsafe_globals_in_checkpoint(path):
            shown = written.get(name, name)
            stubs[name] = type(shown, (Opaque,), {"__qualname__": shown, "__module__": __name__})
        with torch.serialization.safe_globals([(stub, name) for name, stub in stubs.items()]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refusing to read '{path}': torch's weights-only loader rejects it ({_reason(e)}); "
            "nothing in it was run"
        ) from None
    except Exception as e:  # zip, EOF, key, value and torch stream-reader errors
        first = (str(e).strip().splitlines() or [""])[0][:120]
        raise CheckpointError(
            f"checkpoint '{path}' is damaged, truncated or not a torch.save file "
            f"({type(e).__name__}: {first})"
        ) from None
    return obj, sorted(stub.__qualname__ for stub in stubs.values())


def tensor_dict(obj) -> dict[str, torch.Tensor]:
    """The ``str -> Tensor`` entries of a mapping (anything else is dropped)."""
    if not isinstance(obj, dict):
        return {}
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
