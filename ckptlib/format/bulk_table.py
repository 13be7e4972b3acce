"""A whole SSTable from columns of keys and values, built with numpy.

The same bytes as ``TableBuilder`` (block cuts, restart points, prefix compression, index
separators, trailers, footer; see ``table.py`` and ``block.py``), but with the per-entry
work done on whole arrays: an index of 100,000 entries builds in a few numpy passes
instead of 100,000 trips through ``BlockBuilder.add``. Tables whose keys or values reach
128 bytes (so that an entry's three length varints might not be one byte each) go
through ``TableBuilder``, as do tables with blocks so small that an entry could fill two.

The reference it must equal, byte for byte: ``table.TableBuilder`` (``add`` of each key and
value in order, then ``finish``). The tests that prove it, on random key/value tables and
block sizes and on a 20,000-entry index over many blocks:

    tests/format/test_format_bulk.py::test_bulk_tables_are_byte_identical_to_table_builder_tables
    tests/format/test_format_bulk.py::test_many_entries_over_many_blocks
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from ckptlib.format.block import DATA_BLOCK_RESTART_INTERVAL, INDEX_BLOCK_RESTART_INTERVAL, BlockBuilder
from ckptlib.format.footer import BLOCK_TRAILER_SIZE, BlockHandle, Footer, block_trailer
from ckptlib.format.table import BLOCK_SIZE, OVERLY_LARGE_BLOCK_RATIO, TableBuilder, short_successor, shortest_separator
from ckptlib.format.vector_coding import concat_segments

# Entries are 3 length bytes + key suffix + value: each length must fit one varint byte.
_MAX_SMALL = 0x7F
_ENTRY_HEADER = 3


def build_table_from_columns(
    keys: Sequence[bytes], values: np.ndarray, value_lengths: np.ndarray, block_size: int = BLOCK_SIZE
) -> bytes:
    """The table of ``(keys[i], value i)``, values given back to back in ``values``
    (uint8) with their ``value_lengths``; keys strictly increasing."""
    value_lengths = np.asarray(value_lengths, dtype=np.int64)
    n = len(keys)
    key_lengths = np.fromiter(map(len, keys), dtype=np.int64, count=n)
    if (
        n == 0
        or key_lengths.max() > _MAX_SMALL
        or value_lengths.max() > _MAX_SMALL
        or (key_lengths + value_lengths).max() >= OVERLY_LARGE_BLOCK_RATIO * block_size  # tiny test block sizes
    ):
        return _with_table_builder(keys, values, value_lengths, block_size)
    if any(a >= b for a, b in itertools.pairwise(keys)):
        raise ValueError("table keys must be strictly increasing")
    key_bytes = np.frombuffer(b"".join(keys), dtype=np.uint8)
    key_starts = np.cumsum(key_lengths) - key_lengths
    value_starts = np.cumsum(value_lengths) - value_lengths
    shared = _shared_with_previous(key_bytes, key_starts, key_lengths)
    block_starts = _block_starts(shared, key_lengths, value_lengths, block_size)

    # Restart points (shared = 0) every 16 entries, counted from each block's start.
    block_of = np.repeat(np.arange(len(block_starts)), np.diff(np.append(block_starts, n)))
    position = np.arange(n) - block_starts[block_of]
    restart = position % DATA_BLOCK_RESTART_INTERVAL == 0
    shared = np.where(restart, 0, shared)
    non_shared = key_lengths - shared

    headers = np.stack([shared, non_shared, value_lengths], axis=1).astype(np.uint8).reshape(-1)
    source = np.concatenate([headers, key_bytes, values])
    starts = np.stack(
        [
            np.arange(n) * _ENTRY_HEADER,
            len(headers) + key_starts + shared,
            len(headers) + len(key_bytes) + value_starts,
        ],
        axis=1,
    ).reshape(-1)
    lengths = np.stack([np.full(n, _ENTRY_HEADER), non_shared, value_lengths], axis=1).reshape(-1)
    entries = concat_segments(source, starts, lengths).tobytes()
    entry_sizes = _ENTRY_HEADER + non_shared + value_lengths
    entry_ends = np.cumsum(entry_sizes)
    entry_starts = entry_ends - entry_sizes

    chunks: list[bytes] = []
    offset = 0
    index = BlockBuilder(INDEX_BLOCK_RESTART_INTERVAL)
    bounds = [*block_starts.tolist(), n]
    for first, end in itertools.pairwise(bounds):
        base = int(entry_starts[first])
        restarts = entry_starts[first:end][restart[first:end]] - base
        contents = (
            entries[base : int(entry_ends[end - 1])]
            + restarts.astype("<u4").tobytes()
            + len(restarts).to_bytes(4, "little")
        )
        chunks += [contents, block_trailer(contents)]
        last = keys[end - 1]
        separator = shortest_separator(last, keys[end]) if end < n else short_successor(last)
        index.add(separator, BlockHandle(offset, len(contents)).encode())
        offset += len(contents) + BLOCK_TRAILER_SIZE
    metaindex = BlockBuilder().finish()
    chunks += [metaindex, block_trailer(metaindex)]
    metaindex_handle = BlockHandle(offset, len(metaindex))
    offset += len(metaindex) + BLOCK_TRAILER_SIZE
    index_contents = index.finish()
    chunks += [index_contents, block_trailer(index_contents)]
    chunks.append(Footer(metaindex_handle, BlockHandle(offset, len(index_contents))).encode())
    return b"".join(chunks)


def _shared_with_previous(key_bytes: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """For each key, the length of the prefix it shares with the key before it (0 for the first)."""
    n = len(lengths)
    width = int(lengths.max()) if n else 0
    padded = np.zeros((n, width + 1), dtype=np.int16)  # -1 marks "past the end"
    padded[:] = -1
    columns = np.arange(width)
    inside = columns < lengths[:, None]
    padded[:, :width][inside] = key_bytes[(starts[:, None] + columns)[inside]]
    differs = padded[1:] != padded[:-1]
    shared = np.zeros(n, dtype=np.int64)
    shared[1:] = np.argmax(differs, axis=1)  # keys are distinct, so some column differs
    return np.minimum(shared, np.minimum(lengths, np.roll(lengths, 1)))


def _block_starts(
    shared: np.ndarray, key_lengths: np.ndarray, value_lengths: np.ndarray, block_size: int
) -> np.ndarray:
    """Where ``TableBuilder`` starts each data block: it closes a block right after the entry
    that brings the block's size estimate (entries + 4 per restart + 4) to ``block_size``."""
    n = len(shared)
    starts = []
    first = 0
    window = 256
    while first < n:
        end = min(n, first + window)
        position = np.arange(end - first)
        restart = position % DATA_BLOCK_RESTART_INTERVAL == 0
        own = np.where(restart, 0, shared[first:end])
        sizes = _ENTRY_HEADER + key_lengths[first:end] - own + value_lengths[first:end]
        estimate = np.cumsum(sizes) + 4 * (position // DATA_BLOCK_RESTART_INTERVAL + 1) + 4
        full = np.flatnonzero(estimate >= block_size)
        if not len(full) and end < n:
            window *= 4  # the block runs past the window: look further
            continue
        starts.append(first)
        first = first + int(full[0]) + 1 if len(full) else n
    return np.asarray(starts, dtype=np.int64)


def _with_table_builder(keys: Sequence[bytes], values: np.ndarray, value_lengths: np.ndarray, block_size: int) -> bytes:
    chunks: list[bytes] = []
    builder = TableBuilder(chunks.append, block_size)
    data = values.tobytes()
    position = 0
    for key, length in zip(keys, value_lengths.tolist(), strict=True):
        builder.add(key, data[position : position + length])
        position += length
    builder.finish()
    return b"".join(chunks)
