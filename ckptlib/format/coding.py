"""Integer encodings shared by every structure in the format.

::

    varint   LEB128: 7 bits per byte, least significant group first, 0x80 = "more follows"
             300 -> ac 02        varint32 is at most 5 bytes, varint64 at most 10
    fixed32  4 bytes little-endian        fixed64  8 bytes little-endian

Decoders take ``(buffer, position)`` and return ``(value, next_position)``; they raise
``CorruptCheckpointError`` on truncation or overlong input instead of reading past the end.
"""

from __future__ import annotations

import struct

from ckptlib.errors import CorruptCheckpointError

MAX_VARINT32_BYTES = 5
MAX_VARINT64_BYTES = 10

# Byte buffers; numpy arrays are passed as ``array.view(np.uint8).data``.
Bytes = bytes | bytearray | memoryview

_FIXED32 = struct.Struct("<I")
_FIXED64 = struct.Struct("<Q")


def encode_varint(value: int) -> bytes:
    """LEB128 bytes of a non-negative integer below 2**64."""
    if value < 0 or value >= 1 << 64:
        raise ValueError(f"varint out of range: {value}")
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_varint(buf: Bytes, pos: int, max_bytes: int = MAX_VARINT64_BYTES) -> tuple[int, int]:
    """Decode one varint at ``pos``; returns ``(value, position after it)``."""
    result = 0
    shift = 0
    end = len(buf)
    for _ in range(max_bytes):
        if pos >= end:
            raise CorruptCheckpointError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            if max_bytes == MAX_VARINT64_BYTES and result >= 1 << 64:
                raise CorruptCheckpointError("varint64 overflows 64 bits")
            if max_bytes == MAX_VARINT32_BYTES and result >= 1 << 32:
                raise CorruptCheckpointError("varint32 overflows 32 bits")
            return result, pos
        shift += 7
    raise CorruptCheckpointError(f"varint longer than {max_bytes} bytes")


def decode_varint32(buf: Bytes, pos: int) -> tuple[int, int]:
    return decode_varint(buf, pos, MAX_VARINT32_BYTES)


def encode_fixed32(value: int) -> bytes:
    return _FIXED32.pack(value)


def encode_fixed64(value: int) -> bytes:
    return _FIXED64.pack(value)


def decode_fixed32(buf: Bytes, pos: int) -> int:
    if pos < 0 or pos + 4 > len(buf):
        raise CorruptCheckpointError("truncated fixed32")
    return int(_FIXED32.unpack_from(buf, pos)[0])


def decode_fixed64(buf: Bytes, pos: int) -> int:
    if pos < 0 or pos + 8 > len(buf):
        raise CorruptCheckpointError("truncated fixed64")
    return int(_FIXED64.unpack_from(buf, pos)[0])
