"""CRC32C (Castagnoli) and the rotation mask TensorFlow applies to every stored CRC.

Stored checksums are *masked*: ``mask(c) = rotr(c, 15) + 0xa282ead8 (mod 2**32)``.
LevelDB introduced the mask because computing the CRC of a string that itself contains
embedded CRCs is problematic; TensorFlow inherited it for blocks and tensor data alike.
The CRC itself comes from the ``crc32c`` C extension (hardware-accelerated, releases the
GIL on large buffers, so checksums can overlap with I/O in another thread).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import crc32c as _crc32c
import numpy as np

from ckptlib.format.coding import Bytes

MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF


def crc32c(data: Bytes, crc: int = 0) -> int:
    """CRC32C of ``data``, continuing from ``crc`` (0 starts a new checksum)."""
    return int(_crc32c.crc32c(data, crc))


# The extension's own function, for hot loops that map it over many buffers (anything with
# the buffer protocol: bytes, memoryviews, C-contiguous ndarrays of any dtype).
crc32c_fast: Callable[[Any], int] = _crc32c.crc32c


def crc32c_each_releasing(buffers: Sequence[Any]) -> np.ndarray:
    """The crc32c of every buffer (uint32), each call releasing the GIL.

    The extension keeps the GIL for buffers under 32 KiB, and a C-level ``map`` never gives
    it up between calls: mapped over thousands of small tensors, it would hold the GIL for
    the whole pass and stall threads that wait on it after each system call (a writer
    thread between two writes). Releasing it costs about 0.4 us a call.
    """
    n = len(buffers)
    always_release = itertools.repeat(1, n)
    return np.fromiter(map(_crc32c.crc32c, buffers, itertools.repeat(0, n), always_release), np.uint32, n)


def mask(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & _U32) + MASK_DELTA) & _U32


def mask_all(crcs: np.ndarray) -> np.ndarray:
    """``mask`` of every checksum in a uint32 array."""
    crcs = np.asarray(crcs, dtype=np.uint32)
    return ((crcs >> np.uint32(15)) | (crcs << np.uint32(17))) + np.uint32(MASK_DELTA)


def unmask_all(masked: np.ndarray) -> np.ndarray:
    """``unmask`` of every checksum in a uint32 array."""
    rot = np.asarray(masked, dtype=np.uint32) - np.uint32(MASK_DELTA)
    return (rot >> np.uint32(17)) | (rot << np.uint32(15))


def unmask(masked: int) -> int:
    rot = (masked - MASK_DELTA) & _U32
    return ((rot >> 17) | (rot << 15)) & _U32
