"""A V2 bundle's ``.index`` values: the header under key ``""``, then one entry per tensor key.

::

    ""      BundleHeaderProto  num_shards | endianness | version {producer 1, min_consumer 0}
    name    BundleEntryProto   dtype | shape | shard_id | offset | size | masked crc32c
    name    (sliced tensor)    dtype | full shape | slices[]            no data of its own
    key(name, slice)           an ordinary entry holding one slice's data (see slices.py)

Tensor data lives in ``prefix.data-<shard_id>-of-<num_shards>`` at ``[offset, offset+size)``.
Values decoded here are checked for internal sense (shape, sizes, version) before anyone
uses them; their consistency with the data files is the reader's job.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from google.protobuf.message import DecodeError

from ckptlib.errors import CorruptCheckpointError, InvalidTensorError, UnsupportedFeatureError
from ckptlib.format import dtypes
from ckptlib.format.coding import MAX_VARINT64_BYTES, encode_varint
from ckptlib.format.crc import MASK_DELTA
from ckptlib.format.proto.tensor_bundle_pb2 import BundleEntryProto, BundleHeaderProto
from ckptlib.format.slices import TensorSlice
from ckptlib.format.vector_coding import concat_segments, place, row_prefixes, varints

HEADER_KEY = b""
# tensor_bundle.cc: kTensorBundleVersion, kTensorBundleMinConsumer, kTensorBundleMinProducer.
BUNDLE_VERSION = 1
BUNDLE_MIN_CONSUMER = 0
BUNDLE_MIN_PRODUCER = 0
# tensor_shape.h: MaxDimensions().
MAX_RANK = 254
# No real checkpoint has more data files than this; a header claiming more is damaged.
MAX_SHARDS = 1 << 20
# The masked crc32c of zero bytes, stored for every empty numeric tensor.
EMPTY_CRC = MASK_DELTA
_INT64_MAX = (1 << 63) - 1
_INT32_MAX = (1 << 31) - 1


def name_to_key(name: str) -> bytes:
    """A tensor name as its index key: UTF-8. Surrogate escapes (how ``key_to_name`` shows
    bytes that are not UTF-8, e.g. in slice keys) turn back into those bytes."""
    try:
        return name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise InvalidTensorError("tensor name is not encodable as UTF-8", tensor=repr(name)) from None


def key_to_name(key: bytes) -> str:
    """The inverse of ``name_to_key``; never fails."""
    return key.decode("utf-8", "surrogateescape")


def keys_to_names(keys: list[bytes]) -> list[str]:
    """``key_to_name`` of every key: one decode of all of them, split at NUL separators
    when no key holds a NUL (UTF-8 never puts a 0 byte inside a multi-byte character)."""
    joined = b"\0".join(keys)
    if len(keys) < 2 or joined.count(b"\0") != len(keys) - 1:
        return [key_to_name(key) for key in keys]
    return joined.decode("utf-8", "surrogateescape").split("\0")


@dataclass(frozen=True)
class Header:
    num_shards: int
    big_endian: bool = False


class Entry(NamedTuple):
    """One tensor's index entry. ``slices`` is non-empty only for a partitioned tensor's
    full entry, which holds no data itself. (A NamedTuple rather than a frozen dataclass:
    a 100,000-tensor index builds this many, and construction cost shows.)"""

    dtype: int
    shape: tuple[int, ...]
    shard_id: int = 0
    offset: int = 0
    size: int = 0
    crc32c: int = EMPTY_CRC
    slices: tuple[TensorSlice, ...] = ()

    @property
    def num_elements(self) -> int:
        return math.prod(self.shape)


def encode_header(num_shards: int) -> bytes:
    proto = BundleHeaderProto(num_shards=num_shards)
    proto.version.producer = BUNDLE_VERSION
    proto.version.min_consumer = BUNDLE_MIN_CONSUMER
    return proto.SerializeToString()


def decode_header(value: bytes) -> Header:
    proto = BundleHeaderProto()
    try:
        proto.ParseFromString(value)
    except DecodeError:
        raise CorruptCheckpointError("unable to parse the bundle header") from None
    version = proto.version
    if version.producer < BUNDLE_MIN_PRODUCER:
        raise CorruptCheckpointError(f"checkpoint producer version {version.producer} is invalid")
    if version.min_consumer > BUNDLE_VERSION:
        raise UnsupportedFeatureError(
            f"checkpoint needs reader version {version.min_consumer}; ckptlib reads version {BUNDLE_VERSION}"
        )
    if BUNDLE_VERSION in version.bad_consumers:
        raise UnsupportedFeatureError(f"checkpoint disallows reader version {BUNDLE_VERSION}")
    if not 0 <= proto.num_shards <= MAX_SHARDS:
        raise CorruptCheckpointError(f"bundle header claims {proto.num_shards} shards")
    return Header(num_shards=proto.num_shards, big_endian=proto.endianness == BundleHeaderProto.BIG)


def encode_entry(entry: Entry) -> bytes:
    """The entry's serialized ``BundleEntryProto``, byte for byte what protobuf (and
    TensorFlow) write. Plain entries are encoded here directly; slices go through protobuf."""
    if entry.slices:
        return _encode_entry_proto(entry)
    return encode_plain_entry(entry.dtype, entry.shape, entry.shard_id, entry.offset, entry.size, entry.crc32c)


def encode_plain_entry(dtype: int, shape: tuple[int, ...], shard_id: int, offset: int, size: int, crc: int) -> bytes:
    """``encode_entry`` of an entry without slices, from its fields (the save hot path).

    proto3 leaves zero-valued scalars out; fields go in field-number order:
    ``08 dtype | 12 len TensorShapeProto | 18 shard_id | 20 offset | 28 size | 35 crc:fixed32``.
    """
    out = _entry_head(dtype, shape)
    if shard_id:
        out += _TAG_SHARD + _varint(shard_id)
    if offset:
        out += _TAG_OFFSET + _varint(offset)
    if size:
        out += _TAG_SIZE + _varint(size)
    if crc:
        out += _TAG_CRC + crc.to_bytes(4, "little")
    return out


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


@functools.lru_cache(maxsize=4096)
def _entry_head(dtype: int, shape: tuple[int, ...]) -> bytes:
    """The fields every plain entry of this dtype and shape starts with (1 and 2)."""
    return (_TAG_DTYPE + _varint(dtype) if dtype else b"") + _shape_field(shape)


def _encode_entry_proto(entry: Entry) -> bytes:
    proto = BundleEntryProto(dtype=entry.dtype, shard_id=entry.shard_id, offset=entry.offset, size=entry.size)
    proto.shape.SetInParent()  # TensorFlow always writes a shape, even a scalar's empty one
    for dim in entry.shape:
        proto.shape.dim.add(size=dim)
    if entry.slices:
        for tensor_slice in entry.slices:
            proto.slices.append(tensor_slice.to_proto())
    else:
        proto.crc32c = entry.crc32c
    return proto.SerializeToString()


# Field tags: (field number << 3) | wire type (0 varint, 2 length-delimited, 5 fixed32).
_TAG_DTYPE, _TAG_SHAPE, _TAG_SHARD = b"\x08", b"\x12", b"\x18"
_TAG_OFFSET, _TAG_SIZE, _TAG_CRC = b"\x20", b"\x28", b"\x35"
_ONE_BYTE_VARINTS = [bytes((i,)) for i in range(128)]


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _ONE_BYTE_VARINTS[value]
    return encode_varint(value)


@functools.lru_cache(maxsize=4096)
def _shape_field(shape: tuple[int, ...]) -> bytes:
    """Field 2 of an entry: the ``TensorShapeProto`` of ``shape``, tag and length included.
    Each dim is ``12 len (08 size)``; a zero size is left out, leaving ``12 00``."""
    dims = b"".join(b"\x12\x00" if d == 0 else _dim(d) for d in shape)
    return _TAG_SHAPE + _varint(len(dims)) + dims


def _dim(size: int) -> bytes:
    body = b"\x08" + encode_varint(size if size >= 0 else size + (1 << 64))
    return b"\x12" + _varint(len(body)) + body


def decode_entry(value: bytes) -> Entry:
    """Parse and sanity-check an entry; raises ``CorruptCheckpointError`` naming the problem."""
    fields = _parse_plain_entry(value)
    if fields is None:
        return _decode_entry_proto(value)
    dtype, dims, shard_id, offset, size, crc = fields
    if len(dims) > MAX_RANK or math.prod(d for d in dims if d) > _INT64_MAX >> 4:
        check_shape(list(dims))  # raises the specific error
    _check_size(dtype, math.prod(dims), size)
    return Entry(dtype, dims, shard_id, offset, size, crc)


def _parse_plain_entry(value: bytes) -> tuple[int, tuple[int, ...], int, int, int, int] | None:
    """The fields of an entry in the canonical layout ``encode_plain_entry`` (and TensorFlow)
    writes, with every number in range; None for anything else (slices, unknown or repeated
    fields, other orders, negative or oversized numbers), which protobuf then parses."""
    end = len(value)
    pos = 0
    dtype = shard_id = offset = size = crc = 0
    if pos < end and value[pos] == 0x08:
        dtype, pos = _small_varint(value, pos + 1, _INT32_MAX)
        if pos < 0:
            return None
    if pos + 1 >= end or value[pos] != 0x12:
        return None
    length = value[pos + 1]
    shape_end = pos + 2 + length
    if length >= 0x80 or shape_end > end:
        return None
    dims = _parse_dims(value[pos + 2 : shape_end])
    if dims is None:
        return None
    pos = shape_end
    if pos < end and value[pos] == 0x18:
        shard_id, pos = _small_varint(value, pos + 1, _INT32_MAX)
        if pos < 0:
            return None
    if pos < end and value[pos] == 0x20:
        offset, pos = _small_varint(value, pos + 1, _INT64_MAX)
        if pos < 0:
            return None
    if pos < end and value[pos] == 0x28:
        size, pos = _small_varint(value, pos + 1, _INT64_MAX)
        if pos < 0:
            return None
    if pos < end and value[pos] == 0x35:
        if pos + 5 > end:
            return None
        crc = int.from_bytes(value[pos + 1 : pos + 5], "little")
        pos += 5
    if pos != end:
        return None
    return dtype, dims, shard_id, offset, size, crc


@functools.lru_cache(maxsize=4096)
def _parse_dims(shape: bytes) -> tuple[int, ...] | None:
    """The dims of a serialized ``TensorShapeProto`` made only of ``12 len (08 size)`` dims."""
    dims = []
    pos, end = 0, len(shape)
    while pos < end:
        if shape[pos] != 0x12 or pos + 1 >= end:
            return None
        length = shape[pos + 1]
        dim_end = pos + 2 + length
        if length >= 0x80 or dim_end > end:
            return None
        if length == 0:
            dims.append(0)
        else:
            if shape[pos + 2] != 0x08:
                return None
            size, after = _small_varint(shape, pos + 3, _INT64_MAX)
            if after != dim_end:
                return None
            dims.append(size)
        pos = dim_end
    return tuple(dims)


def _small_varint(buf: bytes, pos: int, limit: int) -> tuple[int, int]:
    """A varint at ``pos`` no larger than ``limit``: ``(value, next position)``, or
    ``(0, -1)`` when it is truncated, overlong or out of range."""
    result = shift = 0
    end = min(len(buf), pos + MAX_VARINT64_BYTES)
    while pos < end:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (result, pos) if result <= limit else (0, -1)
        shift += 7
    return 0, -1


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


def _decode_entry_proto(value: bytes) -> Entry:
    try:
        proto = BundleEntryProto.FromString(value)
    except DecodeError:
        raise CorruptCheckpointError("entry is not parseable") from None
    shape_proto = proto.shape
    dims = [d.size for d in shape_proto.dim]
    if shape_proto.unknown_rank or len(dims) > MAX_RANK or (dims and min(dims) < 0):
        check_shape(dims, shape_proto.unknown_rank)  # raises the specific error
    count = math.prod(dims)
    if math.prod(d for d in dims if d) > _INT64_MAX >> 4:  # numpy refuses such shapes even when empty
        raise CorruptCheckpointError(f"invalid tensor shape {dims}: element count overflows int64")
    shard_id, offset, size = proto.shard_id, proto.offset, proto.size
    if shard_id < 0 or offset < 0 or size < 0:
        raise CorruptCheckpointError(f"negative location in entry: shard {shard_id}, offset {offset}, size {size}")
    if not proto.slices:
        dtype = proto.dtype
        _check_size(dtype, count, size)
        return Entry(dtype, tuple(dims), shard_id, offset, size, proto.crc32c)
    shape = tuple(dims)
    slices = tuple(TensorSlice.from_proto(s) for s in proto.slices)
    for tensor_slice in slices:
        try:
            tensor_slice.bounds(shape)
        except ValueError:
            raise CorruptCheckpointError(f"slice {tensor_slice} does not fit the tensor shape {list(shape)}") from None
    return Entry(proto.dtype, shape, shard_id, offset, size, proto.crc32c, slices)


def check_shape(dims: list[int], unknown_rank: bool = False) -> tuple[int, ...]:
    if unknown_rank:
        raise CorruptCheckpointError("tensor shape has unknown rank")
    if len(dims) > MAX_RANK:
        raise CorruptCheckpointError(f"tensor rank {len(dims)} exceeds the maximum of {MAX_RANK}")
    if dims and min(dims) < 0:
        raise CorruptCheckpointError(f"invalid tensor shape {dims}: negative dimension")
    if math.prod(d for d in dims if d) > _INT64_MAX >> 4:
        raise CorruptCheckpointError(f"invalid tensor shape {dims}: element count overflows int64")
    return tuple(dims)


def _check_size(dtype: int, count: int, size: int) -> None:
    """A numeric entry's size must be exactly its element count times the item size; a
    string entry needs at least one length byte per element plus the length checksum."""
    if dtype == dtypes.DT_STRING:
        if size < count + 4:
            raise CorruptCheckpointError(f"invalid size in bundle entry: stored {size}, expected at least {count + 4}")
        return
    itemsize = dtypes.itemsize(dtype)
    if itemsize is not None and size != count * itemsize:
        raise CorruptCheckpointError(f"invalid size in bundle entry: stored {size}, expected {count * itemsize}")
