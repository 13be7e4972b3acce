"""Blocks: the unit of an SSTable, a run of sorted key/value entries with prefix-compressed keys.

::

    entry*  restart[num_restarts]:fixed32  num_restarts:fixed32
    entry = shared:varint32 | non_shared:varint32 | value_length:varint32
            | key[shared:] (non_shared bytes) | value (value_length bytes)

``shared`` is the length of the prefix the key has in common with the previous key; it is
0 at a *restart point*, one every ``restart_interval`` entries, whose byte offsets are
listed in ``restart`` so a reader can binary-search. An empty block is ``00000000 01000000``.
"""

from __future__ import annotations

from ckptlib.errors import CorruptCheckpointError
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


def parse_block(contents: Bytes) -> list[tuple[bytes, bytes]]:
    """All ``(key, value)`` entries of a block, in order.

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
    entries: list[tuple[bytes, bytes]] = []
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
        if entries and new_key <= key:
            raise CorruptCheckpointError(f"keys out of order in block: {new_key!r} after {key!r}")
        key = new_key
        entries.append((key, data[key_end:value_end]))
        pos = value_end
    return entries
