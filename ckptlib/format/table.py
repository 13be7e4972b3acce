"""SSTable files: sorted key/value tables, the container of every ``.index`` (and V1) file.

::

    data block 0 .. data block n-1      entries, keys strictly increasing (memcmp order)
    metaindex block                     always empty in TensorFlow's files
    index block                         one entry per data block: separator key -> BlockHandle
    footer (48 bytes)                   see footer.py

Blocks are closed once their size estimate reaches ``BLOCK_SIZE`` (256 KiB, TensorFlow's
``table_options.h`` default, not LevelDB's 4 KiB). An index key is any key >= every key of its
block and < every key of the next; the builder picks the shortest such key exactly as
TensorFlow does, so the files it writes are byte-identical to TensorFlow's.

The builder writes through ``append(bytes)``; the reader reads through a ``ByteSource``
(size + read at an offset). Neither ever sees a path.

``TableBuilder`` is the reference writer; ``bulk_table.py`` builds a whole table from columns
with numpy and must give exactly its bytes.
"""

from __future__ import annotations

import array
import bisect
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Protocol

from ckptlib.errors import CorruptCheckpointError, TensorNotFoundError
from ckptlib.format.block import (
    INDEX_BLOCK_RESTART_INTERVAL,
    BlockBuilder,
    BlockColumns,
    concat_columns,
    parse_block,
    parse_block_columns,
)
from ckptlib.format.footer import BLOCK_TRAILER_SIZE, FOOTER_SIZE, BlockHandle, Footer, block_trailer, check_block

BLOCK_SIZE = 262144
# TableBuilder flushes the current block before an entry this many times the block size.
OVERLY_LARGE_BLOCK_RATIO = 2


class ByteSource(Protocol):
    """Random-access bytes: a file, a memory map, or a bytes object in tests."""

    @property
    def size(self) -> int: ...

    def read_at(self, offset: int, length: int) -> bytes: ...


class BytesSource:
    """A ``ByteSource`` over bytes in memory."""

    def __init__(self, data: bytes):
        self._data = data

    @property
    def size(self) -> int:
        return len(self._data)

    def read_at(self, offset: int, length: int) -> bytes:
        return self._data[offset : offset + length]


def shortest_separator(start: bytes, limit: bytes) -> bytes:
    """The shortest key k with start <= k < limit, as TensorFlow's FindShortestSeparator picks it."""
    n = min(len(start), len(limit))
    i = 0
    while i < n and start[i] == limit[i]:
        i += 1
    if i < n:
        byte = start[i]
        if byte < 0xFF and byte + 1 < limit[i]:
            return start[:i] + bytes((byte + 1,))
    return start


def short_successor(key: bytes) -> bytes:
    """A short key >= ``key``: its first non-0xff byte incremented, the rest dropped."""
    for i, byte in enumerate(key):
        if byte != 0xFF:
            return key[:i] + bytes((byte + 1,))
    return key


class TableBuilder:
    """Writes a table through ``append``; keys must be added in strictly increasing order."""

    def __init__(self, append: Callable[[bytes], object], block_size: int = BLOCK_SIZE):
        self._append = append
        self._block_size = block_size
        self._offset = 0
        self._data_block = BlockBuilder()
        self._index_block = BlockBuilder(INDEX_BLOCK_RESTART_INTERVAL)
        self._last_key = b""
        self._num_entries = 0
        self._pending_handle: BlockHandle | None = None

    @property
    def num_entries(self) -> int:
        return self._num_entries

    def add(self, key: bytes, value: bytes) -> None:
        if self._num_entries > 0:
            if key <= self._last_key:
                raise ValueError(f"table keys must be strictly increasing: {key!r} after {self._last_key!r}")
            if len(key) + len(value) >= OVERLY_LARGE_BLOCK_RATIO * self._block_size:
                self._flush()
        if self._pending_handle is not None:
            separator = shortest_separator(self._last_key, key)
            self._index_block.add(separator, self._pending_handle.encode())
            self._pending_handle = None
        self._last_key = key
        self._num_entries += 1
        self._data_block.add(key, value)
        if self._data_block.size_estimate() >= self._block_size:
            self._flush()

    def finish(self) -> int:
        """Write the remaining blocks and the footer; returns the file size."""
        self._flush()
        metaindex = self._write_block(BlockBuilder())
        if self._pending_handle is not None:
            self._index_block.add(short_successor(self._last_key), self._pending_handle.encode())
            self._pending_handle = None
        index = self._write_block(self._index_block)
        footer = Footer(metaindex, index).encode()
        self._append(footer)
        self._offset += len(footer)
        return self._offset

    def _flush(self) -> None:
        if self._data_block.empty():
            return
        self._pending_handle = self._write_block(self._data_block)

    def _write_block(self, block: BlockBuilder) -> BlockHandle:
        contents = block.finish()
        handle = BlockHandle(self._offset, len(contents))
        self._append(contents)
        self._append(block_trailer(contents))
        self._offset += len(contents) + BLOCK_TRAILER_SIZE
        return handle


def build_table(items: Iterator[tuple[bytes, bytes]] | list[tuple[bytes, bytes]]) -> bytes:
    """A whole table in memory from ``(key, value)`` pairs in strictly increasing key order."""
    chunks: list[bytes] = []
    builder = TableBuilder(chunks.append)
    for key, value in items:
        builder.add(key, value)
    builder.finish()
    return b"".join(chunks)


