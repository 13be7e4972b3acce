"""Checksums combined from parts (format/crc_combine.py) against crc32c of the whole."""

from __future__ import annotations

import crc32c
import numpy as np
import pytest

from ckptlib.format.crc_combine import combine_runs, shift


@pytest.mark.parametrize("seed", range(20))
def test_shift_joins_two_checksums_into_that_of_the_concatenation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = rng.bytes(int(rng.integers(0, 3000))), rng.bytes(int(rng.integers(0, 3000)))
    joined = shift(np.array([crc32c.crc32c(a)]), np.array([len(b)]))[0] ^ crc32c.crc32c(b)
    assert int(joined) == crc32c.crc32c(a + b)


def test_shift_over_megabytes_of_zeros() -> None:
    zeros = bytes(3 << 20 | 12345)
    start = np.array([0, 1, 0xDEADBEEF, 0xFFFFFFFF], dtype=np.uint32)
    expected = [crc32c.crc32c(zeros, int(c)) ^ crc32c.crc32c(zeros) for c in start]
    assert shift(start, np.full(4, len(zeros))).tolist() == expected


def test_shifts_compose_up_to_the_top_bit_of_a_64_bit_length() -> None:
    rng = np.random.default_rng(7)
    crcs = rng.integers(0, 2**32, 64, dtype=np.uint64).astype(np.uint32)
    a = rng.integers(0, 2**62, 64, dtype=np.uint64)
    b = rng.integers(0, 2**62, 64, dtype=np.uint64)
    assert np.array_equal(shift(shift(crcs, a), b), shift(crcs, a + b))
    assert np.array_equal(shift(crcs, np.zeros(64, np.uint64)), crcs)
    assert shift(np.zeros(0, np.uint32), np.zeros(0, np.uint64)).size == 0


@pytest.mark.parametrize("seed", range(10))
def test_combined_runs_equal_the_checksum_of_each_run(seed: int) -> None:
    rng = np.random.default_rng(seed)
    parts = [rng.bytes(int(n)) for n in rng.integers(0, 5000, 300)]
    crcs = np.array([crc32c.crc32c(p) for p in parts], dtype=np.uint32)
    lengths = np.array([len(p) for p in parts])
    starts = np.unique(np.append(rng.integers(0, 300, int(rng.integers(1, 40))), 0))
    bounds = [*starts.tolist(), 300]
    expected = [crc32c.crc32c(b"".join(parts[bounds[i] : bounds[i + 1]])) for i in range(len(starts))]
    assert combine_runs(crcs, lengths, starts).tolist() == expected
