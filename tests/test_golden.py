"""Checkpoints written by real TensorFlow (``tests/data/golden``), read back with ckptlib.

The files and their expected values were made by ``tests/data/make_golden.py`` (TensorFlow
2.21); see its docstring for the manifest layout. These tests never import TensorFlow.

* every case: the names, dtype names and shapes equal what TensorFlow listed, every tensor
  equals TensorFlow's value bit for bit, ``verify()`` finds nothing;
* ``tf.raw_ops.SaveV2`` cases: ckptlib's ``BundleWriter``, given the same tensors in the same
  order, writes an ``.index`` and a data file identical to TensorFlow's, byte for byte.
"""

from __future__ import annotations

import base64
import functools
import gzip
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import ckptlib
from ckptlib.format.block import parse_block
from ckptlib.format.footer import BLOCK_TRAILER_SIZE, FOOTER_SIZE, BlockHandle, Footer
from ckptlib.reader import BundleReader

GOLDEN = Path(__file__).parent / "data" / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if p.is_dir() and not p.name.startswith("_"))

# TensorFlow dtype name -> the numpy dtype ckptlib must return (quantized: their integer base).
NUMPY_FOR = {
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "complex64": np.dtype("<c8"),
    "complex128": np.dtype("<c16"),
    "bool": np.dtype("?"),
    "int8": np.dtype("i1"),
    "int16": np.dtype("<i2"),
    "int32": np.dtype("<i4"),
    "int64": np.dtype("<i8"),
    "uint8": np.dtype("u1"),
    "uint16": np.dtype("<u2"),
    "uint32": np.dtype("<u4"),
    "uint64": np.dtype("<u8"),
    "qint8": np.dtype("i1"),
    "quint8": np.dtype("u1"),
    "qint16": np.dtype("<i2"),
    "quint16": np.dtype("<u2"),
    "qint32": np.dtype("<i4"),
    "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
    "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
    "float8_e4m3fnuz": np.dtype(ml_dtypes.float8_e4m3fnuz),
    "float8_e4m3b11fnuz": np.dtype(ml_dtypes.float8_e4m3b11fnuz),
    "float8_e5m2fnuz": np.dtype(ml_dtypes.float8_e5m2fnuz),
    "int4": np.dtype(ml_dtypes.int4),
    "uint4": np.dtype(ml_dtypes.uint4),
    "int2": np.dtype(ml_dtypes.int2),
    "uint2": np.dtype(ml_dtypes.uint2),
    "float4_e2m1fn": np.dtype(ml_dtypes.float4_e2m1fn),
}
QUANTIZED = {"qint8", "quint8", "qint16", "quint16", "qint32"}


@dataclass
class Golden:
    case: str
    directory: Path
    manifest: dict
    raw: np.ndarray
    given: np.ndarray | None

    @property
    def prefix(self) -> str:
        """The prefix as TensorFlow names it (for V1 sharded saves, a ``P-?????-of-N`` pattern)."""
        return str(self.directory / self.manifest["prefix"])

    @property
    def base_prefix(self) -> str:
        """The prefix for the tests of every case: a V1 sharded save by its base name (ckptlib
        finds ``P-NNNNN-of-NNNNN``); TF's own pattern is tested separately."""
        return re.sub(r"-\?{5}-of-\d{5}$", "", self.prefix)

    @property
    def tensors(self) -> dict[str, dict]:
        return self.manifest["tensors"]

    def expected(self, name: str) -> np.ndarray:
        return _value(self.tensors[name], self.raw)

    def given_value(self, item: dict) -> np.ndarray:
        """The value handed to SaveV2 for one item of the manifest's ``savev2`` list."""
        if not item["shape_and_slice"]:
            return self.expected(item["name"])  # whole tensors read back exactly as given
        return _value(item, self.given)