class TableReader:
    """Reads a table lazily: the index block at open, each data block on first use.

    Every block's checksum is verified when ``verify`` is set. Keys are checked to be
    strictly increasing and to lie within their index entry's range, so a damaged or
    hostile table cannot present duplicate or misplaced keys.
    """

    def __init__(self, source: ByteSource, verify: bool = True):
        self._source = source
        self._verify = verify
        size = source.size
        if size < FOOTER_SIZE:
            raise CorruptCheckpointError("file is too short to be an sstable")
        footer = Footer.decode(source.read_at(size - FOOTER_SIZE, FOOTER_SIZE))
        self._data_end = size - FOOTER_SIZE
        self._metaindex = footer.metaindex
        index = parse_block_columns(check_block(self._read_raw_block(footer.index.offset, footer.index.size), verify))
        self._separators = index.keys
        # Two machine integers per data block, not a handle object each: a hostile index
        # block holds a million handles in a few megabytes.
        self._offsets = array.array("q")
        self._sizes = array.array("q")
        end = 0
        for i in range(len(index.keys)):
            handle = BlockHandle.decode_exact(index.value(i))
            # Writers place data blocks one after another, in key order: handles that
            # overlap or go back would let one small block be parsed once per handle.
            if handle.offset < end:
                raise CorruptCheckpointError(f"bad block handle: data block {i} overlaps the block before it")
            end = handle.offset + handle.size + BLOCK_TRAILER_SIZE
            if end > self._data_end:
                raise CorruptCheckpointError("bad block handle: block extends past the end of the file")
            self._offsets.append(handle.offset)
            self._sizes.append(handle.size)
        # Parsed data blocks, least recently used first, kept up to an estimate of their
        # memory that grows with the file (a whole real index fits: lookups in any order
        # stay cheap) and is bounded by it.
        self._blocks: OrderedDict[int, BlockColumns] = OrderedDict()
        self._cached_bytes = 0
        self._cache_budget = _CACHE_SLACK_BYTES + _CACHE_FILE_MULTIPLE * size

    @property
    def num_blocks(self) -> int:
        return len(self._offsets)

    def get(self, key: bytes) -> bytes:
        """The value stored under ``key``; raises ``TensorNotFoundError`` when absent."""
        i = bisect.bisect_left(self._separators, key)
        if i < len(self._offsets):
            block = self._data_block(i)
            j = bisect.bisect_left(block.keys, key)
            if j < len(block.keys) and block.keys[j] == key:
                return block.value(j)
        raise TensorNotFoundError(f"key {key!r} not found")

    def first(self) -> tuple[bytes, bytes]:
        """The first entry of the table (a bundle's header)."""
        for i in range(len(self._offsets)):
            block = self._data_block(i)
            if block.keys:
                return block.keys[0], block.value(0)
        raise CorruptCheckpointError("table has no entries")

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every entry in key order."""
        for i in range(len(self._offsets)):
            yield from self._data_block(i).entries()

    def iter_keys(self) -> Iterator[bytes]:
        """Every key in order (``items`` without making a value or a pair per entry)."""
        for i in range(len(self._offsets)):
            yield from self._data_block(i).keys

    def columns(self) -> BlockColumns:
        """Every entry, in key order, as columns (``items`` without a tuple or a value
        object per entry)."""
        return concat_columns([self._data_block(i) for i in range(len(self._offsets))])

    def verify_all(self) -> None:
        """Read and check every block: each data block (checksums, key order) and the
        metaindex block, which reading never needs (TensorFlow's is always empty)."""
        for i in range(len(self._offsets)):
            self._data_block(i)
        try:
            self._read_block(self._metaindex)
        except CorruptCheckpointError as e:
            raise type(e)(f"metaindex block: {e.reason}") from None

    def _data_block(self, i: int) -> BlockColumns:
        block = self._blocks.get(i)
        if block is not None:
            self._blocks.move_to_end(i)
            return block
        block = self._block_columns(i)
        self._cached_bytes += _memory_estimate(block)
        while self._blocks and self._cached_bytes > self._cache_budget:
            self._cached_bytes -= _memory_estimate(self._blocks.popitem(last=False)[1])
        self._blocks[i] = block
        return block

    def _block_columns(self, i: int) -> BlockColumns:
        """Data block ``i``, parsed and checked against its index range."""
        raw = self._read_raw_block(self._offsets[i], self._sizes[i])
        columns = parse_block_columns(check_block(raw, self._verify))
        if not columns.keys:  # TableBuilder never writes one
            raise CorruptCheckpointError(f"data block {i} is empty")
        low = self._separators[i - 1] if i > 0 else None
        if (low is not None and columns.keys[0] <= low) or columns.keys[-1] > self._separators[i]:
            raise CorruptCheckpointError(f"data block {i} holds keys outside its index range")
        return columns

    def _read_block(self, handle: BlockHandle) -> list[tuple[bytes, bytes]]:
        return parse_block(check_block(self._read_raw_block(handle.offset, handle.size), self._verify))

    def _read_raw_block(self, offset: int, size: int) -> bytes:
        """A block and its trailer, as stored."""
        if offset + size + BLOCK_TRAILER_SIZE > self._data_end:
            raise CorruptCheckpointError("bad block handle: block extends past the end of the file")
        raw = self._source.read_at(offset, size + BLOCK_TRAILER_SIZE)
        if len(raw) != size + BLOCK_TRAILER_SIZE:
            raise CorruptCheckpointError("truncated block read")
        return raw


# The parsed-block cache holds up to this much, plus this multiple of the file's size.
_CACHE_SLACK_BYTES = 64 << 20
_CACHE_FILE_MULTIPLE = 8
# Memory of a parsed block beyond its contents: per entry, a key object and two array
# slots; per block, the arrays and containers themselves.
_ENTRY_MEMORY = 100
_BLOCK_MEMORY = 512


def _memory_estimate(block: BlockColumns) -> int:
    return len(block.data) + _ENTRY_MEMORY * len(block.keys) + _BLOCK_MEMORY
