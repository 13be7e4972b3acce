"""Blocks: the unit of an SSTable, a run of sorted key/value entries with prefix-compressed keys.

::

    entry*  restart[num_restarts]:fixed32  num_restarts:fixed32
    entry = shared:varint32 | non_shared:varint32 | value_length:varint32
            | key[shared:] (non_shared bytes) | value (value_length bytes)

``shared`` is the length of the prefix the key has in common with the previous key; it is
0 at a *restart point*, one every ``restart_interval`` entries, whose byte offsets are
listed in ``restart`` so a reader can binary-search. An empty block is ``00000000 01000000``.

``parse_block_columns``'s entry loop is the reference parser; large blocks in the layout every
writer produces are first tried by ``block_walk.py``, which must give exactly what the loop gives.
"""

from __future__ import annotations

import array
import itertools
from typing import NamedTuple

import numpy as np

from ckptlib.errors import CorruptCheckpointError
from ckptlib.format.block_walk import parse_common_block
from ckptlib.format.coding import Bytes, decode_fixed32, decode_varint32, encode_fixed32, encode_varint

DATA_BLOCK_RESTART_INTERVAL = 16
INDEX_BLOCK_RESTART_INTERVAL = 1
# Prefix compression lets n entries of one added byte each spell keys totalling n**2/2
# bytes. Real blocks stay far below this many decoded key bytes per stored byte; a hostile
# one that does not is refused before it can exhaust memory.
MAX_KEY_EXPANSION = 16
MAX_KEY_BYTES_SLACK = 1 << 20


class BlockBuilder:
    """Accumulates entries (keys strictly increasing) and serializes them as one block."""

    def __init__(self, restart_interval: int = DATA_BLOCK_RESTART_INTERVAL):
        self._restart_interval = restart_interval
        self._buffer = bytearray()
        self._restarts = [0]
        self._counter = 0
        self._last_key = b""

    def add(self, key: bytes, value: bytes) -> None:
        shared = 0
        if self._counter < self._restart_interval:
            limit = min(len(key), len(self._last_key))
            last = self._last_key
            while shared < limit and key[shared] == last[shared]:
                shared += 1
        else:
            self._restarts.append(len(self._buffer))
            self._counter = 0
        buf = self._buffer
        buf += encode_varint(shared)
        buf += encode_varint(len(key) - shared)
        buf += encode_varint(len(value))
        buf += key[shared:]
        buf += value
        self._last_key = key
        self._counter += 1

    def empty(self) -> bool:
        return not self._buffer

    def size_estimate(self) -> int:
        """Size of the block if finished now: what the table builder compares to block_size."""
        return len(self._buffer) + 4 * len(self._restarts) + 4

    def finish(self) -> bytes:
        """The serialized block; the builder is reset for reuse."""
        out = self._buffer + b"".join(encode_fixed32(r) for r in self._restarts)
        out += encode_fixed32(len(self._restarts))
        self.__init__(self._restart_interval)  # type: ignore[misc]
        return bytes(out)


class BlockColumns(NamedTuple):
    """A block's (or a table's) entries as columns: value ``i`` is
    ``data[value_starts[i] : value_ends[i]]``."""

    keys: list[bytes]
    data: bytes
    value_starts: np.ndarray
    value_ends: np.ndarray

    def value(self, i: int) -> bytes:
        return self.data[int(self.value_starts[i]) : int(self.value_ends[i])]

    def values(self) -> list[bytes]:
        return list(map(self.data.__getitem__, map(slice, self.value_starts.tolist(), self.value_ends.tolist())))

    def entries(self) -> list[tuple[bytes, bytes]]:
        return list(zip(self.keys, self.values(), strict=True))


