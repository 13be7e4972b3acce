"""The hand-written entry codec against protobuf: the same bytes out, the same entries in."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptlib.errors import CheckpointError
from ckptlib.format import dtypes
from ckptlib.format.bundle import (
    Entry,
    _decode_entry_proto,
    _parse_plain_entry,
    decode_entry,
    encode_entry,
    encode_plain_entry,
)
from ckptlib.format.bundle_columns import decode_plain_entries, decode_plain_entries_at, encode_plain_entries
from ckptlib.format.proto.tensor_bundle_pb2 import BundleEntryProto

SETTINGS = settings(database=None, deadline=None, max_examples=400)

INT64 = st.one_of(st.integers(0, 300), st.integers(0, (1 << 63) - 1))
DIMS = st.lists(st.one_of(st.integers(0, 5), st.integers(0, 1 << 40), st.integers(0, (1 << 63) - 1)), max_size=8)
FIELDS = st.tuples(
    st.one_of(st.integers(0, 40), st.integers(0, (1 << 31) - 1)),  # dtype: an open enum
    DIMS.map(tuple),
    st.one_of(st.integers(0, 3), st.integers(0, (1 << 31) - 1)),  # shard_id: int32
    INT64,  # offset
    INT64,  # size
    st.one_of(st.just(0), st.integers(0, (1 << 32) - 1)),  # crc32c: fixed32
)


def proto_bytes(dtype: int, shape: tuple[int, ...], shard_id: int, offset: int, size: int, crc: int) -> bytes:
    proto = BundleEntryProto(dtype=dtype, shard_id=shard_id, offset=offset, size=size, crc32c=crc)
    proto.shape.SetInParent()
    for dim in shape:
        proto.shape.dim.add(size=dim)
    return proto.SerializeToString()


def proto_fields(value: bytes) -> tuple[int, tuple[int, ...], int, int, int, int]:
    proto = BundleEntryProto.FromString(value)
    dims = tuple(d.size for d in proto.shape.dim)
    return proto.dtype, dims, proto.shard_id, proto.offset, proto.size, proto.crc32c


@SETTINGS
@given(FIELDS)
def test_plain_entries_encode_exactly_as_protobuf_does(fields: tuple) -> None:
    assert encode_plain_entry(*fields) == proto_bytes(*fields)


@SETTINGS
@given(FIELDS)
def test_plain_entries_parse_as_protobuf_parses_them(fields: tuple) -> None:
    value = proto_bytes(*fields)
    assert _parse_plain_entry(value) == proto_fields(value) == fields


@SETTINGS
@given(FIELDS, st.data())
def test_mutated_entries_parse_as_protobuf_or_fall_back(fields: tuple, data: st.DataObject) -> None:
    """Whatever the fast path accepts, protobuf reads the same way; the rest it leaves to protobuf."""
    value = bytearray(proto_bytes(*fields))
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        position = data.draw(st.integers(0, len(value)))
        if kind == "insert":
            value.insert(position, data.draw(st.integers(0, 255)))
        elif value and position < len(value):
            if kind == "flip":
                value[position] = data.draw(st.integers(0, 255))
            else:
                del value[position]
    parsed = _parse_plain_entry(bytes(value))
    if parsed is not None:
        assert parsed == proto_fields(bytes(value))


@SETTINGS
@given(st.binary(max_size=64))
def test_decode_entry_agrees_with_the_protobuf_path_on_any_bytes(value: bytes) -> None:
    def outcome(decode):  # type: ignore[no-untyped-def]
        try:
            return decode(value)
        except CheckpointError as e:
            return type(e)

    assert outcome(decode_entry) == outcome(_decode_entry_proto)


def test_the_usual_layouts_take_the_fast_path() -> None:
    for entry in [
        Entry(dtypes.DT_FLOAT, (), 0, 0, 4, 0x2BDAA581),
        Entry(dtypes.DT_BFLOAT16, (1024, 0, 3), 2, 1 << 33, 0, 0xA282EAD8),
        Entry(dtypes.DT_STRING, (7,), 1, 300, 12, 1),
    ]:
        value = encode_entry(entry)
        assert _parse_plain_entry(value) is not None
        assert decode_entry(value) == entry


@pytest.mark.parametrize(
    "value",
    [
        proto_bytes(1, (2,), 0, 0, 8, 5) + b"\x3a\x00",  # a slices field
        b"\x12\x00\x08\x01\x28\x04",  # fields out of order
        b"\x08\x01\x08\x01\x12\x00",  # a repeated scalar
        b"\x08\x01\x12\x02\x18\x01",  # unknown_rank in the shape
        b"\x08\x01\x12\x00\x18" + b"\xff" * 9 + b"\x01",  # a negative shard_id
    ],
)
def test_unusual_layouts_are_left_to_protobuf(value: bytes) -> None:
    assert _parse_plain_entry(value) is None


def decode_one_at_a_time(values: list[bytes]) -> list[object]:
    out: list[object] = []
    for value in values:
        try:
            out.append(decode_entry(value))
        except CheckpointError as e:
            out.append(type(e))
    return out


# Between values in a buffer: bytes that would pass for more of an entry (a crc tag, a
# varint continuation), so that a read overrunning its value shows.
JUNK = b"\x35\x80\xff\x28"


def decode_together(values: list[bytes]) -> list[object]:
    lengths = [len(value) for value in values]
    starts = [len(JUNK) + i * len(JUNK) + sum(lengths[:i]) for i in range(len(values))]
    data = JUNK + JUNK.join(values) + JUNK
    try:
        columns, rest = decode_plain_entries_at(data, np.array(starts, np.int64), np.array(starts, np.int64) + lengths)
        assert decode_plain_entries(values)[1] == rest
    except CheckpointError as e:
        return [type(e)]
    out: list[object] = []
    for i, value in enumerate(values):
        if i in rest:
            try:
                out.append(decode_entry(value))
            except CheckpointError as e:
                out.append(type(e))
        else:
            out.append(
                Entry(
                    int(columns.dtypes[i]),
                    columns.shapes[i],
                    int(columns.shard_ids[i]),
                    int(columns.offsets[i]),
                    int(columns.sizes[i]),
                    int(columns.crcs[i]),
                )
            )
    return out


@SETTINGS
@given(st.lists(FIELDS, max_size=20), st.data())
def test_entries_decoded_together_match_entries_decoded_alone(entries: list[tuple], data: st.DataObject) -> None:
    values = [proto_bytes(*fields) for fields in entries]
    for _ in range(data.draw(st.integers(0, 3))):  # damage some
        if values:
            i = data.draw(st.integers(0, len(values) - 1))
            damaged = bytearray(values[i])
            position = data.draw(st.integers(0, len(damaged)))
            damaged[position:position] = data.draw(st.binary(min_size=0, max_size=3))
            if damaged and data.draw(st.booleans()):
                del damaged[data.draw(st.integers(0, len(damaged) - 1))]
            values[i] = bytes(damaged)
    alone = decode_one_at_a_time(values)
    together = decode_together(values)
    if len(together) == 1 and isinstance(together[0], type):  # a damaged entry raised for the batch
        assert together[0] in [x for x in alone if isinstance(x, type)]
    else:
        assert together == alone


def test_decoding_together_finds_plain_entries_and_leaves_the_rest() -> None:
    plain = [encode_entry(Entry(dtypes.DT_FLOAT, (2, 3), 0, 24 * i, 24, 7)) for i in range(40)]
    sliced = proto_bytes(1, (2,), 0, 0, 8, 5) + b"\x3a\x00"
    columns, rest = decode_plain_entries([*plain, sliced])
    assert rest == [40]
    assert columns.offsets[:40].tolist() == [24 * i for i in range(40)]
    assert columns.shapes[:40] == [(2, 3)] * 40


@st.composite
def sound_plain_entries(draw: st.DrawFn) -> Entry:
    """A plain entry that ``decode_entry`` accepts: its size fits its dtype and shape."""
    dtype = draw(st.one_of(st.integers(0, 30), st.sampled_from([dtypes.DT_STRING, 101, 127, 128, (1 << 31) - 1])))
    shape = tuple(draw(st.lists(st.one_of(st.integers(0, 3), st.integers(0, 1000)), max_size=4)))
    count = int(np.prod(shape, dtype=np.int64))
    itemsize = dtypes.itemsize(dtype)
    if dtype == dtypes.DT_STRING:
        size = count + 4 + draw(st.integers(0, 1 << 40))
    elif itemsize is not None:
        size = count * itemsize
    else:
        size = draw(INT64)
    shard_id = draw(st.one_of(st.integers(0, 3), st.integers(0, (1 << 31) - 1)))
    crc = draw(st.one_of(st.just(0), st.integers(0, (1 << 32) - 1)))
    return Entry(dtype, shape, shard_id, draw(INT64), size, crc)


@SETTINGS
@given(st.lists(sound_plain_entries(), max_size=40))
def test_entries_round_trip_through_both_codecs(entries: list[Entry]) -> None:
    """Random plain entries: the columnar encoder gives the reference encoder's bytes, and
    the columnar decoder gives the reference decoder's entries, every one of them."""
    values, lengths = encode_plain_entries(
        [e.dtype for e in entries],
        [e.shape for e in entries],
        np.array([e.shard_id for e in entries], dtype=np.int64),
        np.array([e.offset for e in entries], dtype=np.int64),
        np.array([e.size for e in entries], dtype=np.int64),
        np.array([e.crc32c for e in entries], dtype=np.int64),
    )
    alone = [encode_entry(e) for e in entries]
    assert lengths.tolist() == [len(v) for v in alone]
    assert values.tobytes() == b"".join(alone)
    assert [decode_entry(v) for v in alone] == entries
    columns, rest = decode_plain_entries(alone)
    assert rest == []
    together = [
        Entry(
            int(columns.dtypes[i]),
            columns.shapes[i],
            int(columns.shard_ids[i]),
            int(columns.offsets[i]),
            int(columns.sizes[i]),
            int(columns.crcs[i]),
        )
        for i in range(len(entries))
    ]
    assert together == entries
