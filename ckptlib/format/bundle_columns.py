"""Index entries many at a time, with numpy: the columnar twin of ``bundle.py``'s entry codec.

A checkpoint with 100,000 tensors has 100,000 index entries; coding them one Python call per
field costs more than writing their data. This module works on whole columns::

    dtypes    [1,    1,    ...]   shapes [(2, 3), (4,), ...]     one row per entry
    shard_ids [0,    0,    ...]   offsets [0, 24, ...]   sizes [24, 16, ...]   crcs [...]
        <->  values back to back   08 01 12 06 12 02 08 02 12 02 08 03 20 .. 28 18 35 c1c2c3c4 | 08 01 12 ...
             and their lengths     [13, ...]   (or start/end offsets into a table's data)

What it accelerates, and the reference it must equal, byte for byte and error for error:

    encode_plain_entries    ``bundle.encode_plain_entry`` of each row (the save path)
    decode_plain_entries,   ``bundle.decode_entry`` of each value in the canonical layout
    decode_plain_entries_at ``bundle._parse_plain_entry`` accepts; the rest are returned for
                            ``decode_entry`` to decode one at a time; a damaged value raises
                            what ``decode_entry`` raises for it (the restore path)
    keys_to_names           ``bundle.key_to_name`` of each key

The tests that prove they agree, on random inputs:

    tests/format/test_format_bulk.py::test_entries_encoded_together_match_entries_encoded_alone
    tests/format/test_format_entry_codec.py::test_entries_decoded_together_match_entries_decoded_alone
    tests/format/test_format_entry_codec.py::test_decoding_together_finds_plain_entries_and_leaves_the_rest
    tests/format/test_format_entry_codec.py::test_entries_round_trip_through_both_codecs
    tests/format/test_format_bundle.py::test_keys_to_names_decodes_every_key_as_key_to_name_does
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from ckptlib.errors import CorruptCheckpointError
from ckptlib.format import dtypes
from ckptlib.format.bundle import (
    _INT32_MAX,
    _INT64_MAX,
    _TAG_CRC,
    _TAG_OFFSET,
    _TAG_SHARD,
    _TAG_SIZE,
    MAX_RANK,
    _entry_head,
    _parse_dims,
    decode_entry,
    key_to_name,
)
from ckptlib.format.coding import MAX_VARINT64_BYTES
from ckptlib.format.vector_coding import concat_segments, place, row_prefixes, varints


def keys_to_names(keys: list[bytes]) -> list[str]:
    """``key_to_name`` of every key: one decode of all of them, split at NUL separators
    when no key holds a NUL (UTF-8 never puts a 0 byte inside a multi-byte character)."""
    joined = b"\0".join(keys)
    if len(keys) < 2 or joined.count(b"\0") != len(keys) - 1:
        return [key_to_name(key) for key in keys]
    return joined.decode("utf-8", "surrogateescape").split("\0")


def encode_plain_entries(
    dtype_enums: Sequence[int],
    shapes: Sequence[tuple[int, ...]],
    shard_ids: np.ndarray,
    offsets: np.ndarray,
    sizes: np.ndarray,
    crcs: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """``encode_plain_entry`` of many entries at once: the encoded values back to back
    (uint8) and each one's length. The same bytes, without a Python call per field."""
    n = len(shapes)
    heads = list(map(_HeadsOf().__getitem__, zip(dtype_enums, shapes, strict=True)))
    head_lengths = np.fromiter(map(len, heads), dtype=np.int64, count=n)
    head_bytes = np.frombuffer(b"".join(heads), dtype=np.uint8)
    tails = np.zeros((n, 3 * (1 + MAX_VARINT64_BYTES) + 5), dtype=np.uint8)
    cursor = np.zeros(n, dtype=np.int64)
    for tag, column in ((_TAG_SHARD, shard_ids), (_TAG_OFFSET, offsets), (_TAG_SIZE, sizes)):
        column = np.asarray(column, dtype=np.uint64)
        digits, lengths = varints(column)
        tagged = np.concatenate([np.full((n, 1), tag[0], dtype=np.uint8), digits], axis=1)
        place(tails, cursor, tagged, np.where(column != 0, lengths + 1, 0))
    crcs = np.asarray(crcs, dtype="<u4")
    tagged = np.concatenate([np.full((n, 1), _TAG_CRC[0], dtype=np.uint8), crcs.view(np.uint8).reshape(n, 4)], axis=1)
    place(tails, cursor, tagged, np.where(crcs != 0, 5, 0))
    tail_lengths = cursor
    # Interleave: head 0, tail 0, head 1, tail 1, ...
    source = np.concatenate([head_bytes, row_prefixes(tails, tail_lengths)])
    head_starts = np.cumsum(head_lengths) - head_lengths
    tail_starts = len(head_bytes) + np.cumsum(tail_lengths) - tail_lengths
    starts = np.stack([head_starts, tail_starts], axis=1).reshape(-1)
    lengths = np.stack([head_lengths, tail_lengths], axis=1).reshape(-1)
    return concat_segments(source, starts, lengths), head_lengths + tail_lengths


