"""Checksums of concatenations, from the checksums of their parts.

CRC32C is linear: for byte strings A and B, ``crc(A + B) == shift(crc(A), len(B)) ^ crc(B)``,
where ``shift(c, n)`` advances the CRC register ``c`` over ``n`` zero bytes. That is a
linear map of ``c`` (multiplication by x**(8n) modulo the CRC polynomial), the same one
zlib's ``crc32_combine`` applies. So the stored checksums of tensors that lie back to back
in a shard combine into the checksum of the whole run, and one crc32c call over the run
(fast, in C, off the GIL) checks every one of them.

Each map "advance over 2**k zero bytes" is kept as four 256-entry tables, one per byte of
the register, so ``shift`` handles many registers at once with numpy: one table step per
bit of the lengths.

The reference they must equal: ``crc.crc32c`` of the concatenated bytes (and ``shift(c, n)``
``crc.crc32c(bytes(n), c) ^ crc.crc32c(bytes(n))``). The tests that prove it, on random parts
and runs:

    tests/format/test_format_crc_combine.py::test_shift_joins_two_checksums_into_that_of_the_concatenation
    tests/format/test_format_crc_combine.py::test_shift_over_megabytes_of_zeros
    tests/format/test_format_crc_combine.py::test_shifts_compose_up_to_the_top_bit_of_a_64_bit_length
    tests/format/test_format_crc_combine.py::test_combined_runs_equal_the_checksum_of_each_run
"""

from __future__ import annotations

import functools

import numpy as np

_POLY = 0x82F63B78  # CRC-32C (Castagnoli), bit-reflected


def shift(crcs: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Every checksum in ``crcs`` advanced over its entry of ``lengths`` zero bytes."""
    out = np.array(crcs, dtype=np.uint32)
    lengths = np.asarray(lengths, dtype=np.uint64)
    if not out.size:
        return out
    tables = _shift_tables()
    for k in range(int(lengths.max()).bit_length()):
        rows = np.flatnonzero((lengths >> np.uint64(k)) & np.uint64(1))
        if len(rows):
            out[rows] = _apply(tables[k], out[rows])
    return out


def combine_runs(crcs: np.ndarray, lengths: np.ndarray, run_starts: np.ndarray) -> np.ndarray:
    """The checksum of each run of consecutive parts: ``crcs`` and ``lengths`` describe
    the parts in order, and run ``r`` is the parts from ``run_starts[r]`` up to the next
    run's start (the first run starting at 0)."""
    lengths = np.asarray(lengths, dtype=np.uint64)
    ends = np.cumsum(lengths, dtype=np.uint64)
    run_of = np.cumsum(np.isin(np.arange(len(lengths)), run_starts)) - 1
    run_ends = ends[np.append(run_starts[1:], len(lengths)) - 1]
    following = run_ends[run_of] - ends  # bytes after each part, up to its run's end
    return np.bitwise_xor.reduceat(shift(crcs, following), run_starts) if len(run_starts) else np.empty(0, np.uint32)


def _apply(tables: np.ndarray, crcs: np.ndarray) -> np.ndarray:
    """The linear map whose byte tables are ``tables`` (shape 4 x 256), on every register."""
    out = tables[0][crcs & 0xFF]
    out ^= tables[1][(crcs >> 8) & 0xFF]
    out ^= tables[2][(crcs >> 16) & 0xFF]
    out ^= tables[3][crcs >> 24]
    return out


def _byte_tables(images: np.ndarray) -> np.ndarray:
    """Byte tables of the linear map taking register bit ``b`` to ``images[b]``: entry
    ``[j][v]`` is the XOR of the images of the bits set in byte value ``v`` at byte ``j``."""
    per_byte = images.reshape(4, 8)
    tables = np.zeros((4, 256), dtype=np.uint32)
    for bit in range(8):  # values with this top bit: the ones below it, plus this bit's image
        tables[:, 1 << bit : 2 << bit] = tables[:, : 1 << bit] ^ per_byte[:, bit : bit + 1]
    return tables


@functools.cache
def _shift_tables() -> np.ndarray:
    """``[k]``: the byte tables of "advance the register over 2**k zero bytes", k < 64."""
    register_bits = np.uint32(1) << np.arange(32, dtype=np.uint32)
    images = register_bits >> 1  # one zero bit in: shift right, fold the polynomial in on a carry
    images[0] ^= np.uint32(_POLY)
    tables = _byte_tables(images)
    for _ in range(3):  # one bit -> one byte: square the map three times
        tables = _byte_tables(_apply(tables, _apply(tables, register_bits)))
    out = [tables]
    while len(out) < 64:  # 2**k bytes -> 2**(k+1) bytes: the map applied twice
        out.append(_byte_tables(_apply(out[-1], _apply(out[-1], register_bits))))
    return np.stack(out)
