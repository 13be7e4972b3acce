"""CRC32C (Castagnoli) and the rotation mask TensorFlow applies to every stored CRC.

Stored checksums are *masked*: ``mask(c) = rotr(c, 15) + 0xa282ead8 (mod 2**32)``.
LevelDB introduced the mask because computing the CRC of a string that itself contains
embedded CRCs is problematic; TensorFlow inherited it for blocks and tensor data alike.
The CRC itself comes from the ``crc32c`` C extension (hardware-accelerated, releases the
GIL on large buffers, so checksums can overlap with I/O in another thread).

This is the reference, one checksum at a time. ``crc_columns.py`` checksums and masks many
at once and must equal it; ``crc_combine.py`` joins checksums of parts into the checksum of
their concatenation.
"""

from __future__ import annotations

import crc32c as _crc32c

from ckptlib.format.coding import Bytes

MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF


def crc32c(data: Bytes, crc: int = 0) -> int:
    """CRC32C of ``data``, continuing from ``crc`` (0 starts a new checksum)."""
    return int(_crc32c.crc32c(data, crc))


def mask(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & _U32) + MASK_DELTA) & _U32


def unmask(masked: int) -> int:
    rot = (masked - MASK_DELTA) & _U32
    return ((rot >> 17) | (rot << 15)) & _U32
