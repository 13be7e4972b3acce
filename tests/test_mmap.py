"""Memory-mapped reads (``mmap=True``): tensors are copy-on-write views that never write back to the file."""

from __future__ import annotations

import os
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import ckptlib


@pytest.fixture()
def prefix(tmp_path: Path) -> str:
    state = {
        "w": np.arange(12, dtype=np.float32).reshape(3, 4),
        "b": np.arange(5, dtype=ml_dtypes.bfloat16),
        "empty": np.zeros((0, 3), np.int64),
        "s": np.array([b"x", b"yz"], dtype=object),
        "big": np.arange(5 << 20, dtype=np.uint8),
    }
    return ckptlib.save(state, tmp_path / "model")


def test_mmap_views_are_writable_and_private(prefix: str) -> None:
    data_file = prefix + ".data-00000-of-00001"
    before = Path(data_file).read_bytes()
    restored = ckptlib.restore(prefix, mmap=True)
    w = restored["w"]
    assert w.flags.writeable and not w.flags.owndata
    w += 1  # a copy-on-write page: the file must not change
    assert Path(data_file).read_bytes() == before
    np.testing.assert_array_equal(
        ckptlib.restore(prefix, mmap=True)["w"], np.arange(12, dtype=np.float32).reshape(3, 4)
    )


def test_mmap_views_survive_deletion_of_the_checkpoint(prefix: str) -> None:
    restored = ckptlib.restore(prefix, mmap=True)
    for name in os.listdir(os.path.dirname(prefix)):
        os.remove(os.path.join(os.path.dirname(prefix), name))
    np.testing.assert_array_equal(restored["big"][-3:], np.arange(5 << 20, dtype=np.uint8)[-3:])
    assert restored["b"].dtype == ml_dtypes.bfloat16


@pytest.mark.parametrize("mmap", [True, False])
def test_both_read_paths_give_identical_values(prefix: str, mmap: bool) -> None:
    got = ckptlib.restore(prefix, mmap=mmap)
    want = ckptlib.restore(prefix, mmap=not mmap)
    assert sorted(got) == sorted(want)
    for name in got:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape
        assert (
            got[name].tobytes() == want[name].tobytes()
            if got[name].dtype != object
            else list(got[name]) == list(want[name])
        )
    assert all(got[name].flags.writeable for name in ("w", "b", "big"))


@pytest.mark.parametrize("mmap", [True, False])
def test_only_maps_see_the_file_rewritten_in_place(prefix: str, mmap: bool) -> None:
    """The hazard ``mmap=True`` documents, and the default's private memory avoids."""
    restored = ckptlib.restore(prefix, mmap=mmap)
    with open(prefix + ".data-00000-of-00001", "r+b") as f:  # as cp or rsync --inplace would
        f.write(b"\xff" * os.fstat(f.fileno()).st_size)
    changed = restored["big"][0] != 0
    assert changed == mmap


def test_mmap_checksums_are_verified(prefix: str) -> None:
    data_file = Path(prefix + ".data-00000-of-00001")
    raw = bytearray(data_file.read_bytes())
    raw[-1] ^= 0xFF  # inside "big"
    data_file.write_bytes(bytes(raw))
    with pytest.raises(ckptlib.ChecksumMismatchError, match="big"):
        ckptlib.restore(prefix, mmap=True)
    with pytest.raises(ckptlib.ChecksumMismatchError, match="big"):
        ckptlib.restore(prefix, mmap=False)


def test_read_into_fills_the_target_without_replacing_it(prefix: str) -> None:
    target = np.zeros(5 << 20, np.uint8)
    with ckptlib.load_checkpoint(prefix) as reader:
        assert reader.read_into("big", target) is target
        with pytest.raises(ckptlib.ShapeMismatchError):
            reader.read_into("w", np.zeros((4, 3), np.float32))
        with pytest.raises(ckptlib.DtypeMismatchError):
            reader.read_into("w", np.zeros((3, 4), np.float64))
        strided = np.zeros((3, 8), np.float32)[:, ::2]  # not contiguous: read, then copied in
        reader.read_into("w", strided)
    np.testing.assert_array_equal(target, np.arange(5 << 20, dtype=np.uint8))
    np.testing.assert_array_equal(strided, np.arange(12, dtype=np.float32).reshape(3, 4))


def test_large_copying_read_is_checksummed_in_chunks(tmp_path: Path) -> None:
    """Above the pipelining threshold (8 MiB chunks), damage in any chunk is still caught."""
    values = np.arange(40 << 20, dtype=np.uint8)
    prefix = ckptlib.save({"x": values}, tmp_path / "m")
    np.testing.assert_array_equal(ckptlib.restore(prefix, mmap=False)["x"], values)
    data_file = Path(prefix + ".data-00000-of-00001")
    with open(data_file, "r+b") as f:
        f.seek(33 << 20)
        f.write(b"\xff")
    with pytest.raises(ckptlib.ChecksumMismatchError):
        ckptlib.restore(prefix, mmap=False)
