"""Byte encodings of many values at once, with numpy: the bulk twins of ``coding.py``.

A checkpoint with 100,000 tensors has 100,000 index entries; encoding them one Python call
at a time costs more than writing their data. These helpers work on whole columns:

::

    varints([1, 300])        ->  [[01 .. ..]          lengths [1, 2]
                                  [ac 02 ..]]
    concat_segments(src, starts, lengths)  ->  src[s0:s0+l0] + src[s1:s1+l1] + ...

What each must equal, and the test that proves it on random inputs:

    varints          ``coding.encode_varint`` of each value
                     tests/format/test_format_bulk.py::test_varints_match_encode_varint
    concat_segments  slicing and ``b"".join``
                     tests/format/test_format_bulk.py::test_concat_segments_matches_slicing
    row_prefixes,    slicing each row and joining (``place``: writing each prefix at the cursor)
    place            tests/format/test_format_bulk.py::test_row_prefixes_and_place_match_slicing
"""

from __future__ import annotations

import numpy as np

from ckptlib.format.coding import MAX_VARINT64_BYTES


def varints(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """LEB128 encodings of non-negative integers (below 2**64): a ``(n, 10)`` uint8 matrix
    whose row ``i`` starts with the ``lengths[i]`` bytes of ``values[i]``."""
    values = np.asarray(values, dtype=np.uint64)
    groups = np.empty((len(values), MAX_VARINT64_BYTES), dtype=np.uint8)
    lengths = np.ones(len(values), dtype=np.int64)
    rest = values.copy()
    for k in range(MAX_VARINT64_BYTES):
        groups[:, k] = (rest & np.uint64(0x7F)).astype(np.uint8)
        rest >>= np.uint64(7)
        more = rest != 0
        if not more.any():
            groups[:, k + 1 :] = 0  # every value has ended: the rest of the matrix is padding
            break
        groups[more, k] |= 0x80
        lengths += more
    return groups, lengths


def concat_segments(source: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The segments ``source[starts[j] : starts[j] + lengths[j]]``, concatenated in order."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return source[:0]
    out_starts = np.cumsum(lengths) - lengths
    shift = np.repeat(np.asarray(starts, dtype=np.int64) - out_starts, lengths)
    return source[np.arange(total, dtype=np.int64) + shift]


def row_prefixes(matrix: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The first ``lengths[i]`` entries of each row of ``matrix``, concatenated."""
    return matrix[np.arange(matrix.shape[1]) < np.asarray(lengths)[:, None]]


def place(rows: np.ndarray, cursor: np.ndarray, matrix: np.ndarray, lengths: np.ndarray) -> None:
    """Copy the first ``lengths[i]`` bytes of ``matrix[i]`` into ``rows[i]`` at column
    ``cursor[i]``, and advance ``cursor`` past them."""
    for k in range(matrix.shape[1]):
        selected = np.flatnonzero(lengths > k)
        if not len(selected):
            break
        rows[selected, cursor[selected] + k] = matrix[selected, k]
    cursor += lengths
