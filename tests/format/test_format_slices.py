"""Tensor slices and their OrderedCode table keys (FORMAT.md section 7)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ckptlib
from ckptlib.format.slices import (
    TensorSlice,
    check_tiling,
    decode_slice_key,
    encode_num_increasing,
    encode_signed_num,
    encode_string,
    overlaps,
    slice_key,
)

SETTINGS = settings(database=None, deadline=None, max_examples=300)
INT64 = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-300, 300),
    st.integers(1, 63).flatmap(
        lambda k: st.sampled_from([2**k - 1, 2**k, -(2**k), -(2**k) - 1]).filter(lambda v: -(2**63) <= v < 2**63)
    ),
)
NON_NEG = st.one_of(st.integers(0, 2**63 - 1), st.integers(0, 1000))
EXTENT = st.one_of(st.just((0, None)), st.tuples(NON_NEG, NON_NEG))
SLICE = st.lists(EXTENT, max_size=6).map(lambda e: TensorSlice(tuple(e)))
NAME = st.text(max_size=20)


def test_example_from_format_md() -> None:
    # name w, shape [10, 3], slice 0,5:-
    key = slice_key("w", TensorSlice.parse("0,5:-"))
    assert key == bytes.fromhex("00 77 00 01 01 02 80 85 80 7f")
    assert decode_slice_key(key) == ("w", TensorSlice(((0, 5), (0, None))))


def test_v1_full_slice_example() -> None:
    assert slice_key("a", TensorSlice.full(1)) == bytes.fromhex("00 61 00 01 01 01 80 7f")


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, "80"),
        (5, "85"),
        (-1, "7f"),
        (63, "bf"),
        (-64, "40"),
        (64, "c040"),
        (-65, "3fbf"),
        (100, "c064"),
        (70000, "e11170"),
        (2**40, "fd0000000000"),
        (2**63 - 1, "ffc07fffffffffffffff"),
        (-(2**63), "003f8000000000000000"),
    ],
)
def test_signed_num_examples(value: int, encoded: str) -> None:
    assert encode_signed_num(value).hex() == encoded


@pytest.mark.parametrize(
    ("value", "encoded"), [(0, "00"), (1, "0101"), (2, "0102"), (256, "020100"), (2**63, "088000000000000000")]
)
def test_num_increasing_examples(value: int, encoded: str) -> None:
    assert encode_num_increasing(value).hex() == encoded


def test_string_escaping() -> None:
    assert encode_string(b"") == b"\x00\x01"
    assert encode_string(b"a\x00b\xffc") == b"a\x00\xffb\xff\x00c\x00\x01"


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 2**64])
def test_signed_num_out_of_range(value: int) -> None:
    with pytest.raises(ckptlib.InvalidTensorError):
        encode_signed_num(value)


@SETTINGS
@given(INT64, INT64)
def test_signed_num_preserves_order(a: int, b: int) -> None:
    ea, eb = encode_signed_num(a), encode_signed_num(b)
    assert (ea < eb) == (a < b)
    assert (ea == eb) == (a == b)


@SETTINGS
@given(INT64)
def test_signed_num_length(v: int) -> None:
    magnitude = v if v >= 0 else ~v
    assert len(encode_signed_num(v)) == magnitude.bit_length() // 7 + 1


@SETTINGS
@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_num_increasing_preserves_order(a: int, b: int) -> None:
    assert (encode_num_increasing(a) < encode_num_increasing(b)) == (a < b)


@SETTINGS
@given(st.binary(max_size=10), st.binary(max_size=10))
def test_string_encoding_preserves_order(a: bytes, b: bytes) -> None:
    assert (encode_string(a) < encode_string(b)) == (a < b)


@SETTINGS
@given(NAME, SLICE)
def test_slice_key_round_trip(name: str, tensor_slice: TensorSlice) -> None:
    assert decode_slice_key(slice_key(name, tensor_slice)) == (name, tensor_slice)


@SETTINGS
@given(st.lists(INT64.filter(lambda v: v >= -1), min_size=2, max_size=2))
def test_signed_num_round_trip_through_key(pair: list[int]) -> None:
    start, length = pair
    if start == -1 or (length == -1 and start != 0):
        return
    tensor_slice = TensorSlice(((start, None if length == -1 else length),))
    assert decode_slice_key(slice_key("x", tensor_slice))[1] == tensor_slice


def _order_key(name: str, tensor_slice: TensorSlice) -> tuple:
    nums = []
    for start, length in tensor_slice.extents:
        nums += [0, -1] if length is None else [start, length]
    return (name.encode("utf-8"), tensor_slice.rank, *nums)


@SETTINGS
@given(NAME, SLICE, NAME, SLICE)
def test_slice_key_order_matches_value_order(n1: str, s1: TensorSlice, n2: str, s2: TensorSlice) -> None:
    """OrderedCode: byte order of keys == order of (name bytes, rank, start0, len0, ...)."""
    k1, k2 = slice_key(n1, s1), slice_key(n2, s2)
    o1, o2 = _order_key(n1, s1), _order_key(n2, s2)
    assert (k1 < k2) == (o1 < o2)
    assert (k1 == k2) == (o1 == o2)


@SETTINGS
@given(NAME, SLICE, SLICE)
def test_same_name_slices_sort_by_extents(name: str, s1: TensorSlice, s2: TensorSlice) -> None:
    if s1.rank != s2.rank:
        return
    k1, k2 = slice_key(name, s1), slice_key(name, s2)
    assert (k1 < k2) == (_order_key(name, s1) < _order_key(name, s2))


@SETTINGS
@given(st.binary(max_size=40))
def test_decode_arbitrary_key(key: bytes) -> None:
    """Arbitrary bytes decode, or raise CorruptCheckpointError and nothing else.

    OrderedCode readers (TF's too) accept non-minimal numbers, so a decoded key need not
    re-encode to the same bytes; it must re-encode to a key that decodes the same.
    """
    try:
        decoded = decode_slice_key(key)
    except ckptlib.CorruptCheckpointError:
        return
    _check_decoded(decoded)


def _check_decoded(decoded: tuple[str, TensorSlice]) -> None:
    for start, length in decoded[1].extents:
        assert 0 <= start < 2**63, f"decoded start {start} is not an int64"
        assert length is None or 0 <= length < 2**63, f"decoded length {length} is not an int64"
    assert decode_slice_key(slice_key(*decoded)) == decoded


@SETTINGS
@given(NAME, SLICE, st.data())
def test_decode_damaged_key(name: str, tensor_slice: TensorSlice, data: st.DataObject) -> None:
    key = bytearray(slice_key(name, tensor_slice))
    if data.draw(st.booleans()):
        key = key[: data.draw(st.integers(0, len(key) - 1))]
    else:
        key[data.draw(st.integers(0, len(key) - 1))] ^= data.draw(st.integers(1, 255))
    try:
        decoded = decode_slice_key(bytes(key))
    except ckptlib.CorruptCheckpointError:
        return
    _check_decoded(decoded)


def test_decode_rejects_numbers_beyond_int64() -> None:
    """A 10-byte SignedNum can carry up to 70 bits: a slice bound outside int64 (here 2**63)
    is refused as corrupt."""
    key = bytes.fromhex("00 77 00 01 01 01 ffc08000000000000000 80")  # start 2**63, length 0
    with pytest.raises(ckptlib.CorruptCheckpointError):
        decode_slice_key(key)


def test_decode_rejects_start_on_full_extent() -> None:
    """A stored extent (start=1, length=-1) is not a full extent (TF's IsFullAt needs start 0):
    it is refused, so that no two keys decode to the same slice."""
    key = bytes.fromhex("00 77 00 01 01 01 81 7f")  # name w, rank 1, start 1, length -1
    with pytest.raises(ckptlib.CorruptCheckpointError):
        decode_slice_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "",
        "01",  # does not start with NumIncreasing(0)
        "0161",
        "00 61",  # unterminated name
        "00 61 00 02",  # bad escape
        "00 61 00 01 09",  # NumIncreasing longer than 8 bytes
        "00 61 00 01 01 01 80",  # missing length
        "00 61 00 01 01 01 7f 85",  # negative start
        "00 61 00 01 01 00 80 7f",  # rank 0 then trailing bytes
        "00 61 00 01 01 01 80 7f 00",  # trailing byte
        "00 61 00 01 01 01 80 c0",  # truncated two-byte number
    ],
)
def test_bad_keys(key: str) -> None:
    with pytest.raises(ckptlib.CorruptCheckpointError):
        decode_slice_key(bytes.fromhex(key))


@pytest.mark.parametrize(
    ("spec", "extents"),
    [
        ("", ()),
        ("-", ((0, None),)),
        ("0,5:-", ((0, 5), (0, None))),
        ("3,2:0,1:-", ((3, 2), (0, 1), (0, None))),
    ],
)
def test_parse_and_str(spec: str, extents: tuple) -> None:
    tensor_slice = TensorSlice.parse(spec)
    assert tensor_slice.extents == extents
    assert str(tensor_slice) == spec


@pytest.mark.parametrize("spec", ["x", "1", "1,2,3", "-1,2", "1,-2", "a,b", "0,1:", ":"])
def test_parse_errors(spec: str) -> None:
    with pytest.raises(ckptlib.InvalidTensorError):
        TensorSlice.parse(spec)


@SETTINGS
@given(SLICE)
def test_proto_round_trip(tensor_slice: TensorSlice) -> None:
    proto = tensor_slice.to_proto()
    assert TensorSlice.from_proto(proto) == tensor_slice
    for extent, (_, length) in zip(proto.extent, tensor_slice.extents):
        # TensorSlice::AsProto: empty Extent for a full dimension
        assert extent.HasField("length") == (length is not None)
        if length is None:
            assert extent.ByteSize() == 0


def test_bounds_shape_covers() -> None:
    s = TensorSlice.parse("2,3:-")
    assert s.bounds((10, 4)) == ((2, 5), (0, 4))
    assert s.shape((10, 4)) == (3, 4)
    assert not s.covers((10, 4))
    assert TensorSlice.parse("0,10:0,4").covers((10, 4))
    assert TensorSlice.full(2).covers((10, 4))
    with pytest.raises(ckptlib.InvalidTensorError):
        s.bounds((4, 4))  # 2 + 3 > 4
    with pytest.raises(ckptlib.InvalidTensorError):
        s.bounds((10,))  # rank mismatch


def test_overlaps_and_tiling() -> None:
    a = ((0, 5), (0, 3))
    b = ((5, 10), (0, 3))
    assert not overlaps(a, b)
    assert overlaps(a, ((4, 6), (2, 3)))
    assert not overlaps(a, ((4, 6), (3, 3)))  # empty extent
    check_tiling([a, b], (10, 3))
    with pytest.raises(ckptlib.CorruptCheckpointError):
        check_tiling([a], (10, 3))
    with pytest.raises(ckptlib.CorruptCheckpointError):
        check_tiling([a, b, ((4, 6), (0, 1))], (10, 3))
