"""DT_STRING tensor data: varint lengths, masked length checksum, bytes (FORMAT.md section 6)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ckptlib
from ckptlib.format.crc import crc32c, mask
from ckptlib.format.strings import decode_strings, encode_strings

SETTINGS = settings(database=None, deadline=None, max_examples=150)


def _long(sizes: st.SearchStrategy[int]) -> st.SearchStrategy[bytes]:
    """Long byte strings, cheap to generate: a random pattern repeated to a random length."""
    return st.tuples(st.binary(min_size=1, max_size=16), sizes).map(lambda t: (t[0] * (t[1] // len(t[0]) + 1))[: t[1]])


STRINGS = st.lists(
    st.one_of(
        st.binary(max_size=20),
        _long(st.integers(126, 130)),
        _long(st.integers(16382, 16386) | st.integers(70000, 300000)),  # two- and three-byte varint lengths
        st.sampled_from([b"", b"\x00", b"\xff" * 3]),
    ),
    max_size=12,
)


def encode(values: list[bytes]) -> tuple[bytes, int]:
    chunks, size, crc = encode_strings(values)
    data = b"".join(chunks)
    assert len(data) == size
    return data, crc


def test_golden_ab() -> None:
    data, crc = encode([b"ab"])
    assert data == bytes.fromhex("02 d8d81073 6162")
    # the "s" entry of the golden index stores crc32c as fixed32 26 19 a6 35
    assert crc == int.from_bytes(bytes.fromhex("2619a635"), "little")
    assert decode_strings(data, 1, crc) == [b"ab"]


def test_empty_string_tensor() -> None:
    data, crc = encode([])
    assert data == bytes.fromhex("d8ea82a2")
    assert decode_strings(data, 0, crc) == []


def test_length_checksum_uses_fixed32_lengths() -> None:
    values = [b"x" * 300, b"", b"yz"]
    data, crc = encode(values)
    length_crc = crc32c((300).to_bytes(4, "little") + (0).to_bytes(4, "little") + (2).to_bytes(4, "little"))
    assert data[:4] == bytes.fromhex("ac02 00 02")
    assert data[4:8] == mask(length_crc).to_bytes(4, "little")
    full = crc32c(data[4:], length_crc)
    assert crc == mask(full)


@SETTINGS
@given(STRINGS)
def test_round_trip(values: list[bytes]) -> None:
    data, crc = encode(values)
    assert decode_strings(data, len(values), crc) == values
    assert decode_strings(data, len(values), None) == values


@SETTINGS
@given(STRINGS.filter(bool), st.data())
def test_damaged_data_is_detected(values: list[bytes], data: st.DataObject) -> None:
    """Any single damaged byte raises CorruptCheckpointError (the checksums cover every byte)."""
    encoded, crc = encode(values)
    damaged = bytearray(encoded)
    i = data.draw(st.integers(0, len(damaged) - 1))
    damaged[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises(ckptlib.CorruptCheckpointError):
        decode_strings(bytes(damaged), len(values), crc)


@SETTINGS
@given(STRINGS, st.data())
def test_truncated_data_is_detected(values: list[bytes], data: st.DataObject) -> None:
    encoded, crc = encode(values)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(ckptlib.CorruptCheckpointError):
        decode_strings(encoded[:cut], len(values), crc)
    # also without checksums: the lengths no longer add up
    with pytest.raises(ckptlib.CorruptCheckpointError):
        decode_strings(encoded[:cut], len(values), None)


@SETTINGS
@given(STRINGS, st.integers(1, 255))
def test_wrong_entry_crc(values: list[bytes], delta: int) -> None:
    encoded, crc = encode(values)
    with pytest.raises(ckptlib.ChecksumMismatchError):
        decode_strings(encoded, len(values), crc ^ delta)


@SETTINGS
@given(st.binary(max_size=40), st.integers(0, 50), st.one_of(st.none(), st.integers(0, 2**32 - 1)))
def test_arbitrary_bytes(blob: bytes, count: int, crc: int | None) -> None:
    """Garbage yields CorruptCheckpointError, or elements that exactly fill the blob."""
    try:
        values = decode_strings(blob, count, crc)
    except ckptlib.CorruptCheckpointError:
        return
    assert len(values) == count
    assert sum(map(len, values)) <= len(blob)


def test_hostile_count_does_not_allocate() -> None:
    with pytest.raises(ckptlib.CorruptCheckpointError):
        decode_strings(b"\x00" * 8, 10**15, None)


def test_hostile_length_does_not_allocate() -> None:
    from ckptlib.format.coding import encode_varint

    # one element claiming 2**62 bytes
    blob = encode_varint(2**62) + bytes(4) + b"abc"
    with pytest.raises(ckptlib.CorruptCheckpointError):
        decode_strings(blob, 1, None)