class _HeadsOf(dict[tuple[int, tuple[int, ...]], bytes]):
    """``_entry_head`` by ``(dtype, shape)``, looked up without a Python call on a hit."""

    def __missing__(self, key: tuple[int, tuple[int, ...]]) -> bytes:
        head = self[key] = _entry_head(*key)
        return head


class EntryColumns(NamedTuple):
    """Many entries decoded at once: one array per field, ``shapes`` as tuples."""

    dtypes: np.ndarray
    shapes: list[tuple[int, ...]]
    shard_ids: np.ndarray
    offsets: np.ndarray
    sizes: np.ndarray
    crcs: np.ndarray


def decode_plain_entries(values: Sequence[bytes]) -> tuple[EntryColumns, list[int]]:
    """``decode_entry`` of many values at once; see ``decode_plain_entries_at``."""
    lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    ends = np.cumsum(lengths)
    return decode_plain_entries_at(b"".join(values), ends - lengths, ends)


def decode_plain_entries_at(data: bytes, starts: np.ndarray, ends: np.ndarray) -> tuple[EntryColumns, list[int]]:
    """``decode_entry`` of the values ``data[starts[i] : ends[i]]`` at once, for those in
    the canonical layout without slices (see ``_parse_plain_entry``); returns their columns
    and the indexes of the rest, which the caller decodes one at a time. Raises what
    ``decode_entry`` would for the first value that is damaged (a size that does not match
    the shape, say)."""
    n = len(starts)
    ends = np.asarray(ends, dtype=np.int64)
    cursor = np.array(starts, dtype=np.int64)
    buf = np.frombuffer(data + bytes(2 * MAX_VARINT64_BYTES), dtype=np.uint8)  # reads may overrun
    ok = np.ones(n, dtype=bool)
    dtype_enums = _optional_varint(buf, cursor, ends, ok, 0x08, _INT32_MAX)
    ok &= (buf[cursor] == 0x12) & (buf[cursor + 1] < 0x80) & (cursor + 2 <= ends)
    shape_starts = cursor + 2
    shape_ends = np.where(ok, shape_starts + buf[cursor + 1], ends)
    ok &= shape_ends <= ends
    cursor = np.where(ok, shape_ends, ends)  # a bad row's cursor must not point past its value
    shard_ids = _optional_varint(buf, cursor, ends, ok, 0x18, _INT32_MAX)
    offsets = _optional_varint(buf, cursor, ends, ok, 0x20, _INT64_MAX)
    sizes = _optional_varint(buf, cursor, ends, ok, 0x28, _INT64_MAX)
    has_crc = ok & (cursor < ends) & (buf[cursor] == 0x35) & (cursor + 5 <= ends)
    crc_at = np.where(has_crc, cursor + 1, 0)[:, None] + np.arange(4)
    crcs = np.where(has_crc, np.ascontiguousarray(buf[crc_at]).view("<u4")[:, 0], 0)
    cursor = np.where(has_crc, cursor + 5, cursor)
    ok &= cursor == ends
    # Shapes repeat: each distinct serialized shape is parsed once (``_parse_dims`` caches).
    parsed = list(map(_parse_dims, map(data.__getitem__, map(slice, shape_starts.tolist(), shape_ends.tolist()))))
    unparsed = [i for i in np.flatnonzero(ok).tolist() if parsed[i] is None]
    ok[unparsed] = False
    rest = np.flatnonzero(~ok).tolist()
    shapes: list[tuple[int, ...]] = [dims or () for dims in parsed]
    columns = EntryColumns(dtype_enums, shapes, shard_ids, offsets, sizes, crcs.astype(np.uint32))
    _check_sizes(columns, ok, lambda i: data[starts[i] : ends[i]])
    return columns, rest