def _value(item: dict, blob: np.ndarray | None) -> np.ndarray:
    shape = tuple(item["shape"])
    if item["dtype"] == "string":
        out = np.empty(len(item["b64"]), dtype=object)
        out[:] = [base64.b64decode(s) for s in item["b64"]]
        return out.reshape(shape)
    offset, nbytes = item["raw"]
    assert blob is not None
    raw = blob[offset : offset + nbytes]
    return raw.view(NUMPY_FOR[item["dtype"]]).reshape(shape)


@functools.cache
def golden(case: str) -> Golden:
    directory = GOLDEN / case
    if (directory / "expected.json").exists():
        manifest = json.loads((directory / "expected.json").read_text(encoding="utf-8"))
    else:
        with gzip.open(directory / "expected.json.gz", "rt", encoding="utf-8") as f:
            manifest = json.load(f)
    with np.load(directory / "expected.npz", allow_pickle=False) as npz:
        raw = npz["raw"]
        given = npz["given"] if "given" in npz.files else None
    assert manifest["case"] == case
    return Golden(case, directory, manifest, raw, given)


def raw_bytes(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8).tobytes()


def assert_same(name: str, actual: np.ndarray, item: dict, expected: np.ndarray) -> None:
    """Bitwise equality, dtype and shape included."""
    assert isinstance(actual, np.ndarray), name
    assert actual.shape == tuple(item["shape"]), name
    if item["dtype"] == "string":
        assert actual.dtype == object, name
        flat = list(actual.reshape(-1))
        assert all(type(x) is bytes for x in flat), (name, [type(x).__name__ for x in flat])
        assert flat == list(expected.reshape(-1)), name
    else:
        assert actual.dtype == NUMPY_FOR[item["dtype"]], (name, actual.dtype, item["dtype"])
        assert raw_bytes(actual) == raw_bytes(expected), name


SAVEV2_CASES = [c for c in CASES if "savev2" in golden(c).manifest]


def test_golden_data_present():
    """Guard against the data (or a case) silently going missing."""
    expected = {
        "format_vector",
        "dtypes",
        "strings",
        "scalars_empty",
        "sliced_savev2",
        "many_keys",
        "tf1_partitioned",
        "tf1_sharded",
        "v1_format",
        "v1_sharded",
        "tf2_keras",
        "tf2_slots",
        "tf2_sharding_policy",
    }
    assert expected <= set(CASES)
    assert {"format_vector", "dtypes", "many_keys", "sliced_savev2"} <= set(SAVEV2_CASES)


# ----------------------------------------------------------------------------------------
# every case: names, dtypes, shapes, values


@pytest.mark.parametrize("case", CASES)
def test_list_variables_matches_tensorflow(case):
    g = golden(case)
    expected = sorted((name, item["shape"]) for name, item in g.tensors.items())
    assert ckptlib.list_variables(g.base_prefix) == expected


@pytest.mark.parametrize("case", CASES)
def test_every_tensor_bitwise(case):
    g = golden(case)
    with ckptlib.load_checkpoint(g.base_prefix) as reader:
        assert set(reader.keys_list()) == set(g.tensors)
        assert len(reader) == len(g.tensors)
        shapes = reader.get_variable_to_shape_map()
        for name, item in g.tensors.items():
            assert reader.dtype_name(name) == item["dtype"], name
            assert list(reader.shape(name)) == item["shape"], name
            assert shapes[name] == item["shape"], name
            assert name in reader
            assert_same(name, reader.get_tensor(name), item, g.expected(name))


@pytest.mark.parametrize("case", CASES)
def test_restore_bitwise(case):
    g = golden(case)
    restored = ckptlib.restore(g.base_prefix)
    assert set(restored) == set(g.tensors)
    for name, item in g.tensors.items():
        assert_same(name, restored[name], item, g.expected(name))


@pytest.mark.parametrize("case", CASES)
def test_verify_clean(case):
    with ckptlib.load_checkpoint(golden(case).base_prefix) as reader:
        assert reader.verify() == []