def concat_columns(parts: list[BlockColumns]) -> BlockColumns:
    """The entries of several blocks, in order, as one set of columns."""
    if len(parts) == 1:
        return parts[0]
    shifts = np.cumsum([0] + [len(part.data) for part in parts], dtype=np.int64)
    return BlockColumns(
        list(itertools.chain.from_iterable(part.keys for part in parts)),
        b"".join(part.data for part in parts),
        np.concatenate([np.zeros(0, np.int64), *(p.value_starts + d for p, d in zip(parts, shifts, strict=False))]),
        np.concatenate([np.zeros(0, np.int64), *(p.value_ends + d for p, d in zip(parts, shifts, strict=False))]),
    )


def parse_block(contents: Bytes) -> list[tuple[bytes, bytes]]:
    """All ``(key, value)`` entries of a block, in order; see ``parse_block_columns``."""
    return parse_block_columns(contents).entries()


def parse_block_columns(contents: Bytes) -> BlockColumns:
    """All entries of a block, in order, as columns.

    Raises ``CorruptCheckpointError`` for a malformed block (bad restart array, entries
    running past the restart array, a shared prefix longer than the previous key) or for
    keys that are not strictly increasing.
    """
    size = len(contents)
    if size < 4:
        raise CorruptCheckpointError("bad block contents: shorter than its restart count")
    num_restarts = decode_fixed32(contents, size - 4)
    if num_restarts > (size - 4) // 4:
        raise CorruptCheckpointError(f"bad block contents: {num_restarts} restarts in a {size}-byte block")
    limit = size - 4 * (num_restarts + 1)
    data = bytes(contents[:limit])
    if num_restarts >= _BULK_MIN_RESTARTS and limit <= _BULK_MAX_BYTES:
        restarts = np.frombuffer(bytes(contents[limit : size - 4]), dtype="<u4").astype(np.int64)
        parsed = parse_common_block(
            data,
            restarts,
            MAX_KEY_BYTES_SLACK + MAX_KEY_EXPANSION * size,
            MAX_KEY_BYTES_SLACK + MAX_KEY_EXPANSION * limit,
        )
        if parsed is not None:
            walked_keys, value_starts, value_ends = parsed
            return BlockColumns(walked_keys, data, value_starts, value_ends)
    keys: list[bytes] = []
    starts = array.array("q")  # 8 bytes per entry, where a list holds an int object each
    ends = array.array("q")
    pos = 0
    key = b""
    key_budget = MAX_KEY_BYTES_SLACK + MAX_KEY_EXPANSION * size
    while pos < limit:
        # Most entries have all three varints below 128: decode them inline.
        if pos + 3 <= limit and data[pos] < 0x80 and data[pos + 1] < 0x80 and data[pos + 2] < 0x80:
            shared, non_shared, value_len = data[pos], data[pos + 1], data[pos + 2]
            pos += 3
        else:
            shared, pos = decode_varint32(data, pos)
            non_shared, pos = decode_varint32(data, pos)
            value_len, pos = decode_varint32(data, pos)
        key_end = pos + non_shared
        value_end = key_end + value_len
        if shared > len(key) or value_end > limit:
            raise CorruptCheckpointError("bad entry in block")
        key_budget -= shared + non_shared
        if key_budget < 0:
            raise CorruptCheckpointError("bad block contents: keys expand beyond any real checkpoint's")
        new_key = key[:shared] + data[pos:key_end]
        if keys and new_key <= key:
            raise CorruptCheckpointError(f"keys out of order in block: {new_key!r} after {key!r}")
        key = new_key
        keys.append(key)
        starts.append(key_end)
        ends.append(value_end)
        pos = value_end
    return BlockColumns(keys, data, np.frombuffer(starts, dtype=np.int64), np.frombuffer(ends, dtype=np.int64))


# Blocks with at least this many restart points, and no larger than any real one with many
# entries (TensorFlow closes them near 256 KiB), are parsed by ``block_walk.py`` first: its
# temporary columns take some 25 bytes per byte of block.
_BULK_MIN_RESTARTS = 8
_BULK_MAX_BYTES = 4 << 20
