"""CRC32C (Castagnoli) and TensorFlow's checksum mask (FORMAT.md section 1)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptlib.format.crc import MASK_DELTA, crc32c, mask, unmask

SETTINGS = settings(database=None, deadline=None, max_examples=300)


# RFC 3720 (iSCSI) appendix B.4 test vectors, plus the classic check value.
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (bytes(32), 0x8A9136AA),
        (b"\xff" * 32, 0x62A8AB43),
        (bytes(range(32)), 0x46DD794E),
        (bytes(range(31, -1, -1)), 0x113FDB5C),
        (b"123456789", 0xE3069283),
        (b"", 0),
    ],
)
def test_published_vectors(data: bytes, expected: int) -> None:
    assert crc32c(data) == expected


def test_accepts_bytearray_and_memoryview() -> None:
    assert crc32c(bytearray(b"123456789")) == 0xE3069283
    assert crc32c(memoryview(b"x123456789y")[1:-1]) == 0xE3069283


def test_mask_constants() -> None:
    assert MASK_DELTA == 0xA282EAD8
    # the stored crc of every empty numeric tensor
    assert mask(0) == 0xA282EAD8
    assert unmask(0xA282EAD8) == 0
    # golden vector: the empty metaindex block's trailer is 00 c0f2a1b0
    assert mask(crc32c(bytes.fromhex("0000000001000000") + b"\x00")) == int.from_bytes(
        bytes.fromhex("c0f2a1b0"), "little"
    )


def test_mask_formula() -> None:
    # Mask(c) = rotr(c, 15) + delta, Unmask the inverse (crc32c.h)
    c = 0x12345678
    rot = ((c >> 15) | (c << 17)) & 0xFFFFFFFF
    assert mask(c) == (rot + 0xA282EAD8) & 0xFFFFFFFF


@SETTINGS
@given(st.integers(0, 2**32 - 1))
def test_mask_round_trip(c: int) -> None:
    m = mask(c)
    assert 0 <= m < 2**32
    assert unmask(m) == c
    assert mask(unmask(c)) == c


@SETTINGS
@given(st.binary(max_size=300), st.binary(max_size=300))
def test_extend_continues_running_crc(a: bytes, b: bytes) -> None:
    assert crc32c(b, crc32c(a)) == crc32c(a + b)