@pytest.mark.parametrize("case", CASES)
def test_load_variable(case):
    g = golden(case)
    name = sorted(g.tensors)[0]
    assert_same(name, ckptlib.load_variable(g.base_prefix, name + ":0"), g.tensors[name], g.expected(name))


def test_dtypes_case_covers_every_dtype():
    g = golden("dtypes")
    assert {item["dtype"] for item in g.tensors.values()} == set(NUMPY_FOR)
    assert g.tensors["float8_e4m3fn"]["shape"] == [16, 16]  # all 256 bit patterns


def test_float_specials_survive():
    """The bit patterns that value comparisons would blur: NaN payloads, -0.0, denormals."""
    g = golden("dtypes")
    f32 = ckptlib.load_variable(g.prefix, "float32")
    assert np.signbit(f32[1]) and f32[1] == 0
    assert np.isnan(f32[6]) and np.isinf(f32[4])
    assert f32[10] == np.finfo(np.float32).smallest_subnormal
    nan_bits = f32[-3:].view(np.uint32)
    assert list(nan_bits) == [0x7FC00001, 0xFFC00000, 0x7F800001]
    half = ckptlib.load_variable(g.prefix, "float16")
    assert half[10] == np.finfo(np.float16).smallest_subnormal
    assert half[-1:].view(np.uint16)[0] == 0x7C01  # signalling NaN kept as is


def test_string_edge_cases():
    g = golden("strings")
    with ckptlib.load_checkpoint(g.prefix) as reader:
        assert reader.get_tensor("scalar").shape == ()
        assert reader.get_tensor("scalar")[()] == b"hello, world"
        assert reader.get_tensor("empty_string").tolist() == [b""]
        assert reader.get_tensor("binary")[2] == b"\xff\xfe\x00\xff"
        assert reader.get_tensor("utf8")[1].decode("utf-8") == "日本語"
        assert len(reader.get_tensor("long_300")[0]) == 300
        assert len(reader.get_tensor("long_70k")[()]) == 70000
        assert [len(s) for s in reader.get_tensor("length_edges")] == [0, 1, 127, 128, 16383, 16384]
        assert reader.get_tensor("matrix").shape == (2, 3)
        assert reader.get_tensor("empty_tensor").shape == (0,)
        assert reader.get_tensor("empty_matrix").shape == (3, 0)
        assert reader.get_tensor("ünïcode/名前").tolist() == [b"non-ASCII tensor name"]


def test_scalars_and_empty_tensors():
    g = golden("scalars_empty")
    with ckptlib.load_checkpoint(g.prefix) as reader:
        for name, item in g.tensors.items():
            value = reader.get_tensor(name)
            if name.endswith("/scalar"):
                assert value.shape == () and item["shape"] == []
            else:
                assert value.size == 0 and value.shape == tuple(item["shape"])
        entries = dict(reader.raw_entries())
    for entry in entries.values():
        if entry.shape and 0 in entry.shape:
            assert entry.size == 0
            assert entry.crc32c == 0xA282EAD8  # Mask(crc32c(b""))


# ----------------------------------------------------------------------------------------
# byte identity with TensorFlow's SaveV2


def _parse_shape_and_slice(text: str) -> tuple[list[int], str]:
    *dims, spec = text.split(" ")
    return [int(d) for d in dims], spec


def _rebuild(g: Golden, prefix: Path) -> None:
    writer = ckptlib.BundleWriter(prefix, sync=False)
    for item in g.manifest["savev2"]:
        value = g.given_value(item)
        assert list(value.shape) == item["shape"]
        dtype = item["dtype"] if item["dtype"] in QUANTIZED else None
        if item["shape_and_slice"]:
            full_shape, spec = _parse_shape_and_slice(item["shape_and_slice"])
            writer.add_slice(item["name"], full_shape, spec, value, dtype=dtype)
        else:
            writer.add(item["name"], value, dtype=dtype)
    assert writer.finish() == str(prefix)


