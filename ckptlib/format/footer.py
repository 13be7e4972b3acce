"""Block handles, the block trailer and the 48-byte table footer.

::

    block handle  offset:varint64 | size:varint64            (size excludes the trailer)
    block on disk contents | type:uint8 | masked crc32c(contents + type):fixed32
    footer        metaindex handle | index handle | zero padding to 40 bytes
                  | magic 0xdb4775248b80fb57 as fixed64 (bytes 57 fb 80 8b 24 75 47 db)
"""

from __future__ import annotations

from dataclasses import dataclass

from ckptlib.errors import ChecksumMismatchError, CorruptCheckpointError, UnsupportedFeatureError
from ckptlib.format.coding import (
    Bytes,
    decode_fixed32,
    decode_fixed64,
    decode_varint,
    encode_fixed32,
    encode_fixed64,
    encode_varint,
)
from ckptlib.format.crc import crc32c, mask, unmask

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
MAX_BLOCK_HANDLE_SIZE = 20
BLOCK_TRAILER_SIZE = 5

NO_COMPRESSION = 0
SNAPPY_COMPRESSION = 1


@dataclass(frozen=True)
class BlockHandle:
    offset: int
    size: int

    def encode(self) -> bytes:
        return encode_varint(self.offset) + encode_varint(self.size)

    @classmethod
    def decode(cls, buf: Bytes, pos: int = 0) -> tuple[BlockHandle, int]:
        offset, pos = decode_varint(buf, pos)
        size, pos = decode_varint(buf, pos)
        return cls(offset, size), pos

    @classmethod
    def decode_exact(cls, buf: Bytes) -> BlockHandle:
        """A handle that must fill ``buf`` exactly (an index block value)."""
        handle, end = cls.decode(buf)
        if end != len(buf):
            raise CorruptCheckpointError("bad block handle")
        return handle


@dataclass(frozen=True)
class Footer:
    metaindex: BlockHandle
    index: BlockHandle

    def encode(self) -> bytes:
        handles = self.metaindex.encode() + self.index.encode()
        return handles.ljust(2 * MAX_BLOCK_HANDLE_SIZE, b"\0") + encode_fixed64(TABLE_MAGIC)

    @classmethod
    def decode(cls, buf: Bytes) -> Footer:
        if len(buf) != FOOTER_SIZE:
            raise CorruptCheckpointError("file is too short to be an sstable")
        if decode_fixed64(buf, FOOTER_SIZE - 8) != TABLE_MAGIC:
            raise CorruptCheckpointError("not an sstable (bad magic number)")
        metaindex, pos = BlockHandle.decode(buf, 0)
        index, _ = BlockHandle.decode(buf, pos)
        return cls(metaindex, index)


def block_trailer(contents: Bytes, block_type: int = NO_COMPRESSION) -> bytes:
    type_byte = bytes((block_type,))
    return type_byte + encode_fixed32(mask(crc32c(type_byte, crc32c(contents))))


def check_block(raw: Bytes, verify: bool = True) -> memoryview:
    """Contents of a block read with its trailer, after checking type and checksum."""
    if len(raw) < BLOCK_TRAILER_SIZE:
        raise CorruptCheckpointError("truncated block read")
    view = memoryview(raw)
    contents = view[: len(raw) - BLOCK_TRAILER_SIZE]
    block_type = raw[len(raw) - BLOCK_TRAILER_SIZE]
    if verify:
        stored = unmask(decode_fixed32(raw, len(raw) - 4))
        actual = crc32c(view[: len(raw) - 4])
        if stored != actual:
            raise ChecksumMismatchError("block checksum mismatch")
    if block_type == SNAPPY_COMPRESSION:
        raise UnsupportedFeatureError("snappy-compressed table blocks are not supported")
    if block_type != NO_COMPRESSION:
        raise CorruptCheckpointError(f"bad block type {block_type}")
    return contents
