"""The bulk checksums and masks of ``crc_columns.py`` against ``crc.py``, one value at a time."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptlib.format.crc import crc32c, mask, unmask
from ckptlib.format.crc_columns import crc32c_each_releasing, crc32c_fast, mask_all, unmask_all

SETTINGS = settings(database=None, deadline=None, max_examples=200)

# Small buffers, and some around 32 KiB, where the extension starts releasing the GIL itself.
LARGE = st.tuples(st.binary(min_size=1, max_size=8), st.integers(32 * 1024 - 2, 32 * 1024 + 2)).map(
    lambda pattern_size: (pattern_size[0] * pattern_size[1])[: pattern_size[1]]
)
BUFFERS = st.lists(st.one_of(st.binary(max_size=64), LARGE), max_size=12)


@SETTINGS
@given(BUFFERS)
def test_bulk_checksums_equal_crc32c_of_each_buffer(buffers: list[bytes]) -> None:
    expected = [crc32c(buffer) for buffer in buffers]
    assert [crc32c_fast(buffer) for buffer in buffers] == expected
    assert [crc32c_fast(np.frombuffer(buffer, np.uint8)) for buffer in buffers] == expected
    views = [memoryview(buffer) for buffer in buffers]
    each = crc32c_each_releasing(views)
    assert each.dtype == np.uint32
    assert each.tolist() == expected


@SETTINGS
@given(st.lists(st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2**31, 2**32 - 1])), max_size=50))
def test_bulk_masks_equal_mask_and_unmask_of_each_checksum(crcs: list[int]) -> None:
    column = np.array(crcs, dtype=np.uint32)
    masked = mask_all(column)
    assert masked.dtype == np.uint32
    assert masked.tolist() == [mask(c) for c in crcs]
    unmasked = unmask_all(column)
    assert unmasked.dtype == np.uint32
    assert unmasked.tolist() == [unmask(c) for c in crcs]
    assert unmask_all(masked).tolist() == crcs
