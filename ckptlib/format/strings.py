"""DT_STRING tensor data: every element's length, a checksum of the lengths, then the bytes.

::

    len[0]:varint64 ... len[N-1]:varint64 | masked length crc:fixed32 | bytes[0] ... bytes[N-1]

The length checksum covers each length as fixed32 LE (fixed64 LE for a length >= 2**32),
not the varint bytes. The entry's crc32c continues from the unmasked length checksum over
the 4 stored checksum bytes, then over every element's bytes. Lengths were varint32 in
very old checkpoints; varint32 and varint64 agree for every value below 2**32, so one
decoder reads both.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

from ckptlib.errors import ChecksumMismatchError, CorruptCheckpointError
from ckptlib.format.coding import decode_fixed32, decode_varint, encode_fixed32, encode_varint
from ckptlib.format.crc import crc32c, mask, unmask

_U32_MAX = 0xFFFFFFFF


def _length_bytes(lengths: Sequence[int]) -> bytes:
    if all(n <= _U32_MAX for n in lengths):
        return np.asarray(lengths, dtype="<u4").tobytes()
    return b"".join(struct.pack("<I" if n <= _U32_MAX else "<Q", n) for n in lengths)


def encode_strings(values: Sequence[bytes]) -> tuple[list[bytes], int, int]:
    """Serialize string elements; returns ``(chunks, total size, masked entry crc)``."""
    lengths = [len(v) for v in values]
    length_crc = crc32c(_length_bytes(lengths))
    stored_length_crc = encode_fixed32(mask(length_crc))
    crc = crc32c(stored_length_crc, length_crc)
    for value in values:
        crc = crc32c(value, crc)
    header = b"".join(encode_varint(n) for n in lengths)
    chunks = [header, stored_length_crc, *values]
    return chunks, len(header) + 4 + sum(lengths), mask(crc)


def decode_strings(data: bytes, count: int, masked_crc: int | None) -> list[bytes]:
    """Parse ``count`` elements from exactly ``data``; checks both checksums if ``masked_crc``.

    ``data`` is the whole stored value, so no length can reach past it: a hostile length
    is an error, never an allocation.
    """
    if len(data) < count + 4:
        raise CorruptCheckpointError(f"string tensor of {count} elements cannot fit in {len(data)} bytes")
    lengths = []
    pos = 0
    for _ in range(count):
        n, pos = decode_varint(data, pos)
        lengths.append(n)
    stored_length_crc = decode_fixed32(data, pos)
    body = pos + 4
    if body + sum(lengths) != len(data):
        raise CorruptCheckpointError(
            f"string lengths add up to {sum(lengths)} bytes, the entry holds {len(data) - body}"
        )
    if masked_crc is not None:
        length_crc = crc32c(_length_bytes(lengths))
        if unmask(stored_length_crc) != length_crc:
            raise ChecksumMismatchError("the length checksum of a string tensor does not match")
        crc = crc32c(memoryview(data)[pos:], length_crc)
        if crc != unmask(masked_crc):
            raise ChecksumMismatchError(f"checksum does not match: stored {unmask(masked_crc):08x}, computed {crc:08x}")
    values = []
    for n in lengths:
        values.append(data[body : body + n])
        body += n
    return values
