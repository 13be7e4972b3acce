"""A V2 bundle's ``.index`` values: the header under key ``""``, then one entry per tensor key.

::

    ""      BundleHeaderProto  num_shards | endianness | version {producer 1, min_consumer 0}
    name    BundleEntryProto   dtype | shape | shard_id | offset | size | masked crc32c
    name    (sliced tensor)    dtype | full shape | slices[]            no data of its own
    key(name, slice)           an ordinary entry holding one slice's data (see slices.py)

Tensor data lives in ``prefix.data-<shard_id>-of-<num_shards>`` at ``[offset, offset+size)``.
Values decoded here are checked for internal sense (shape, sizes, version) before anyone
uses them; their consistency with the data files is the reader's job.

This is the reference codec, one entry at a time. ``bundle_columns.py`` codes many entries at
once with numpy and must give exactly what this module gives.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

from google.protobuf.message import DecodeError

from ckptlib.errors import CorruptCheckpointError, InvalidTensorError, UnsupportedFeatureError
from ckptlib.format import dtypes
from ckptlib.format.coding import MAX_VARINT64_BYTES, encode_varint
from ckptlib.format.crc import MASK_DELTA
from ckptlib.format.proto.tensor_bundle_pb2 import BundleEntryProto, BundleHeaderProto
from ckptlib.format.slices import TensorSlice

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