def _optional_varint(
    buf: np.ndarray, cursor: np.ndarray, ends: np.ndarray, ok: np.ndarray, tag: int, limit: int
) -> np.ndarray:
    """Decode, for every row still ``ok``, the varint field ``tag`` at ``cursor`` if it is
    there (0 if not), advancing ``cursor``; rows whose varint is malformed, runs past the
    value or exceeds ``limit`` are marked not ``ok``."""
    present = ok & (cursor < ends) & (buf[cursor] == tag)
    start = cursor + 1
    value = np.zeros(len(cursor), dtype=np.uint64)
    length = np.zeros(len(cursor), dtype=np.int64)  # 0: no final byte within 9 (63 bits)
    reading = np.flatnonzero(present)
    for k in range(MAX_VARINT64_BYTES - 1):  # a byte of every unfinished varint per step
        if not len(reading):
            break
        byte = buf[start[reading] + k]
        value[reading] |= (byte & 0x7F).astype(np.uint64) << np.uint64(7 * k)
        final = byte < 0x80
        length[reading[final]] = k + 1
        reading = reading[~final]
    bad = present & ((length == 0) | (start + length > ends) | (value > np.uint64(limit)))
    ok &= ~bad
    cursor += np.where(present & ~bad, 1 + length, 0)
    return np.where(present & ~bad, value, 0).astype(np.int64)


def _check_sizes(columns: EntryColumns, ok: np.ndarray, value: Callable[[int], bytes]) -> None:
    """Raise ``decode_entry``'s error for the first decoded entry whose size or shape is wrong."""
    counts = np.fromiter(map(_element_count, columns.shapes), dtype=np.int64, count=len(columns.shapes))
    itemsizes = _ITEMSIZES[np.minimum(columns.dtypes, len(_ITEMSIZES) - 1)]
    numeric = itemsizes > 0
    # counts are at most INT64_MAX >> 4 and item sizes at most 16: no overflow
    wrong = (counts < 0) | (numeric & (counts * itemsizes != columns.sizes))
    wrong |= (columns.dtypes == dtypes.DT_STRING) & (columns.sizes < counts + 4)
    for i in np.flatnonzero(ok & wrong)[:1]:
        decode_entry(value(i))  # raises the specific error
        raise CorruptCheckpointError("invalid entry")  # pragma: no cover - decode_entry raised


@functools.lru_cache(maxsize=4096)
def _element_count(shape: tuple[int, ...]) -> int:
    """The element count of ``shape``; -1 for a shape TensorFlow refuses."""
    if len(shape) > MAX_RANK or math.prod(d for d in shape if d) > _INT64_MAX >> 4:
        return -1
    return math.prod(shape)


# Item size by DataType value (0: not a fixed-size numeric type); the last slot stands for
# every value beyond the table.
_ITEMSIZES = np.array([dtypes.itemsize(enum) or 0 for enum in range(128)] + [0], dtype=np.int64)
