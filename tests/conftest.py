"""Shared fixtures, and hypothesis kept out of the working directory.

Even with ``database=None`` (set on every test here), hypothesis caches data under
``.hypothesis/`` in the current directory; point it at a private temporary directory instead.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

import ckptlib

_HOME = tempfile.mkdtemp(prefix="ckptlib-hypothesis-")
atexit.register(shutil.rmtree, _HOME, True)
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", _HOME)

try:
    from hypothesis import configuration
except ImportError:  # pragma: no cover - hypothesis is a test dependency
    pass
else:
    configuration.set_hypothesis_home_dir(os.environ["HYPOTHESIS_STORAGE_DIRECTORY"])


def _damage_tensor(prefix: str | os.PathLike[str], name: str) -> None:
    """Flip one byte in the middle of tensor ``name``'s stored bytes (its checksum then fails)."""
    with ckptlib.load_checkpoint(prefix) as reader:
        entry = reader.entry(name)
        (data,) = [f for f in reader.files if ".data-" in f][entry.shard_id : entry.shard_id + 1]
    with open(data, "r+b") as file:
        file.seek(entry.offset + entry.size // 2)
        byte = file.read(1)[0]
        file.seek(-1, os.SEEK_CUR)
        file.write(bytes([byte ^ 0xFF]))


@pytest.fixture
def damage_tensor():
    """``damage_tensor(prefix, name)``: flip a byte inside one stored tensor."""
    return _damage_tensor
