"""Whole bundles: header and entry encoding, save/restore round trips, slices, merge, writer validation."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckptlib
from ckptlib.format import dtypes
from ckptlib.format.bundle import (
    EMPTY_CRC,
    Entry,
    decode_entry,
    decode_header,
    encode_entry,
    encode_header,
    key_to_name,
)
from ckptlib.format.bundle_columns import keys_to_names
from ckptlib.format.proto.tensor_bundle_pb2 import BundleEntryProto, BundleHeaderProto
from ckptlib.format.slices import TensorSlice
from ckptlib.tree import STRUCTURE_KEY

SETTINGS = settings(
    database=None,
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

# FORMAT.md section 3: SaveV2(["v", "s"], [float32 1.0, ["ab"]]) as written by TF 2.21
GOLDEN_INDEX = bytes.fromhex(
    """
    00000608011a020801 00011173 080712041202080120042807352619a635
    00010b76 0801120028043581a5da2b 00000000 01000000 00 a8a0c813
    00000000 01000000 00 c0f2a1b0
    00010277 0035 00000000 01000000 00 53e3e012
    3a08 470e
    """
    + "00" * 36
    + "57fb808b247547db"
)
GOLDEN_DATA = bytes.fromhex("0000803f 02 d8d81073 6162")

# one numpy dtype per distinct storage type (quantized types share their plain type's numpy dtype)
NUMERIC_DTYPES = sorted({row.numpy for row in dtypes.DTYPES if row.numpy is not None}, key=str)


# -- helpers ---------------------------------------------------------------------------


def raw_bytes(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8).tobytes()


def assert_identical(got: np.ndarray, want: np.ndarray) -> None:
    assert isinstance(got, np.ndarray)
    assert got.shape == want.shape
    if want.dtype == object:
        assert got.dtype == object
        flat = list(got.reshape(-1))
        assert all(type(x) is bytes for x in flat)
        assert flat == [bytes(x) for x in want.reshape(-1)]
    else:
        assert got.dtype == want.dtype
        assert raw_bytes(got) == raw_bytes(want)


def listing(path: Path) -> list[str]:
    """The visible files (the hidden save lock left out)."""
    return sorted(n for n in os.listdir(path) if not n.startswith(".")) if path.exists() else []


# -- strategies ------------------------------------------------------------------------

SHAPES = st.lists(st.integers(0, 4), max_size=3).map(tuple)


@st.composite
def numeric_arrays(draw: st.DrawFn, shape: tuple[int, ...] | None = None) -> np.ndarray:
    dtype = draw(st.sampled_from(NUMERIC_DTYPES))
    if shape is None:
        shape = draw(SHAPES)
    n = int(np.prod(shape))
    raw = draw(st.binary(min_size=n * dtype.itemsize, max_size=n * dtype.itemsize))
    array = np.frombuffer(raw, dtype=np.uint8).copy()
    if dtype == np.bool_:
        array &= 1
    return array.view(dtype).reshape(shape)


STRING_ELEMENT = st.one_of(
    st.binary(max_size=12),
    st.tuples(st.binary(min_size=1, max_size=4), st.integers(120, 2000)).map(lambda t: t[0] * t[1]),
)


@st.composite
def string_arrays(draw: st.DrawFn, shape: tuple[int, ...] | None = None) -> np.ndarray:
    if shape is None:
        shape = draw(SHAPES)
    n = int(np.prod(shape))
    out = np.empty(n, dtype=object)
    for i in range(n):
        out[i] = draw(STRING_ELEMENT)
    return out.reshape(shape)


ARRAYS = st.one_of(numeric_arrays(), numeric_arrays(), string_arrays())
NAMES = st.text(min_size=1, max_size=12)


# -- header and entry ------------------------------------------------------------------


def test_header_bytes() -> None:
    assert encode_header(1) == bytes.fromhex("08011a020801")
    header = decode_header(encode_header(3))
    assert header.num_shards == 3
    assert not header.big_endian


def test_header_without_version_is_accepted() -> None:
    assert decode_header(BundleHeaderProto(num_shards=1).SerializeToString()).num_shards == 1
    assert decode_header(b"").num_shards == 0


def test_header_big_endian_flag() -> None:
    proto = BundleHeaderProto(num_shards=1, endianness=BundleHeaderProto.BIG)
    assert decode_header(proto.SerializeToString()).big_endian


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"min_consumer": 2}, ckptlib.UnsupportedFeatureError),
        ({"bad_consumers": [1]}, ckptlib.UnsupportedFeatureError),
        ({"producer": -1}, ckptlib.CorruptCheckpointError),
    ],
)
def test_header_version_checks(fields: dict[str, Any], error: type[Exception]) -> None:
    proto = BundleHeaderProto(num_shards=1)
    proto.version.producer = 1
    for key, value in fields.items():
        if key == "bad_consumers":
            proto.version.bad_consumers.extend(value)
        else:
            setattr(proto.version, key, value)
    with pytest.raises(error):
        decode_header(proto.SerializeToString())


def test_header_garbage() -> None:
    with pytest.raises(ckptlib.CorruptCheckpointError):
        decode_header(b"\xff\xff\xff")
    with pytest.raises(ckptlib.CorruptCheckpointError):
        decode_header(BundleHeaderProto(num_shards=-1).SerializeToString())


def test_golden_entries() -> None:
    v = Entry(dtypes.DT_FLOAT, (), 0, 0, 4, int.from_bytes(bytes.fromhex("81a5da2b"), "little"))
    assert encode_entry(v) == bytes.fromhex("0801120028043581a5da2b")
    s = Entry(dtypes.DT_STRING, (1,), 0, 4, 7, int.from_bytes(bytes.fromhex("2619a635"), "little"))
    assert encode_entry(s) == bytes.fromhex("080712041202080120042807352619a635")
    assert decode_entry(encode_entry(v)) == v
    assert decode_entry(encode_entry(s)) == s


def test_empty_tensor_entry() -> None:
    assert EMPTY_CRC == 0xA282EAD8
    entry = Entry(dtypes.DT_FLOAT, (0, 3), 0, 12, 0)
    assert decode_entry(encode_entry(entry)) == entry


def test_sliced_full_entry_round_trip() -> None:
    slices = (TensorSlice.parse("0,5:-"), TensorSlice.parse("5,5:-"))
    entry = Entry(dtypes.DT_INT32, (10, 3), slices=slices)
    encoded = encode_entry(entry)
    proto = BundleEntryProto.FromString(encoded)
    # the full entry of a partitioned tensor has no location or checksum of its own
    assert (proto.shard_id, proto.offset, proto.size, proto.crc32c) == (0, 0, 0, 0)
    assert decode_entry(encoded) == Entry(dtypes.DT_INT32, (10, 3), crc32c=0, slices=slices)


def _entry(**kwargs: Any) -> bytes:
    shape = kwargs.pop("shape", [])
    unknown_rank = kwargs.pop("unknown_rank", False)
    slices = kwargs.pop("slices", [])
    proto = BundleEntryProto(**kwargs)
    proto.shape.SetInParent()
    proto.shape.unknown_rank = unknown_rank
    for d in shape:
        proto.shape.dim.add(size=d)
    for spec in slices:
        proto.slices.append(TensorSlice.parse(spec).to_proto())
    return proto.SerializeToString()


@pytest.mark.parametrize(
    "value",
    [
        _entry(dtype=1, shape=[-1], size=0),
        _entry(dtype=1, shape=[1] * 255, size=4),
        _entry(dtype=1, shape=[2**62, 2**62], size=0),
        _entry(dtype=1, shape=[3], unknown_rank=True, size=12),
        _entry(dtype=1, shape=[3], size=11),
        _entry(dtype=1, shape=[3], size=13),
        _entry(dtype=1, shape=[3], size=12, offset=-1),
        _entry(dtype=1, shape=[3], size=12, shard_id=-1),
        _entry(dtype=7, shape=[3], size=6),  # strings: at least one length byte each + 4
        _entry(dtype=1, shape=[4], slices=["2,3"]),
        _entry(dtype=1, shape=[4], slices=["-:-"]),
        b"\xff\xff",
    ],
)
def test_bad_entries(value: bytes) -> None:
    with pytest.raises(ckptlib.CorruptCheckpointError):
        decode_entry(value)


# -- golden vector and save/restore ----------------------------------------------------


def test_golden_bundle_is_byte_identical(tmp_path: Path) -> None:
    prefix = tmp_path / "model"
    s = np.array(["ab"], dtype=object)
    assert ckptlib.save({"v": np.float32(1.0), "s": s}, prefix) == str(prefix)
    assert (tmp_path / "model.index").read_bytes() == GOLDEN_INDEX
    assert len(GOLDEN_INDEX) == 138
    assert (tmp_path / "model.data-00000-of-00001").read_bytes() == GOLDEN_DATA
    assert listing(tmp_path) == ["model.data-00000-of-00001", "model.index"]
    restored = ckptlib.restore(prefix)
    assert restored.keys() == {"v", "s"}
    assert_identical(restored["v"], np.array(1.0, dtype=np.float32))
    assert_identical(restored["s"], np.array([b"ab"], dtype=object))


def test_golden_bundle_reads(tmp_path: Path) -> None:
    (tmp_path / "tf.index").write_bytes(GOLDEN_INDEX)
    (tmp_path / "tf.data-00000-of-00001").write_bytes(GOLDEN_DATA)
    with ckptlib.load_checkpoint(tmp_path / "tf") as reader:
        assert sorted(reader.keys_list()) == ["s", "v"]
        assert reader.get_variable_to_shape_map() == {"s": [1], "v": []}
        assert reader.dtype_name("v") == "float32"
        assert reader.dtype_name("s") == "string"
        assert reader.verify() == []


def test_empty_bundle(tmp_path: Path) -> None:
    prefix = tmp_path / "empty"
    ckptlib.save({}, prefix)
    assert (tmp_path / "empty.data-00000-of-00001").read_bytes() == b""
    assert ckptlib.restore(prefix) == {}


def test_nested_names_flatten(tmp_path: Path) -> None:
    prefix = tmp_path / "nested"
    ckptlib.save({"dense": {"kernel": np.ones((2, 2), np.float32), "bias": np.zeros(2)}, "step": 3}, prefix)
    with ckptlib.load_checkpoint(prefix) as reader:
        assert [n for n in reader.keys_list() if n != STRUCTURE_KEY] == ["dense/bias", "dense/kernel", "step"]
        assert reader.get_tensor("step").dtype == np.int64
    restored = ckptlib.restore(prefix)
    assert sorted(restored) == ["dense", "step"] and sorted(restored["dense"]) == ["bias", "kernel"]
    assert restored["step"] == 3 and type(restored["step"]) is int


def test_big_endian_and_strided_inputs(tmp_path: Path) -> None:
    prefix = tmp_path / "layout"
    be = np.arange(6, dtype=">i4").reshape(2, 3)
    strided = np.arange(20, dtype=np.float64)[::3]
    fortran = np.asfortranarray(np.arange(12, dtype=np.int16).reshape(3, 4))
    ckptlib.save({"be": be, "strided": strided, "fortran": fortran}, prefix)
    restored = ckptlib.restore(prefix)
    assert restored["be"].dtype == np.dtype("<i4")
    np.testing.assert_array_equal(restored["be"], be)
    assert_identical(restored["strided"], np.ascontiguousarray(strided))
    assert_identical(restored["fortran"], np.ascontiguousarray(fortran))


def test_string_inputs(tmp_path: Path) -> None:
    prefix = tmp_path / "strings"
    values = {
        "bytes": b"a\x00b",
        "str": "h\u00e9",
        "array": np.array([b"x", "y", b""], dtype=object),
        "nul_tail": np.array([b"ab\x00\x00"], dtype=object),
        "empty2d": np.empty((0, 3), dtype=object),
    }
    ckptlib.save(values, prefix)
    with ckptlib.load_checkpoint(prefix) as reader:  # as TensorFlow sees them: 0-d string tensors
        assert_identical(reader.get_tensor("bytes"), np.array(b"a\x00b", dtype=object))
        assert_identical(reader.get_tensor("str"), np.array("h\u00e9".encode(), dtype=object))
    restored = ckptlib.restore(prefix)
    assert restored["bytes"] == b"a\x00b" and restored["str"] == "h\u00e9"
    assert_identical(restored["array"], np.array([b"x", b"y", b""], dtype=object))
    assert_identical(restored["nul_tail"], np.array([b"ab\x00\x00"], dtype=object))
    assert restored["empty2d"].shape == (0, 3)


@pytest.mark.parametrize("dtype", NUMERIC_DTYPES, ids=str)
def test_every_numeric_dtype(tmp_path: Path, dtype: np.dtype) -> None:
    raw = np.arange(24, dtype=np.uint8)
    if dtype == np.bool_:
        raw &= 1
    value = np.repeat(raw, dtype.itemsize)[: 24 * dtype.itemsize].view(dtype).reshape(2, 3, 4)
    prefix = tmp_path / "d"
    ckptlib.save({"x": value, "scalar": value.reshape(-1)[5], "empty": value[:0]}, prefix)
    restored = ckptlib.restore(prefix)
    assert_identical(restored["x"], value)
    assert_identical(restored["scalar"], np.array(value.reshape(-1)[5]))
    assert_identical(restored["empty"], value[:0])


@pytest.mark.parametrize("name", ["qint8", "quint8", "qint16", "quint16", "qint32"])
def test_quantized_dtype_override(tmp_path: Path, name: str) -> None:
    row = dtypes.by_name(name)
    value = np.arange(6).astype(row.numpy)
    writer = ckptlib.BundleWriter(tmp_path / "q")
    writer.add("q", value, dtype=name)
    writer.finish()
    with ckptlib.load_checkpoint(tmp_path / "q") as reader:
        assert reader.dtype_name("q") == name
        assert_identical(reader.get_tensor("q"), value)


@SETTINGS
@given(st.dictionaries(NAMES, ARRAYS, max_size=8), st.integers(1, 4))
def test_random_bundles_round_trip(tmp_path: Path, tensors: dict[str, np.ndarray], num_shards: int) -> None:
    with tempfile.TemporaryDirectory(dir=tmp_path) as d:
        prefix = os.path.join(d, "ckpt")
        ckptlib.save(tensors, prefix, num_shards=num_shards, sync=False)
        files = sorted(n for n in os.listdir(d) if not n.startswith("."))
        assert files == sorted(["ckpt.index"] + [f"ckpt.data-{i:05d}-of-{num_shards:05d}" for i in range(num_shards)])
        restored = ckptlib.restore(prefix)
        assert restored.keys() == tensors.keys()
        for name, want in tensors.items():
            assert_identical(restored[name], want)
        with ckptlib.load_checkpoint(prefix) as reader:
            assert sorted(reader.keys_list()) == sorted(tensors)
            for name, want in tensors.items():
                assert reader.shape(name) == want.shape
                assert reader.dtype(name) == want.dtype
            assert reader.verify() == []


# -- partitioned tensors ---------------------------------------------------------------


@st.composite
def partitions(draw: st.DrawFn) -> tuple[np.ndarray, list[TensorSlice]]:
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
    array = draw(st.one_of(numeric_arrays(shape), string_arrays(shape)))
    per_dim = []
    for dim in shape:
        cuts = sorted(draw(st.sets(st.integers(1, dim - 1), max_size=2)) if dim > 1 else set())
        edges = [0, *cuts, dim]
        per_dim.append(list(zip(edges, edges[1:])))
    pieces = [()]
    for ranges in per_dim:
        pieces = [(*p, r) for p in pieces for r in ranges]
    slices = []
    for piece in pieces:
        extents = []
        for (start, stop), dim in zip(piece, shape):
            full = start == 0 and stop == dim
            extents.append((0, None) if full and draw(st.booleans()) else (start, stop - start))
        slices.append(TensorSlice(tuple(extents)))
    return array, draw(st.permutations(slices))


@SETTINGS
@given(partitions(), st.dictionaries(NAMES.filter(lambda n: n != "part"), ARRAYS, max_size=3), st.integers(1, 3))
def test_random_partitions_round_trip(
    tmp_path: Path, partition: tuple[np.ndarray, list[TensorSlice]], others: dict[str, np.ndarray], num_shards: int
) -> None:
    array, slices = partition
    with tempfile.TemporaryDirectory(dir=tmp_path) as d:
        prefix = os.path.join(d, "ckpt")
        writer = ckptlib.BundleWriter(prefix, num_shards=num_shards, sync=False)
        for tensor_slice in slices:
            region = tuple(slice(a, b) for a, b in tensor_slice.bounds(array.shape))
            piece = array[region]
            writer.add_slice("part", array.shape, tensor_slice if len(slices) % 2 else str(tensor_slice), piece)
        for name, value in others.items():
            writer.add(name, value)
        writer.finish()
        with ckptlib.load_checkpoint(prefix) as reader:
            assert sorted(reader.keys_list()) == sorted(["part", *others])
            assert reader.shape("part") == array.shape
            assert_identical(reader.get_tensor("part"), array)
            for name, want in others.items():
                assert_identical(reader.get_tensor(name), want)
            assert reader.verify() == []
        assert_identical(ckptlib.restore(prefix)["part"], array)


def test_slice_covering_whole_tensor_is_stored_plainly(tmp_path: Path) -> None:
    writer = ckptlib.BundleWriter(tmp_path / "c")
    value = np.arange(6, dtype=np.float32).reshape(2, 3)
    writer.add_slice("w", (2, 3), "0,2:-", value)
    writer.finish()
    with ckptlib.load_checkpoint(tmp_path / "c") as reader:
        entries = dict(reader.raw_entries())
        assert list(entries) == [b"w"]
        assert not entries[b"w"].slices
        assert_identical(reader.get_tensor("w"), value)


def test_slice_key_layout_in_index(tmp_path: Path) -> None:
    """The FORMAT.md example: a [10,3] tensor w stored as 0,5:- and 5,5:-."""
    value = np.arange(30, dtype=np.int32).reshape(10, 3)
    writer = ckptlib.BundleWriter(tmp_path / "w")
    writer.add_slice("w", [10, 3], "0,5:-", value[:5])
    writer.add_slice("w", [10, 3], "5,5:-", value[5:])
    writer.finish()
    with ckptlib.load_checkpoint(tmp_path / "w") as reader:
        keys = [k for k, _ in reader.raw_entries()]
        assert bytes.fromhex("00 77 00 01 01 02 80 85 80 7f") in keys
        assert reader.keys_list() == ["w"]
        full = dict(reader.raw_entries())[b"w"]
        assert [str(s) for s in full.slices] == ["0,5:-", "5,5:-"]
        assert_identical(reader.get_tensor("w"), value)


# -- merge -----------------------------------------------------------------------------


def test_merge_bundles(tmp_path: Path) -> None:
    part = np.arange(12, dtype=np.float32).reshape(4, 3)
    a = ckptlib.BundleWriter(tmp_path / "tmp" / "part-0", num_shards=2)
    a.add("a", np.int64(7))
    a.add("s", [b"hello", b""])
    a.add_slice("p", (4, 3), "0,1:-", part[:1])
    a.finish()
    b = ckptlib.BundleWriter(tmp_path / "tmp" / "part-1")
    b.add("b", np.ones((2, 2), ml_dtypes.bfloat16))
    b.add_slice("p", (4, 3), "1,3:-", part[1:])
    b.finish()

    merged = ckptlib.merge_bundles([tmp_path / "tmp" / "part-0", tmp_path / "tmp" / "part-1"], tmp_path / "m")
    assert merged == str(tmp_path / "m")
    with ckptlib.load_checkpoint(tmp_path / "m") as reader:
        assert sorted(reader.keys_list()) == ["a", "b", "p", "s"]
        assert_identical(reader.get_tensor("a"), np.array(7, dtype=np.int64))
        assert_identical(reader.get_tensor("s"), np.array([b"hello", b""], dtype=object))
        assert_identical(reader.get_tensor("b"), np.ones((2, 2), ml_dtypes.bfloat16))
        assert_identical(reader.get_tensor("p"), part)
        assert reader.verify() == []
        num_shards = reader.header.num_shards
    data_files = [f for f in listing(tmp_path) if f.startswith("m.data-")]
    assert data_files == [f"m.data-{i:05d}-of-{num_shards:05d}" for i in range(num_shards)]
    assert 2 <= num_shards <= 3
    # inputs' indexes are gone and their data files were moved
    assert not [f for f in listing(tmp_path / "tmp") if f.endswith(".index") or ".data-" in f]


def test_merge_duplicate_key(tmp_path: Path) -> None:
    ckptlib.save({"x": 1}, tmp_path / "a")
    ckptlib.save({"x": 2}, tmp_path / "b")
    with pytest.raises(ckptlib.InvalidTensorError):
        ckptlib.merge_bundles([tmp_path / "a", tmp_path / "b"], tmp_path / "m")
    assert not (tmp_path / "m.index").exists()


# -- writer validation -----------------------------------------------------------------


def _save_cases() -> list[Any]:
    return [
        pytest.param({"a/b": 1, "a": {"b": 2}}, id="flattened-duplicate"),
        pytest.param({"": 1}, id="empty-name"),
        pytest.param({"a": {"": 1}}, id="empty-nested-name"),
        pytest.param({b"a": 2}, id="bytes-key"),
        pytest.param({"t": np.array(["2020-01-01"], dtype="datetime64[D]")}, id="datetime64"),
        pytest.param({"t": np.array([1, 2], dtype="timedelta64[s]")}, id="timedelta64"),
        pytest.param({"t": np.array([1, 2], dtype=object)}, id="object-ints"),
        pytest.param({"t": np.array([b"a", None], dtype=object)}, id="object-none"),
        pytest.param({"t": np.array([b"a", 3], dtype=object)}, id="mixed-strings"),
        pytest.param({"t": np.zeros(2, dtype=[("a", "i4")])}, id="structured"),
        pytest.param({"t": object()}, id="opaque-object"),
        pytest.param({"ok": 1.0, "t": np.array([1], dtype="datetime64[s]")}, id="bad-after-good"),
    ]


@pytest.mark.parametrize("tensors", _save_cases())
def test_save_rejects_before_writing(tmp_path: Path, tensors: dict[Any, Any]) -> None:
    out = tmp_path / "out"
    with pytest.raises(ckptlib.InvalidTensorError) as info:
        ckptlib.save(tensors, out / "ckpt")
    assert isinstance(info.value, ValueError)
    assert listing(out) == []
    assert listing(tmp_path) == []


def _writer_cases() -> list[Any]:
    w = np.zeros((4, 2), np.float32)
    return [
        pytest.param(lambda bw: (bw.add("x", 1), bw.add("x", 2)), id="duplicate"),
        pytest.param(lambda bw: bw.add("", 1), id="empty-name"),
        pytest.param(lambda bw: bw.add_slice("", (4, 2), "0,2:-", w[:2]), id="empty-slice-name"),
        pytest.param(lambda bw: (bw.add("p", w), bw.add_slice("p", (4, 2), "0,2:-", w[:2])), id="full-then-slice"),
        pytest.param(lambda bw: (bw.add_slice("p", (4, 2), "0,2:-", w[:2]), bw.add("p", w)), id="slice-then-full"),
        pytest.param(
            lambda bw: (bw.add_slice("p", (4, 2), "0,2:-", w[:2]), bw.add_slice("p", (4, 2), "1,2:-", w[1:3])),
            id="overlap",
        ),
        pytest.param(
            lambda bw: (bw.add_slice("p", (4, 2), "0,2:-", w[:2]), bw.add_slice("p", (4, 2), "0,2:-", w[:2])),
            id="same-slice-twice",
        ),
        pytest.param(lambda bw: bw.add_slice("p", (4, 2), "0,2:-", w[:3]), id="wrong-value-shape"),
        pytest.param(lambda bw: bw.add_slice("p", (4, 2), "3,2:-", w[:2]), id="slice-out-of-bounds"),
        pytest.param(lambda bw: bw.add_slice("p", (4, 2), "0,2", w[:2]), id="slice-rank-mismatch"),
        pytest.param(lambda bw: bw.add_slice("p", (4, 2), "0,2:x", w[:2]), id="slice-spec-garbage"),
        pytest.param(
            lambda bw: (bw.add_slice("p", (4, 2), "0,2:-", w[:2]), bw.add_slice("p", (4, 2), "2,2:-", w[:2] + 1j)),
            id="slice-dtype-mismatch",
        ),
        pytest.param(
            lambda bw: (bw.add_slice("p", (4, 2), "0,2:-", w[:2]), bw.add_slice("p", (5, 2), "2,2:-", w[:2])),
            id="slice-shape-mismatch",
        ),
        pytest.param(lambda bw: bw.add("d", np.array(["2020"], dtype="datetime64[Y]")), id="datetime64"),
        pytest.param(lambda bw: bw.add("o", np.array([1, 2], dtype=object)), id="object-ints"),
        pytest.param(lambda bw: bw.add("q", np.zeros(2, np.int16), dtype="qint8"), id="dtype-itemsize"),
        pytest.param(lambda bw: bw.add("q", [b"a"], dtype="float32"), id="dtype-on-strings"),
        pytest.param(lambda bw: bw.add("q", np.zeros(2, np.int8), dtype="nope"), id="dtype-unknown"),
    ]


@pytest.mark.parametrize("action", _writer_cases())
def test_writer_rejects_before_writing(tmp_path: Path, action: Any) -> None:
    writer = ckptlib.BundleWriter(tmp_path / "out" / "ckpt")
    with pytest.raises(ckptlib.InvalidTensorError) as info:
        action(writer)
    assert isinstance(info.value, ValueError)
    assert listing(tmp_path) == []


def test_writer_argument_checks(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        ckptlib.BundleWriter(tmp_path / "x", num_shards=0)
    with pytest.raises(ValueError):
        ckptlib.BundleWriter(tmp_path / "x", num_shards=None)
    assert listing(tmp_path) == []


@pytest.mark.parametrize("name", ["\udc80", "a\udcffb"])
def test_surrogate_escaped_names(tmp_path: Path, name: str) -> None:
    """The reader names a non-UTF-8 key with surrogateescape (b"\\x80" -> "\\udc80"), so such a
    name must either be written back as those bytes or be refused with InvalidTensorError
    before any file is written."""
    out = tmp_path / "out"
    try:
        ckptlib.save({name: np.int8(1)}, out / "ckpt")
    except ckptlib.InvalidTensorError:
        assert listing(tmp_path) == []
        return
    with ckptlib.load_checkpoint(out / "ckpt") as reader:
        assert reader.keys_list() == [name]
        assert [k for k, _ in reader.raw_entries()] == [name.encode("utf-8", "surrogateescape")]


@SETTINGS
@given(
    st.lists(
        st.binary(max_size=12) | st.sampled_from([b"\xc3", b"caf\xc3\xa9", b"\xff\xfe", b"a\0b", b""]), max_size=30
    )
)
def test_keys_to_names_decodes_every_key_as_key_to_name_does(keys: list[bytes]) -> None:
    assert keys_to_names(keys) == [key_to_name(key) for key in keys]
