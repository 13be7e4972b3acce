"""Checksums and masks of many buffers at once: the bulk twins of ``crc.py``.

::

    buffers  [b"ab", b"", <memoryview>, <ndarray>, ...]  ->  crc32c each   uint32 [c0, c1, c2, c3, ...]
    crcs     uint32 [c0, c1, ...]                         ->  mask each     uint32 [rotr(c0, 15) + a282ead8, ...]
    masked   uint32 [m0, m1, ...]                         ->  unmask each   uint32 [c0, c1, ...]

What it accelerates, and the reference in ``crc.py`` it must equal, value for value:

    crc32c_fast             ``crc.crc32c`` (the C extension's function itself, without the
                            ``int`` and the default argument: for ``map`` over many buffers)
    crc32c_each_releasing   ``crc.crc32c`` of each buffer (with the GIL released per call)
    mask_all, unmask_all    ``crc.mask`` and ``crc.unmask`` of each checksum (numpy)

The test that proves they agree, on random inputs:

    tests/format/test_format_crc_columns.py::test_bulk_checksums_equal_crc32c_of_each_buffer
    tests/format/test_format_crc_columns.py::test_bulk_masks_equal_mask_and_unmask_of_each_checksum
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import crc32c as _crc32c
import numpy as np

from ckptlib.format.crc import MASK_DELTA

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


def mask_all(crcs: np.ndarray) -> np.ndarray:
    """``mask`` of every checksum in a uint32 array."""
    crcs = np.asarray(crcs, dtype=np.uint32)
    return ((crcs >> np.uint32(15)) | (crcs << np.uint32(17))) + np.uint32(MASK_DELTA)


def unmask_all(masked: np.ndarray) -> np.ndarray:
    """``unmask`` of every checksum in a uint32 array."""
    rot = np.asarray(masked, dtype=np.uint32) - np.uint32(MASK_DELTA)
    return (rot >> np.uint32(17)) | (rot << np.uint32(15))