@pytest.mark.parametrize("case", SAVEV2_CASES)
def test_savev2_byte_identical(case, tmp_path):
    g = golden(case)
    ours = tmp_path / "ckpt"
    _rebuild(g, ours)
    theirs = g.directory / "ckpt"
    assert Path(f"{ours}.data-00000-of-00001").read_bytes() == Path(f"{theirs}.data-00000-of-00001").read_bytes()
    assert Path(f"{ours}.index").read_bytes() == Path(f"{theirs}.index").read_bytes()
    assert sorted(n for n in os.listdir(tmp_path) if not n.startswith(".")) == [
        "ckpt.data-00000-of-00001",
        "ckpt.index",
    ]


FORMAT_MD_DATA = bytes.fromhex("0000803f 02 d8d81073 6162")
FORMAT_MD_INDEX = bytes.fromhex(
    "00000608011a020801 00011173 0807120412020801200428073526 19a635"
    "00010b76 0801120028043581a5da2b 00000000 01000000 00 a8a0c813"
    "00000000 01000000 00 c0f2a1b0"
    "00010277 0035 00000000 01000000 00 53e3e012"
    "3a08 470e" + "00" * 36 + "57fb808b247547db"
)


def test_format_vector_matches_format_md(tmp_path):
    g = golden("format_vector")
    assert Path(g.prefix + ".data-00000-of-00001").read_bytes() == FORMAT_MD_DATA
    assert Path(g.prefix + ".index").read_bytes() == FORMAT_MD_INDEX
    ckptlib.save({"v": np.float32(1.0), "s": np.array([b"ab"], dtype=object)}, tmp_path / "ckpt", sync=False)
    assert (tmp_path / "ckpt.index").read_bytes() == FORMAT_MD_INDEX
    assert (tmp_path / "ckpt.data-00000-of-00001").read_bytes() == FORMAT_MD_DATA


def _index_block_handles(index_path: str) -> list[BlockHandle]:
    data = Path(index_path).read_bytes()
    footer = Footer.decode(data[-FOOTER_SIZE:])
    block = data[footer.index.offset : footer.index.offset + footer.index.size]
    assert len(data) >= footer.index.offset + footer.index.size + BLOCK_TRAILER_SIZE
    return [BlockHandle.decode_exact(value) for _, value in parse_block(block)]


