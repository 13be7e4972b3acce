"""varint / fixed32 / fixed64 encodings (FORMAT.md section 1, ckptlib/format/coding.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ckptlib
from ckptlib.format.coding import (
    MAX_VARINT32_BYTES,
    MAX_VARINT64_BYTES,
    decode_fixed32,
    decode_fixed64,
    decode_varint,
    decode_varint32,
    encode_fixed32,
    encode_fixed64,
    encode_varint,
)

SETTINGS = settings(database=None, deadline=None, max_examples=400)
U64 = st.integers(0, 2**64 - 1)
# bias towards the byte-length boundaries (2**7k +- 1)
BOUNDARY = st.integers(1, 9).flatmap(lambda k: st.sampled_from([2 ** (7 * k) - 1, 2 ** (7 * k), 2 ** (7 * k) + 1]))
VARINT_VALUES = st.one_of(U64, BOUNDARY, st.integers(0, 300))


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, "00"),
        (1, "01"),
        (127, "7f"),
        (128, "8001"),
        (300, "ac02"),
        (16383, "ff7f"),
        (16384, "808001"),
        (2**32 - 1, "ffffffff0f"),
        (2**63, "80808080808080808001"),
        (2**64 - 1, "ffffffffffffffffff01"),
    ],
)
def test_known_varints(value: int, encoded: str) -> None:
    assert encode_varint(value).hex() == encoded
    assert decode_varint(bytes.fromhex(encoded), 0) == (value, len(encoded) // 2)


@SETTINGS
@given(VARINT_VALUES, st.binary(max_size=5), st.binary(max_size=5))
def test_varint_round_trip(value: int, before: bytes, after: bytes) -> None:
    encoded = encode_varint(value)
    assert 1 <= len(encoded) <= MAX_VARINT64_BYTES
    # minimal: only the last byte lacks the continuation bit, and it is nonzero unless value == 0
    assert all(b & 0x80 for b in encoded[:-1])
    assert encoded[-1] < 0x80
    assert encoded[-1] != 0 or value == 0
    buf = before + encoded + after
    assert decode_varint(buf, len(before)) == (value, len(before) + len(encoded))
    assert decode_varint(memoryview(buf), len(before)) == (value, len(before) + len(encoded))
    assert decode_varint(bytearray(buf), len(before)) == (value, len(before) + len(encoded))


@SETTINGS
@given(st.integers(0, 2**32 - 1))
def test_varint32_round_trip(value: int) -> None:
    encoded = encode_varint(value)
    assert len(encoded) <= MAX_VARINT32_BYTES
    assert decode_varint32(encoded, 0) == (value, len(encoded))


@pytest.mark.parametrize("value", [-1, 2**64, 2**70])
def test_encode_out_of_range(value: int) -> None:
    with pytest.raises(ValueError):
        encode_varint(value)


@SETTINGS
@given(VARINT_VALUES.filter(lambda v: v >= 128), st.data())
def test_truncated_varint_raises(value: int, data: st.DataObject) -> None:
    encoded = encode_varint(value)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(ckptlib.CorruptCheckpointError):
        decode_varint(encoded[:cut], 0)
    # truncated by the buffer's end even when the position is inside a larger buffer
    with pytest.raises(ckptlib.CorruptCheckpointError):
        decode_varint(b"\x01" + encoded[:cut], 1)


def test_decode_at_end_raises() -> None:
    with pytest.raises(ckptlib.CorruptCheckpointError):
        decode_varint(b"", 0)
    with pytest.raises(ckptlib.CorruptCheckpointError):
        decode_varint(b"\x05", 1)


@SETTINGS
@given(st.integers(11, 40), st.binary(max_size=4))
def test_overlong_varint64_raises(length: int, tail: bytes) -> None:
    # more than 10 bytes with the continuation bit set
    buf = b"\x80" * length + b"\x00" + tail
    with pytest.raises(ckptlib.CorruptCheckpointError):
        decode_varint(buf, 0)


@pytest.mark.parametrize(
    "encoded",
    [
        "ffffffffffffffffff02",  # 2**64 + ...: 10th byte carries more than one bit
        "ffffffffffffffffff7f",
        "80808080808080808002",
        "8080808080808080808001",  # 11 bytes
    ],
)
def test_varint64_overflow_raises(encoded: str) -> None:
    with pytest.raises(ckptlib.CorruptCheckpointError):
        decode_varint(bytes.fromhex(encoded), 0)


@pytest.mark.parametrize("encoded", ["8080808010", "ffffffff1f", "808080808001", "ffffffffff7f"])
def test_varint32_overflow_or_overlong_raises(encoded: str) -> None:
    with pytest.raises(ckptlib.CorruptCheckpointError):
        decode_varint32(bytes.fromhex(encoded), 0)


@SETTINGS
@given(st.binary(max_size=16), st.integers(0, 16))
def test_decode_arbitrary_bytes_never_escapes(buf: bytes, pos: int) -> None:
    """Arbitrary input yields a value below 2**64 or CorruptCheckpointError, nothing else."""
    try:
        value, end = decode_varint(buf, pos)
    except ckptlib.CorruptCheckpointError as e:
        assert isinstance(e, ValueError)
        return
    assert 0 <= value < 2**64
    assert pos < end <= min(len(buf), pos + MAX_VARINT64_BYTES)


def test_corrupt_error_is_a_checkpoint_error() -> None:
    with pytest.raises(ckptlib.CheckpointError):
        decode_varint(b"\x80", 0)


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1), st.binary(max_size=3))
def test_fixed_round_trip(v32: int, v64: int, before: bytes) -> None:
    assert encode_fixed32(v32) == v32.to_bytes(4, "little")
    assert encode_fixed64(v64) == v64.to_bytes(8, "little")
    assert decode_fixed32(before + encode_fixed32(v32), len(before)) == v32
    assert decode_fixed64(before + encode_fixed64(v64), len(before)) == v64


@pytest.mark.parametrize("size", range(4))
def test_truncated_fixed32_raises(size: int) -> None:
    with pytest.raises(ckptlib.CorruptCheckpointError):
        decode_fixed32(bytes(size), 0)
    with pytest.raises(ckptlib.CorruptCheckpointError):
        decode_fixed32(bytes(size + 2), 2)


@pytest.mark.parametrize("size", range(8))
def test_truncated_fixed64_raises(size: int) -> None:
    with pytest.raises(ckptlib.CorruptCheckpointError):
        decode_fixed64(bytes(size), 0)


def test_fixed_negative_position_raises() -> None:
    with pytest.raises(ckptlib.CorruptCheckpointError):
        decode_fixed32(bytes(8), -1)
    with pytest.raises(ckptlib.CorruptCheckpointError):
        decode_fixed64(bytes(16), -4)
