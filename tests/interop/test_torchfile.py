"""Foreign pickles (convert, --init-backbone) are read through torch's weights-only loader
with inert stubs: foreign objects are fine, an ``os.system`` call is not, and its code never
runs."""

from __future__ import annotations

import pytest

from selfclassifier.interop.official import convert_official
from selfclassifier.interop.pretrained import read_state_dict
from selfclassifier.interop.torchfile import read_tensors
from selfclassifier.storage import CheckpointError
from tests.helpers.checkpoints import HOW, evil_checkpoint


def _read_weights(path):
    return read_state_dict(path)


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("reader", [read_tensors, convert_official, _read_weights])
def test_readers_of_foreign_files_refuse(tmp_path, how, reader):
    """convert and --init-backbone read files with foreign objects, but not an os.system call."""
    marker = tmp_path / "marker"
    path = evil_checkpoint(tmp_path / "evil.pt", marker, how)
    with pytest.raises(CheckpointError) as err:
        reader(path)
    message = str(err.value)
    assert "\n" not in message and not marker.exists()
    if how == "zip":
        assert message.startswith(f"refusing to read '{path}'") and "blocked" in message
    elif reader is _read_weights:  # not zip: the plain weights_only load refuses it
        assert message.startswith(f"refusing to load '{path}'") and "could run code" in message
    else:
        assert "not a PyTorch zip checkpoint" in message