def test_many_keys_spans_several_index_blocks():
    g = golden("many_keys")
    assert len(g.tensors) >= 6000
    handles = _index_block_handles(g.prefix + ".index")
    assert len(handles) >= 3
    # blocks are closed near 256 KiB
    assert all(h.size >= 262144 for h in handles[:-1])
    names = sorted(g.tensors)
    for name in (names[0], names[len(names) // 3], names[2 * len(names) // 3], names[-1]):
        # a fresh reader: a point lookup through the index block, not the listing's cache
        with ckptlib.load_checkpoint(g.prefix) as reader:
            assert_same(name, reader.get_tensor(name), g.tensors[name], g.expected(name))
    with ckptlib.load_checkpoint(g.prefix) as reader:
        assert not reader.has_tensor(names[-1] + "x")
        assert not reader.has_tensor("layer_")


def test_sliced_savev2_layout():
    g = golden("sliced_savev2")
    with BundleReader(g.prefix) as reader:
        keys = [key for key, _ in reader.raw_entries()]
        entries = {name: reader.entry(name) for name in reader.keys_list()}
    # 2 + 3 + 2 + 3 slice keys are hidden from the listing
    assert len(keys) == len(entries) + 10
    assert [str(s) for s in entries["w"].slices] == ["5,5:-", "0,5:-"]  # in SaveV2's order
    assert len(entries["part"].slices) == 3 and len(entries["cube"].slices) == 3
    assert entries["full_slice"].slices == () and entries["plain"].slices == ()


# ----------------------------------------------------------------------------------------
# TF1 Saver, TF2 Checkpoint, V1


def test_tf1_sharded_has_two_shards():
    g = golden("tf1_sharded")
    with BundleReader(g.prefix) as reader:
        assert reader.header.num_shards == 2
        shard_of = {name: reader.entry(name).shard_id for name in reader.keys_list()}
        slice_shards = {entry.shard_id for key, entry in reader.raw_entries() if key.startswith(b"\x00")}
    assert shard_of["a"] == 0 and shard_of["global_step"] == 0 and shard_of["names"] == 0
    assert shard_of["scope/b"] == 1 and shard_of["h"] == 1
    assert slice_shards == {1}
    for i in range(2):
        assert os.path.getsize(g.prefix + f".data-{i:05d}-of-00002") > 0


def test_directory_argument_uses_state_file():
    g = golden("tf1_sharded")
    directory = str(g.directory)
    state = ckptlib.get_checkpoint_state(directory)
    assert state.model_checkpoint_path == os.path.join(directory, "model.ckpt-2")
    assert list(state.all_model_checkpoint_paths) == [
        os.path.join(directory, "model.ckpt-1"),
        os.path.join(directory, "model.ckpt-2"),
    ]
    assert ckptlib.latest_checkpoint(directory) == g.prefix
    with ckptlib.load_checkpoint(directory) as reader:
        assert reader.prefix == g.prefix
        assert set(reader.keys_list()) == set(g.tensors)
    restored = ckptlib.restore(g.directory)  # a Path works too
    for name, item in g.tensors.items():
        assert_same(name, restored[name], item, g.expected(name))
    # the older checkpoint the state file lists holds the same values
    assert set(ckptlib.restore(os.path.join(directory, "model.ckpt-1"))) == set(g.tensors)


def test_file_arguments():
    g = golden("tf2_keras")
    for path in (g.prefix + ".index", g.prefix + ".data-00000-of-00001"):
        with ckptlib.load_checkpoint(path) as reader:
            assert reader.prefix == g.prefix
            assert set(reader.keys_list()) == set(g.tensors)
    assert ckptlib.list_variables(g.prefix + ".index") == ckptlib.list_variables(g.directory)


@pytest.mark.parametrize("case", ["tf2_keras", "tf2_slots", "tf2_sharding_policy"])
def test_tf2_object_graph(case):
    g = golden(case)
    names = set(g.tensors)
    assert "_CHECKPOINTABLE_OBJECT_GRAPH" in names
    assert "save_counter/.ATTRIBUTES/VARIABLE_VALUE" in names
    assert all(n == "_CHECKPOINTABLE_OBJECT_GRAPH" or n.endswith("/.ATTRIBUTES/VARIABLE_VALUE") for n in names)
    graph = ckptlib.load_variable(g.directory, "_CHECKPOINTABLE_OBJECT_GRAPH")
    assert graph.shape == () and graph.dtype == object
    # every checkpoint key is named in the serialized TrackableObjectGraph
    for name in names - {"_CHECKPOINTABLE_OBJECT_GRAPH"}:
        assert name.encode() in graph[()], name
    assert ckptlib.load_variable(g.directory, "save_counter/.ATTRIBUTES/VARIABLE_VALUE") == 1


def test_tf2_keras_variables():
    g = golden("tf2_keras")
    names = set(g.tensors)
    shapes = sorted(tuple(item["shape"]) for item in g.tensors.values())
    assert shapes.count((4, 3)) == 3 and shapes.count((3, 2)) == 3  # kernel + Adam m, v
    assert "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE" in names
    assert ckptlib.load_variable(g.prefix, "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE") == 1


def test_tf2_optimizer_slots():
    g = golden("tf2_slots")
    slots = sorted(n for n in g.tensors if "/.OPTIMIZER_SLOT/" in n)
    assert len(slots) == 8
    assert "model/dense/kernel/.OPTIMIZER_SLOT/optimizer/m/.ATTRIBUTES/VARIABLE_VALUE" in slots
    with ckptlib.load_checkpoint(g.directory) as reader:
        kernel = reader.get_tensor("model/dense/kernel/.ATTRIBUTES/VARIABLE_VALUE")
        m = reader.get_tensor("model/dense/kernel/.OPTIMIZER_SLOT/optimizer/m/.ATTRIBUTES/VARIABLE_VALUE")
        assert kernel.shape == m.shape == (4, 3)
        assert np.any(m != 0)  # one training step was taken


def test_tf2_sharding_policy_slices_unpartitioned_variables():
    g = golden("tf2_sharding_policy")
    with BundleReader(g.prefix) as reader:
        assert reader.header.num_shards >= 2
        big = reader.entry("big/.ATTRIBUTES/VARIABLE_VALUE")
        assert len(big.slices) >= 2  # one variable cut into slices over several files
        shards = {entry.shard_id for _, entry in reader.raw_entries()}
    assert len(shards) >= 2
    np.testing.assert_array_equal(
        ckptlib.load_variable(g.prefix, "big/.ATTRIBUTES/VARIABLE_VALUE"),
        np.arange(64, dtype=np.float32).reshape(16, 4) - 20.5,
    )


def test_v1_format_directory_and_prefix():
    g = golden("v1_format")
    assert not os.path.exists(g.prefix + ".index")
    assert ckptlib.latest_checkpoint(g.directory) == g.prefix
    with ckptlib.load_checkpoint(g.directory) as reader:
        assert set(reader.keys_list()) == set(g.tensors)
        assert reader.dtype_name("s") == "string" and reader.dtype_name("part") == "float32"
        np.testing.assert_array_equal(reader.get_tensor("part"), np.arange(10, dtype=np.float32).reshape(5, 2) / 4)


def test_v1_scalar_string():
    """A scalar string in a V1 file reads as a 0-d object array holding ``bytes``."""
    g = golden("v1_sharded")
    with ckptlib.load_checkpoint(g.base_prefix) as reader:
        value = reader.get_tensor("s")
    assert value.shape == () and value.dtype == object
    assert type(value[()]) is bytes and value[()] == b"shard zero"


def test_v1_string_sizes_are_the_bytes_of_their_strings():
    g = golden("v1_sharded")
    with ckptlib.load_checkpoint(g.base_prefix) as reader:
        assert reader.tensor_info("s").nbytes == len(b"shard zero")


def test_v1_sharded_prefix_pattern():
    """TF1 V1 sharded Saver returns (and records in the state file) ``P-?????-of-00002``;
    ``tf.train.load_checkpoint`` accepts that pattern and the directory."""
    g = golden("v1_sharded")
    assert g.manifest["prefix"] == "model.ckpt-?????-of-00002"
    expected = set(g.tensors)
    with ckptlib.load_checkpoint(g.prefix) as reader:
        assert set(reader.keys_list()) == expected


def test_v1_sharded_directory():
    g = golden("v1_sharded")
    assert ckptlib.latest_checkpoint(g.directory) == g.prefix
    with ckptlib.load_checkpoint(g.directory) as reader:
        assert set(reader.keys_list()) == set(g.tensors)


def test_v1_sharded_single_file():
    """One shard file of a V1 sharded checkpoint reads as the tensors it holds."""
    g = golden("v1_sharded")
    first = str(g.directory / "model.ckpt-00000-of-00002")
    with ckptlib.load_checkpoint(first) as reader:
        names = set(reader.keys_list())
    assert names and names < set(g.tensors)


def test_golden_copy_is_self_contained(tmp_path):
    """A moved checkpoint directory still resolves through its (relative) state file."""
    g = golden("tf2_slots")
    moved = tmp_path / "moved"
    shutil.copytree(g.directory, moved)
    assert ckptlib.latest_checkpoint(moved) == str(moved / "ckpt-1")
    assert set(ckptlib.restore(moved)) == set(g.tensors)
