"""Live interoperability: real TensorFlow reads what ckptlib writes (and, once, the reverse).

Every test here writes with ckptlib and reads with TensorFlow in the same process:
``tf.train.load_checkpoint(...).get_tensor`` (the C++ ``BundleReader``), ``tf.train.list_variables``,
the ``RestoreV2`` kernel, TF1 ``tf.compat.v1.train.Saver.restore`` into graph-mode variables
(partitioned ones too) and ``tf.train.latest_checkpoint``. Values are compared as raw bytes, so
NaN payloads, -0.0 and denormals must survive exactly. Some tests go the other way: TF's
``SaveV2`` and ckptlib, given the same tensors in the same order, write byte-identical files, and
``ckptlib.merge_bundles`` writes what ``tf.raw_ops.MergeV2Checkpoints`` writes.

Skipped as a whole, with a visible reason, where TensorFlow is not installed.
"""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's C++ INFO/WARNING logs out of test output

tf = pytest.importorskip(
    "tensorflow",
    reason="TensorFlow is not installed: live interop tests need tensorflow-cpu (pip install -e .[tf])",
)

import ckptlib  # noqa: E402
from ckptlib.format.table import BytesSource, TableReader  # noqa: E402
from ckptlib.state import CheckpointState, write_state_file  # noqa: E402

# ---------------------------------------------------------------------------------------------
# dtypes and values
# ---------------------------------------------------------------------------------------------

# Every plain numeric dtype of ckptlib's table, by the name both ckptlib and TF use.
NUMERIC_DTYPES: dict[str, np.dtype] = {
    name: np.dtype(t)
    for name, t in [
        ("float16", np.float16),
        ("bfloat16", ml_dtypes.bfloat16),
        ("float32", np.float32),
        ("float64", np.float64),
        ("complex64", np.complex64),
        ("complex128", np.complex128),
        ("bool", np.bool_),
        ("int8", np.int8),
        ("int16", np.int16),
        ("int32", np.int32),
        ("int64", np.int64),
        ("uint8", np.uint8),
        ("uint16", np.uint16),
        ("uint32", np.uint32),
        ("uint64", np.uint64),
        ("float8_e5m2", ml_dtypes.float8_e5m2),
        ("float8_e4m3fn", ml_dtypes.float8_e4m3fn),
        ("float8_e4m3fnuz", ml_dtypes.float8_e4m3fnuz),
        ("float8_e4m3b11fnuz", ml_dtypes.float8_e4m3b11fnuz),
        ("float8_e5m2fnuz", ml_dtypes.float8_e5m2fnuz),
        ("int4", ml_dtypes.int4),
        ("uint4", ml_dtypes.uint4),
        ("int2", ml_dtypes.int2),
        ("uint2", ml_dtypes.uint2),
        ("float4_e2m1fn", ml_dtypes.float4_e2m1fn),
    ]
}

# Quantized types share an integer layout; ckptlib writes them only when asked by name.
QUANTIZED_DTYPES = {"qint8": np.int8, "quint8": np.uint8, "qint16": np.int16, "quint16": np.uint16, "qint32": np.int32}

# TF 2.21 has no CPU AssignVariableOp kernel for these (variables of them cannot be restored):
# "No OpKernel was registered to support Op 'AssignVariableOp' used by {{node ...}} with these
# attrs: [dtype=DT_FLOAT8_E4M3FNUZ, ...]  Registered devices: [CPU]"
NO_VARIABLE_KERNEL = {"float8_e4m3fnuz", "float8_e4m3b11fnuz", "float8_e5m2fnuz"}

# Dtypes TF's BundleReader can assemble from several slices (tensor_bundle.cc GetSliceValue);
# for the others TF 2.21's get_tensor on a partitioned tensor raises ValueError("Dtype half not
# supported."), "Dtype uint16 not supported.", ... (checked by the test, which then skips).
TF_SLICE_ASSEMBLY = {
    "float32", "float64", "int32", "uint8", "int16", "int8", "complex64", "complex128",
    "int64", "bool", "bfloat16", "int4", "uint4",
}  # fmt: skip

# Float layouts (total bits, exponent bits, mantissa bits) for the wide float types.
_FLOAT_LAYOUT = {"float16": (16, 5, 10), "bfloat16": (16, 8, 7), "float32": (32, 8, 23), "float64": (64, 11, 52)}
_UINT_OF_BITS = {16: np.uint16, 32: np.uint32, 64: np.uint64}


def _float_bit_patterns(bits: int, exp_bits: int, mant_bits: int) -> list[int]:
    """Special encodings, most interesting first: NaNs (negative, signalling, payloads),
    infinities, signed zeros, denormals, extreme normals."""
    sign = 1 << (bits - 1)
    exp_all = ((1 << exp_bits) - 1) << mant_bits
    quiet = 1 << (mant_bits - 1)
    return [
        sign | exp_all | quiet | 5,  # -NaN with payload
        exp_all | 1,  # signalling NaN
        exp_all | quiet,  # canonical quiet NaN
        (1 << bits) - 1,  # all ones: -NaN, full payload
        exp_all,  # +inf
        sign | exp_all,  # -inf
        0,  # +0.0
        sign,  # -0.0
        1,  # smallest denormal
        sign | 1,  # -smallest denormal
        (1 << mant_bits) - 1,  # largest denormal
        1 << mant_bits,  # smallest normal
        exp_all - 1,  # largest finite
        sign | (exp_all - 1),  # most negative finite
        ((1 << (exp_bits - 1)) - 1) << mant_bits,  # 1.0
    ]


def values_1d(name: str) -> np.ndarray:
    """A 1-D array of ``name`` holding its interesting values (the first is the scalar case)."""
    dt = NUMERIC_DTYPES[name]
    rng = np.random.default_rng(sum(name.encode()))
    if name in _FLOAT_LAYOUT:
        bits, e, m = _FLOAT_LAYOUT[name]
        udt = _UINT_OF_BITS[bits]
        special = np.array(_float_bit_patterns(bits, e, m), dtype=udt)
        random = rng.integers(0, np.iinfo(udt).max, size=33, dtype=udt, endpoint=True)
        return np.concatenate([special, random]).view(dt)
    if name in ("complex64", "complex128"):
        parts = values_1d("float32" if name == "complex64" else "float64")
        parts = parts[: len(parts) // 2 * 2]
        # pair every special with every other special's neighbour: (nan, inf), (-0.0, denormal), ...
        mixed = np.concatenate([parts, np.roll(parts, 3)]).reshape(2, -1).T.copy()
        return mixed.reshape(-1).view(dt)
    if name == "bool":
        return np.array([True, False, False, True, True], dtype=dt)
    if name in ("int4", "uint4", "int2", "uint2"):
        info = ml_dtypes.iinfo(dt)
        return np.arange(int(info.min), int(info.max) + 1)[::-1].astype(dt)
    if name == "float4_e2m1fn" or name.startswith("float8"):
        count = 16 if name == "float4_e2m1fn" else 256
        codes = np.arange(count, dtype=np.uint8)
        # every encoding: NaN(s), inf where the type has them, -0.0 / 0x80, all denormals
        return np.concatenate([codes[count // 2 + 1 :], codes[: count // 2 + 1]]).view(dt)
    info = np.iinfo(dt)
    special = [info.min, info.max, 0, 1, info.max - 1, info.min + 1] + ([-1] if info.min < 0 else [])
    random = rng.integers(info.min, info.max, size=29, dtype=dt, endpoint=True)
    return np.concatenate([np.array(special, dtype=dt), random])


SHAPE_CLASSES = ["scalar", "1d", "3d", "empty", "empty_2x0"]


def make_value(name: str, shape_class: str) -> np.ndarray:
    flat = values_1d(name)
    if shape_class == "scalar":
        return flat[0].reshape(())
    if shape_class == "1d":
        return flat
    if shape_class == "3d":
        depth = math.ceil(len(flat) / 6) + 1  # every value, then wrap around
        return np.resize(flat, (2, 3, depth))
    if shape_class == "empty":
        return np.empty((0,), dtype=flat.dtype)
    if shape_class == "empty_2x0":
        return np.empty((2, 0), dtype=flat.dtype)
    raise AssertionError(shape_class)


def assert_bitwise(actual: object, expected: np.ndarray, what: str = "") -> None:
    """``actual`` (what TF returned) has ``expected``'s dtype, shape and exact bytes."""
    got = np.asarray(actual)
    assert got.dtype == expected.dtype, f"{what}: dtype {got.dtype} != {expected.dtype}"
    assert got.shape == expected.shape, f"{what}: shape {got.shape} != {expected.shape}"
    assert got.tobytes() == expected.tobytes(), f"{what}: bytes differ\n got {got!r}\nwant {expected!r}"


def assert_strings(actual: object, expected: np.ndarray, what: str = "") -> None:
    got = np.asarray(actual, dtype=object)
    assert got.shape == expected.shape, f"{what}: shape {got.shape} != {expected.shape}"
    for i, (g, e) in enumerate(zip(got.reshape(-1), expected.reshape(-1), strict=True)):
        assert isinstance(g, bytes) and g == e, f"{what}[{i}]: {g[:40]!r}... != {e[:40]!r}..."


_NO_GRAPPLER = None


def session(graph: tf.Graph) -> tf.compat.v1.Session:
    """A TF1 session with graph rewriting off (TF's MLIR passes log noisy errors for int2/float4)."""
    global _NO_GRAPPLER
    if _NO_GRAPPLER is None:
        from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2

        rewrite = rewriter_config_pb2.RewriterConfig(disable_meta_optimizer=True)
        _NO_GRAPPLER = config_pb2.ConfigProto(graph_options=config_pb2.GraphOptions(rewrite_options=rewrite))
    return tf.compat.v1.Session(graph=graph, config=_NO_GRAPPLER)


def graph_variable(name: str, dtype: str, shape: tuple[int, ...]) -> tf.Variable:
    """A TF1 graph variable of this exact name/dtype/shape whose only value will be the restored one.

    The initial value is an unfed placeholder (never run): TF 2.21 cannot build constants of
    some dtypes (float8 *fnuz: "Element type not supported in TensorProto").
    """
    init = tf.compat.v1.placeholder(tf.as_dtype(dtype), shape)
    return tf.compat.v1.get_variable(name, initializer=init)


def tf_restore_v1(prefix: str, specs: dict[str, tuple[str, tuple[int, ...]]]) -> dict[str, np.ndarray]:
    """``Saver.restore`` of ``prefix`` into fresh graph variables ``{name: (dtype, shape)}``."""
    graph = tf.Graph()
    with graph.as_default():
        variables = {name: graph_variable(name, dtype, shape) for name, (dtype, shape) in specs.items()}
        saver = tf.compat.v1.train.Saver(list(variables.values()))
        with session(graph) as sess:
            saver.restore(sess, prefix)
            return sess.run(variables)


def tf_list(prefix: str) -> list[tuple[str, list[int]]]:
    return [(name, list(shape)) for name, shape in tf.train.list_variables(prefix)]


def slice_of(value: np.ndarray, spec: str) -> np.ndarray:
    bounds = ckptlib.TensorSlice.parse(spec).bounds(value.shape)
    return value[tuple(slice(a, b) for a, b in bounds)]


# ---------------------------------------------------------------------------------------------
# the two libraries in one process
# ---------------------------------------------------------------------------------------------


def test_protos_do_not_clash_with_tensorflow_in_either_import_order(tmp_path: Path) -> None:
    """ckptlib's generated protos live in their own package, so importing ckptlib before TF
    (and TF's own tensor_bundle_pb2) raises no duplicate-descriptor error."""
    from tensorflow.core.protobuf import tensor_bundle_pb2 as tf_bundle

    from ckptlib.format.proto import tensor_bundle_pb2 as ck_bundle

    assert ck_bundle.DESCRIPTOR.package != tf_bundle.DESCRIPTOR.package
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        import ckptlib                                    # ckptlib first ...
        from ckptlib.format.proto import tensor_bundle_pb2, checkpoint_state_pb2
        import tensorflow as tf                           # ... then TensorFlow
        from tensorflow.core.protobuf import tensor_bundle_pb2 as tf_bundle
        from tensorflow.python.checkpoint import checkpoint_management
        prefix = ckptlib.save({"x": np.arange(3, dtype=np.int64)}, sys.argv[1])
        assert tf.train.load_checkpoint(prefix).get_tensor("x").tolist() == [0, 1, 2]
        print("OK")
        """
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "order" / "ckpt")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stderr[-3000:]


# ---------------------------------------------------------------------------------------------
# every dtype x every shape class, through tf.train.load_checkpoint
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape_class", SHAPE_CLASSES)
@pytest.mark.parametrize("dtype", list(NUMERIC_DTYPES))
def test_numeric_get_tensor_bitwise(tmp_path: Path, dtype: str, shape_class: str) -> None:
    value = make_value(dtype, shape_class)
    prefix = ckptlib.save({"group/t": value}, tmp_path / "ckpt")

    reader = tf.train.load_checkpoint(prefix)
    assert reader.get_variable_to_dtype_map() == {"group/t": tf.as_dtype(dtype)}
    assert reader.get_variable_to_shape_map() == {"group/t": list(value.shape)}
    assert_bitwise(reader.get_tensor("group/t"), value, f"{dtype} {shape_class}")
    assert_bitwise(tf.train.load_variable(prefix, "group/t"), value, "load_variable")
    assert tf_list(prefix) == ckptlib.list_variables(prefix) == [("group/t", list(value.shape))]


@pytest.mark.parametrize("dtype", list(QUANTIZED_DTYPES))
def test_quantized_dtype_names_reach_tf(tmp_path: Path, dtype: str) -> None:
    value = np.array([[-3, 0, 7], [1, 2, 100]]).astype(QUANTIZED_DTYPES[dtype])
    writer = ckptlib.BundleWriter(tmp_path / "ckpt")
    writer.add("q", value, dtype=dtype)
    prefix = writer.finish()

    reader = tf.train.load_checkpoint(prefix)
    assert reader.get_variable_to_dtype_map() == {"q": tf.as_dtype(dtype)}
    # TF hands quantized tensors back as their integer layout
    assert_bitwise(reader.get_tensor("q"), value, dtype)


def test_all_dtypes_and_shapes_in_one_checkpoint(tmp_path: Path) -> None:
    """One bundle, 125 tensors added in a non-sorted order: TF lists and reads each one."""
    expected = {
        f"{shape_class}/{dtype}": make_value(dtype, shape_class)
        for dtype in reversed(NUMERIC_DTYPES)
        for shape_class in SHAPE_CLASSES
    }
    prefix = ckptlib.save(expected, tmp_path / "all" / "model.ckpt-12")

    assert tf_list(prefix) == ckptlib.list_variables(prefix)
    assert tf_list(prefix) == sorted((name, list(v.shape)) for name, v in expected.items())
    reader = tf.train.load_checkpoint(prefix)
    dtype_map = reader.get_variable_to_dtype_map()
    for name, value in expected.items():
        assert dtype_map[name] == tf.as_dtype(name.split("/")[1])
        assert_bitwise(reader.get_tensor(name), value, name)


def test_restore_v2_kernel_reads_every_dtype(tmp_path: Path) -> None:
    """The ``RestoreV2`` op (what every Saver runs) reads each dtype, float8 *fnuz included."""
    expected = {dtype: make_value(dtype, "3d") for dtype in NUMERIC_DTYPES}
    prefix = ckptlib.save(expected, tmp_path / "ckpt")
    names = list(expected)
    tensors = tf.raw_ops.RestoreV2(
        prefix=prefix,
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        dtypes=[tf.as_dtype(n) for n in names],
    )
    for name, tensor in zip(names, tensors, strict=True):
        assert_bitwise(tensor.numpy(), expected[name], name)


# ---------------------------------------------------------------------------------------------
# strings
# ---------------------------------------------------------------------------------------------

STRINGS = {
    "empty": b"",
    "nul": b"\x00",
    "nul_ff_mix": b"\x00\xff\x00a\xff\xff\x00",
    "non_ascii": "héllo wörld ✓ 漢字 🙂".encode(),
    "long_70kb": bytes(np.random.default_rng(7).integers(0, 256, size=70_000, dtype=np.uint8)),
    "varint_edges": np.array([b"x" * n for n in (127, 128, 16383, 16384, 0, 1)], dtype=object),
    "two_d": np.array([[b"a", b"", b"\x00\x00"], [b"\xff", "é".encode(), b"z" * 300]], dtype=object),
    "zero_elements": np.empty((0,), dtype=object),
    "zero_elements_3x0": np.empty((3, 0), dtype=object),
    "from_str": np.array(["ünïcode", "", "tab\tnew\nline"], dtype=object),
    # elements of 64 KiB and more are written from their own bytes, between joined runs
    "large_among_small": np.array(
        [b"a", b"\x01" * 100_000, b"", b"bc", bytes(range(256)) * 300, b"d", b"\xfe" * 65_536], dtype=object
    ),
    "lengths_over_64kib": np.array([b""] * 40_000 + [b"\x07" * 200] * 30_000, dtype=object),
}


def _expected_string_array(value: object) -> np.ndarray:
    array = np.array(value, dtype=object) if isinstance(value, bytes) else np.asarray(value, dtype=object)
    out = np.empty(array.shape, dtype=object)
    for i, item in enumerate(array.reshape(-1)):
        out.reshape(-1)[i] = item.encode() if isinstance(item, str) else bytes(item)
    return out


def test_strings_read_back_byte_exact(tmp_path: Path) -> None:
    prefix = ckptlib.save({f"s/{k}": v for k, v in STRINGS.items()}, tmp_path / "ckpt")
    reader = tf.train.load_checkpoint(prefix)
    assert set(reader.get_variable_to_dtype_map().values()) == {tf.string}
    for key, value in STRINGS.items():
        expected = _expected_string_array(value)
        got = reader.get_tensor(f"s/{key}")
        if expected.shape == ():
            assert isinstance(got, bytes) and got == expected[()], key
        else:
            assert_strings(got, expected, key)
    assert tf_list(prefix) == ckptlib.list_variables(prefix)


def test_string_variables_restore_through_saver(tmp_path: Path) -> None:
    values = {"tok/scalar": STRINGS["non_ascii"], "tok/matrix": STRINGS["two_d"], "tok/big": STRINGS["long_70kb"]}
    prefix = ckptlib.save(values, tmp_path / "ckpt")
    specs = {name: ("string", np.shape(_expected_string_array(v))) for name, v in values.items()}
    restored = tf_restore_v1(prefix, specs)
    for name, value in values.items():
        assert_strings(restored[name], _expected_string_array(value), name)


# ---------------------------------------------------------------------------------------------
# TF1 Saver.restore into graph-mode variables
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", list(NUMERIC_DTYPES))
def test_saver_restore_graph_variables(tmp_path: Path, dtype: str) -> None:
    if dtype in NO_VARIABLE_KERNEL:
        pytest.skip(
            f'TF 2.21 cannot hold {dtype} in a variable: "No OpKernel was registered to support Op '
            f"'AssignVariableOp' ... dtype=DT_{dtype.upper()}\" (RestoreV2 itself reads it: see "
            "test_restore_v2_kernel_reads_every_dtype)"
        )
    values = {
        f"net/{dtype}/w": make_value(dtype, "3d"),
        f"net/{dtype}/s": make_value(dtype, "scalar"),
        f"net/{dtype}/v": make_value(dtype, "1d"),
        f"net/{dtype}/e": make_value(dtype, "empty_2x0"),
    }
    prefix = ckptlib.save(values, tmp_path / "model.ckpt")
    restored = tf_restore_v1(prefix, {name: (dtype, v.shape) for name, v in values.items()})
    for name, value in values.items():
        assert_bitwise(restored[name], value, name)


def test_checkpoint_restore_name_based_fallback(tmp_path: Path) -> None:
    """tf.train.Checkpoint.restore on a bundle without an object graph matches variables by name."""
    kernel = np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5
    step = np.int64(-(2**40))
    prefix = ckptlib.save({"dense/kernel": kernel, "global_step": step}, tmp_path / "ckpt")

    v_kernel = tf.Variable(tf.zeros([3, 4]), name="dense/kernel")
    v_step = tf.Variable(tf.constant(0, tf.int64), name="global_step")
    status = tf.train.Checkpoint(kernel=v_kernel, step=v_step).restore(prefix)
    status.assert_consumed()
    assert_bitwise(v_kernel.numpy(), kernel, "kernel")
    assert_bitwise(v_step.numpy(), np.asarray(step), "step")


# ---------------------------------------------------------------------------------------------
# sharded saves
# ---------------------------------------------------------------------------------------------


def test_sharded_save_read_by_tf(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    values: dict[str, object] = {
        "big/a": rng.standard_normal((64, 33)).astype(np.float32),
        "big/b": rng.standard_normal((50, 20)),
        "mid/c": rng.integers(-(2**60), 2**60, size=(40,), dtype=np.int64),
        "mid/d": values_1d("bfloat16"),
        "small/e": np.float16(-0.0),
        "small/f": np.array([True, False]),
        "small/g": np.empty((0, 5), dtype=np.int32),
        "small/h": np.array([1 + 2j, math.nan - 1j], dtype=np.complex64),
        "str/i": STRINGS["two_d"],
        "str/j": b"\x00shard\xff",
        "tiny/k": np.uint8(255),
        "str/l": STRINGS["large_among_small"],
        "str/m": STRINGS["lengths_over_64kib"],
        "tiny/n": np.arange(3, dtype=np.int8),
    }
    prefix = ckptlib.save(values, tmp_path / "run" / "sharded", num_shards=4)
    names = sorted(os.listdir(tmp_path / "run"))
    assert [n for n in names if ".data-" in n] == [f"sharded.data-{i:05d}-of-00004" for i in range(4)]

    reader = tf.train.load_checkpoint(prefix)
    for name, value in values.items():
        got = reader.get_tensor(name)
        if isinstance(value, bytes) or (isinstance(value, np.ndarray) and value.dtype == object):
            expected = _expected_string_array(value)
            if expected.shape == ():
                assert got == expected[()]
            else:
                assert_strings(got, expected, name)
        else:
            assert_bitwise(got, np.asarray(value), name)
    assert tf_list(prefix) == ckptlib.list_variables(prefix)

    specs = {}
    for name, value in values.items():
        array = _expected_string_array(value) if isinstance(value, bytes) or np.asarray(value).dtype == object else None
        if array is not None:
            specs[name] = ("string", array.shape)
        else:
            specs[name] = (tf.as_dtype(np.asarray(value).dtype).name, np.shape(value))
    restored = tf_restore_v1(prefix, specs)
    for name, value in values.items():
        if specs[name][0] == "string":
            assert_strings(restored[name], _expected_string_array(value), name)
        else:
            assert_bitwise(restored[name], np.asarray(value), name)


# ---------------------------------------------------------------------------------------------
# sliced (partitioned) tensors
# ---------------------------------------------------------------------------------------------

ROW_PARTITIONS = ["0,4:0,4", "4,3:0,4", "7,3:0,4"]  # fixed_size_partitioner(3) of [10, 4]
GRID_PARTITIONS = ["0,3:0,2", "0,3:2,3", "3,3:0,2", "3,3:2,3"]  # [6, 5] cut in both dimensions


def _sliced_value(dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.resize(values_1d(dtype), shape)


def _write_sliced(prefix: Path, name: str, value: np.ndarray, specs: list[str]) -> str:
    writer = ckptlib.BundleWriter(prefix)
    writer.add("unrelated/before", np.int32(1))
    for spec in reversed(specs):  # slices arrive in any order
        writer.add_slice(name, value.shape, spec, slice_of(value, spec))
    writer.add("unrelated/zz_after", np.float64(2.5))
    return writer.finish()


@pytest.mark.parametrize("layout", ["rows", "grid"])
@pytest.mark.parametrize("dtype", list(NUMERIC_DTYPES))
def test_sliced_tensor_assembled_by_get_tensor(tmp_path: Path, dtype: str, layout: str) -> None:
    shape, specs = ((10, 4), ROW_PARTITIONS) if layout == "rows" else ((6, 5), GRID_PARTITIONS)
    value = _sliced_value(dtype, shape)
    prefix = _write_sliced(tmp_path / "ckpt", "part/w", value, specs)

    reader = tf.train.load_checkpoint(prefix)
    assert reader.get_variable_to_shape_map()["part/w"] == list(shape)
    assert reader.get_variable_to_dtype_map()["part/w"] == tf.as_dtype(dtype)
    # the per-slice keys stay hidden, as in TF's own partitioned checkpoints
    assert (
        tf_list(prefix)
        == ckptlib.list_variables(prefix)
        == [
            ("part/w", list(shape)),
            ("unrelated/before", []),
            ("unrelated/zz_after", []),
        ]
    )
    if dtype not in TF_SLICE_ASSEMBLY:
        with pytest.raises(ValueError) as excinfo:
            reader.get_tensor("part/w")
        pytest.skip(
            f"TF 2.21 get_tensor cannot assemble a multi-slice {dtype} tensor: {excinfo.value} "
            "(tensor_bundle.cc GetSliceValue); per-slice reads: test_sliced_each_slice_via_restore_v2"
        )
    assert_bitwise(reader.get_tensor("part/w"), value, f"{dtype} {layout}")


@pytest.mark.parametrize("dtype", list(NUMERIC_DTYPES))
def test_sliced_each_slice_via_restore_v2(tmp_path: Path, dtype: str) -> None:
    """RestoreV2 with TF's own "shape slice" specs returns each stored slice exactly (any dtype)."""
    value = _sliced_value(dtype, (6, 5))
    prefix = _write_sliced(tmp_path / "ckpt", "grid", value, GRID_PARTITIONS)
    shape_and_slices = [f"6 5 {spec}" for spec in GRID_PARTITIONS]
    tensors = tf.raw_ops.RestoreV2(
        prefix=prefix,
        tensor_names=["grid"] * len(GRID_PARTITIONS),
        shape_and_slices=shape_and_slices,
        dtypes=[tf.as_dtype(dtype)] * len(GRID_PARTITIONS),
    )
    for spec, tensor in zip(GRID_PARTITIONS, tensors, strict=True):
        assert_bitwise(tensor.numpy(), slice_of(value, spec), spec)


@pytest.mark.parametrize(
    "dtype", ["float32", "float64", "float16", "bfloat16", "int32", "int64", "bool", "complex64", "uint8", "int8"]
)
def test_sliced_restore_into_tf1_partitioned_variable(tmp_path: Path, dtype: str) -> None:
    value = _sliced_value(dtype, (10, 4))
    prefix = _write_sliced(tmp_path / "ckpt", "scope/emb", value, ROW_PARTITIONS)

    graph = tf.Graph()
    with graph.as_default():
        partitioned = tf.compat.v1.get_variable(
            "scope/emb",
            shape=[10, 4],
            dtype=tf.as_dtype(dtype),
            initializer=tf.compat.v1.zeros_initializer(),
            partitioner=tf.compat.v1.fixed_size_partitioner(3),
        )
        pieces = list(partitioned)
        # TF's partitioner chose exactly the layout ckptlib wrote
        assert [p._save_slice_info.spec for p in pieces] == [f"10 4 {s}" for s in ROW_PARTITIONS]
        saver = tf.compat.v1.train.Saver()
        with session(graph) as sess:
            saver.restore(sess, prefix)
            got = sess.run(pieces)
    assert_bitwise(np.concatenate(got, axis=0), value, dtype)


def test_sharded_bundle_with_slices(tmp_path: Path) -> None:
    """Slices spread over several data files; TF assembles them and a TF1 partitioned variable
    restores from them. The index is also parsed with TF's own BundleEntryProto."""
    from tensorflow.core.protobuf import tensor_bundle_pb2 as tf_bundle

    emb = _sliced_value("float32", (10, 4))
    big = np.random.default_rng(5).standard_normal((30, 30))
    writer = ckptlib.BundleWriter(tmp_path / "ckpt", num_shards=3)
    writer.add("big", big)
    for spec in ROW_PARTITIONS:
        writer.add_slice("scope/emb", (10, 4), spec, slice_of(emb, spec))
    writer.add("bias", np.arange(4, dtype=np.float32))
    prefix = writer.finish()

    with open(f"{prefix}.index", "rb") as f:
        entries = dict(TableReader(BytesSource(f.read())).items())
    header = tf_bundle.BundleHeaderProto.FromString(entries.pop(b""))
    assert header.num_shards == 3
    parsed = {key: tf_bundle.BundleEntryProto.FromString(value) for key, value in entries.items()}
    full = parsed.pop(b"scope/emb")
    assert [[(e.start, e.length) for e in sl.extent] for sl in full.slices] == [
        [(0, 4), (0, 4)],
        [(4, 3), (0, 4)],
        [(7, 3), (0, 4)],
    ]
    assert len({entry.shard_id for entry in parsed.values()}) >= 2

    reader = tf.train.load_checkpoint(prefix)
    assert_bitwise(reader.get_tensor("scope/emb"), emb, "emb")
    assert_bitwise(reader.get_tensor("big"), big, "big")

    graph = tf.Graph()
    with graph.as_default():
        partitioned = tf.compat.v1.get_variable(
            "scope/emb", shape=[10, 4], partitioner=tf.compat.v1.fixed_size_partitioner(3)
        )
        bias = tf.compat.v1.get_variable("bias", shape=[4])
        saver = tf.compat.v1.train.Saver([*partitioned, bias])
        with session(graph) as sess:
            saver.restore(sess, prefix)
            pieces, got_bias = sess.run([list(partitioned), bias])
    assert_bitwise(np.concatenate(pieces), emb, "partitioned")
    assert_bitwise(got_bias, np.arange(4, dtype=np.float32), "bias")


@pytest.mark.parametrize("layout", ["rows", "grid"])
def test_sliced_restore_into_unpartitioned_variable(tmp_path: Path, layout: str) -> None:
    """A plain (full-shape) TF1 variable restores from a checkpoint partitioned in one or both dims."""
    shape, specs = ((10, 4), ROW_PARTITIONS) if layout == "rows" else ((6, 5), GRID_PARTITIONS)
    value = _sliced_value("float64", shape)
    prefix = _write_sliced(tmp_path / "ckpt", "whole", value, specs)
    restored = tf_restore_v1(prefix, {"whole": ("float64", shape), "unrelated/before": ("int32", ())})
    assert_bitwise(restored["whole"], value, layout)
    assert restored["unrelated/before"] == 1


# ---------------------------------------------------------------------------------------------
# many keys: several index blocks
# ---------------------------------------------------------------------------------------------

MANY = 6_500


def _many_values() -> dict[str, np.ndarray]:
    values: dict[str, np.ndarray] = {}
    for i in range(MANY):
        # long names push the index past 256 KiB: several data blocks in the .index table; the
        # hashed component makes block boundaries fall where TF shortens the index separator key
        digest = hashlib.sha1(str(i).encode()).hexdigest()[:10]
        name = f"tower_{i % 7}/{digest}/layer_{i:05d}/" + "block" * 16 + ("/kernel" if i % 2 else "/bias")
        values[name] = np.array([i, -i, i * 7919], dtype=np.int32) if i % 3 else np.float32(i) / 3
    return values


def test_many_keys_span_several_index_blocks(tmp_path: Path) -> None:
    values = _many_values()
    prefix = ckptlib.save(values, tmp_path / "many")
    with open(f"{prefix}.index", "rb") as f:
        assert TableReader(BytesSource(f.read())).num_blocks >= 3

    assert tf_list(prefix) == ckptlib.list_variables(prefix)
    assert len(tf_list(prefix)) == MANY
    reader = tf.train.load_checkpoint(prefix)
    for name, value in values.items():
        assert_bitwise(reader.get_tensor(name), np.asarray(value), name)


# ---------------------------------------------------------------------------------------------
# array layouts, empty bundles, more shards than tensors
# ---------------------------------------------------------------------------------------------


def test_array_layouts_are_saved_as_logical_values(tmp_path: Path) -> None:
    """Big-endian, Fortran-ordered, strided and reversed arrays: TF reads the logical values."""
    base = values_1d("float64")[:24].reshape(4, 6)
    inputs = {
        "big_endian_f8": base.astype(">f8"),
        "big_endian_i4": np.arange(-6, 6, dtype=">i4").reshape(3, 4),
        "big_endian_c16": values_1d("complex128").astype(">c16"),
        "fortran": np.asfortranarray(base),
        "transposed": base.T,
        "strided": base[::2, 1::2],
        "reversed": base[::-1, ::-1],
        "scalar_view": base[1:2, 2:3].reshape(()),
        "broadcast": np.broadcast_to(np.float32(-0.0), (3, 2)),
    }
    prefix = ckptlib.save(inputs, tmp_path / "ckpt")
    reader = tf.train.load_checkpoint(prefix)
    for name, value in inputs.items():
        expected = np.ascontiguousarray(value).astype(value.dtype.newbyteorder("="))
        assert_bitwise(reader.get_tensor(name), expected.reshape(value.shape), name)


def test_empty_bundle(tmp_path: Path) -> None:
    prefix = ckptlib.save({}, tmp_path / "empty")
    assert os.path.getsize(f"{prefix}.data-00000-of-00001") == 0
    assert tf.train.list_variables(prefix) == []
    assert tf.train.load_checkpoint(prefix).get_variable_to_shape_map() == {}


def test_more_shards_than_tensors(tmp_path: Path) -> None:
    prefix = ckptlib.save({"only": np.arange(5, dtype=np.int16)}, tmp_path / "ckpt", num_shards=4)
    sizes = sorted(os.path.getsize(f"{prefix}.data-{i:05d}-of-00004") for i in range(4))
    assert sizes == [0, 0, 0, 10]
    assert_bitwise(tf.train.load_checkpoint(prefix).get_tensor("only"), np.arange(5, dtype=np.int16))
    restored = tf_restore_v1(prefix, {"only": ("int16", (5,))})
    assert_bitwise(restored["only"], np.arange(5, dtype=np.int16))


def test_string_slices_via_restore_v2(tmp_path: Path) -> None:
    """TF cannot assemble multi-slice strings, but reads each stored string slice exactly."""
    value = np.array(
        [[f"r{r}c{c}\x00\xff".encode("latin-1") * (r + 1) for c in range(5)] for r in range(6)], dtype=object
    )
    prefix = _write_sliced(tmp_path / "ckpt", "vocab", value, GRID_PARTITIONS)
    assert tf_list(prefix) == ckptlib.list_variables(prefix)
    tensors = tf.raw_ops.RestoreV2(
        prefix=prefix,
        tensor_names=["vocab"] * len(GRID_PARTITIONS),
        shape_and_slices=[f"6 5 {spec}" for spec in GRID_PARTITIONS],
        dtypes=[tf.string] * len(GRID_PARTITIONS),
    )
    for spec, tensor in zip(GRID_PARTITIONS, tensors, strict=True):
        assert_strings(tensor.numpy(), slice_of(value, spec), spec)


# ---------------------------------------------------------------------------------------------
# merged bundles (ckptlib.merge_bundles vs tf.raw_ops.MergeV2Checkpoints)
# ---------------------------------------------------------------------------------------------

_MERGE_FULL = np.arange(40, dtype=np.float32).reshape(10, 4) - 19.5


def _merge_inputs(root: Path, partitioned: bool) -> list[str]:
    """Three single-shard bundles as TF1's sharded Saver writes them (one per device)."""
    writer = ckptlib.BundleWriter(root / "part-00000-of-00003")
    writer.add("a", np.arange(3, dtype=np.float32))
    writer.add("z", np.int64(5))
    first = writer.finish()
    writer = ckptlib.BundleWriter(root / "part-00001-of-00003")
    writer.add("b", np.arange(4, dtype=np.int32))
    if partitioned:
        writer.add_slice("scope/part", (10, 4), "0,4:0,4", _MERGE_FULL[:4])
    second = writer.finish()
    writer = ckptlib.BundleWriter(root / "part-00002-of-00003")
    if partitioned:
        writer.add_slice("scope/part", (10, 4), "4,6:0,4", _MERGE_FULL[4:])
    writer.add("c", b"xy\x00")
    third = writer.finish()
    return [first, second, third]


def test_merged_bundle_read_by_tf(tmp_path: Path) -> None:
    merged = ckptlib.merge_bundles(_merge_inputs(tmp_path / "in", partitioned=True), tmp_path / "out" / "ckpt")
    reader = tf.train.load_checkpoint(merged)
    assert_bitwise(reader.get_tensor("scope/part"), _MERGE_FULL, "part")
    assert_bitwise(reader.get_tensor("b"), np.arange(4, dtype=np.int32), "b")
    assert reader.get_tensor("c") == b"xy\x00"
    assert tf_list(merged) == ckptlib.list_variables(merged)
    graph = tf.Graph()
    with graph.as_default():
        partitioned = tf.compat.v1.get_variable(
            "scope/part", shape=[10, 4], partitioner=tf.compat.v1.fixed_size_partitioner(2)
        )
        saver = tf.compat.v1.train.Saver(list(partitioned))  # re-partitioned on restore: 5 + 5 rows
        with session(graph) as sess:
            saver.restore(sess, merged)
            got = sess.run(list(partitioned))
    assert_bitwise(np.concatenate(got), _MERGE_FULL, "re-partitioned restore")


@pytest.mark.parametrize("partitioned", [False, True], ids=["plain", "with_partitioned_tensor"])
def test_merge_bundles_matches_merge_v2_checkpoints_bytes(tmp_path: Path, partitioned: bool) -> None:
    """ckptlib's merge renames the same files to the same names and writes the same index as TF's
    MergeV2Checkpoints. TF also remaps the shard_id of a partitioned tensor's full entry (it
    registers that input's data file like any other new key; FORMAT.md section 8)."""
    tf_inputs = _merge_inputs(tmp_path / "tf_in", partitioned)
    ck_inputs = _merge_inputs(tmp_path / "ck_in", partitioned)
    tf.raw_ops.MergeV2Checkpoints(
        checkpoint_prefixes=tf_inputs, destination_prefix=str(tmp_path / "tf" / "ckpt"), delete_old_dirs=False
    )
    ckptlib.merge_bundles(ck_inputs, tmp_path / "ck" / "ckpt")
    visible = sorted(name for name in os.listdir(tmp_path / "ck") if not name.startswith("."))  # (the save lock)
    assert visible == sorted(os.listdir(tmp_path / "tf"))
    assert _index_entries(tmp_path / "ck" / "ckpt") == _index_entries(tmp_path / "tf" / "ckpt")
    for name in sorted(os.listdir(tmp_path / "tf")):
        assert (tmp_path / "ck" / name).read_bytes() == (tmp_path / "tf" / name).read_bytes(), name


def _index_entries(prefix: Path) -> dict[bytes, str]:
    """The index as readable text, parsed with TF's own protos (for failure messages)."""
    from tensorflow.core.protobuf import tensor_bundle_pb2 as tf_bundle

    out = {}
    for key, value in TableReader(BytesSource(Path(f"{prefix}.index").read_bytes())).items():
        proto = tf_bundle.BundleHeaderProto if key == b"" else tf_bundle.BundleEntryProto
        out[key] = " ".join(str(proto.FromString(value)).split())
    return out


# ---------------------------------------------------------------------------------------------
# state file
# ---------------------------------------------------------------------------------------------


def test_save_alone_writes_no_state_file(tmp_path: Path) -> None:
    prefix = ckptlib.save({"x": np.arange(4.0)}, tmp_path / "ckpt-1")
    assert not (tmp_path / "checkpoint").exists()
    assert tf.train.latest_checkpoint(str(tmp_path)) is None
    assert_bitwise(tf.train.load_checkpoint(prefix).get_tensor("x"), np.arange(4.0))


def test_tf_follows_state_file_written_by_ckptlib(tmp_path: Path) -> None:
    first = ckptlib.save({"x": np.float32(1)}, tmp_path / "ckpt-1")
    second = ckptlib.save({"x": np.float32(2)}, tmp_path / "ckpt-2")
    state = CheckpointState(
        model_checkpoint_path="ckpt-2",
        all_model_checkpoint_paths=("ckpt-1", "ckpt-2"),
        all_model_checkpoint_timestamps=(1700000000.25, 1700000100.5),
        last_preserved_timestamp=1699999999.125,
    )
    write_state_file(str(tmp_path / "checkpoint"), state)

    assert tf.train.latest_checkpoint(str(tmp_path)) == second
    tf_state = tf.train.get_checkpoint_state(str(tmp_path))
    assert list(tf_state.all_model_checkpoint_paths) == [first, second]
    assert list(tf_state.all_model_checkpoint_timestamps) == [1700000000.25, 1700000100.5]
    assert tf_state.last_preserved_timestamp == 1699999999.125
    # a directory resolves through the state file to the newest checkpoint
    assert tf.train.load_checkpoint(str(tmp_path)).get_tensor("x") == 2


# ---------------------------------------------------------------------------------------------
# the reverse direction: TF's SaveV2 and ckptlib write the same bytes
# ---------------------------------------------------------------------------------------------


def _tf_save_v2(prefix: Path, items: list[tuple[str, str, object]]) -> None:
    """``SaveV2`` of ``(name, shape_and_slice, value)`` in this order."""
    tensors = [tf.constant(v) if not isinstance(v, tf.Tensor) else v for _, _, v in items]
    tf.raw_ops.SaveV2(
        prefix=str(prefix),
        tensor_names=[n for n, _, _ in items],
        shape_and_slices=[s for _, s, _ in items],
        tensors=tensors,
    )


def _ckpt_save(prefix: Path, items: list[tuple[str, str, object]]) -> None:
    writer = ckptlib.BundleWriter(prefix)
    for name, shape_and_slice, value in items:
        if shape_and_slice:
            *dims, spec = shape_and_slice.split(" ")
            writer.add_slice(name, [int(d) for d in dims], spec, value)
        else:
            writer.add(name, value)
    writer.finish()


def _assert_same_files(tf_prefix: Path, ck_prefix: Path) -> None:
    for suffix in (".index", ".data-00000-of-00001"):
        tf_bytes = Path(f"{tf_prefix}{suffix}").read_bytes()
        ck_bytes = Path(f"{ck_prefix}{suffix}").read_bytes()
        assert ck_bytes == tf_bytes, f"{suffix} differs: ckptlib {len(ck_bytes)} bytes, TF {len(tf_bytes)} bytes"


def test_save_v2_and_ckptlib_write_identical_files_mixed(tmp_path: Path) -> None:
    full = np.arange(40, dtype=np.float32).reshape(10, 4) * -0.5
    items: list[tuple[str, str, object]] = [
        ("zeta/kernel", "", values_1d("float32").reshape(4, -1)),
        ("alpha", "", np.float64(-0.0)),
        ("strs", "", np.array([[b"", b"\x00\xff"], ["é".encode(), b"x" * 200]], dtype=object)),
        ("step", "", np.int64(2**40 + 3)),
        ("empty", "", np.empty((0, 3), dtype=np.float32)),
        ("empty_str", "", np.empty((0,), dtype=object)),
        ("half", "", values_1d("float16")),
        ("bf", "", values_1d("bfloat16")),
        ("mask", "", np.array([True, False, True])),
        ("cplx", "", values_1d("complex128")),
        ("u64", "", values_1d("uint64")),
        ("scope/part", "10 4 7,3:0,4", full[7:10]),
        ("scope/part", "10 4 0,4:0,4", full[0:4]),
        ("scope/part", "10 4 4,3:0,4", full[4:7]),
        ("scalar_str", "", b"hello\x00"),
        ("nested/\u00fcml\u00e4ut", "", np.int8(-128)),
        ("cols", "6 4 3,3:-", full[:6][3:6]),  # "-" (full) extents: an empty Extent, key 80 7f
        ("cols", "6 4 0,3:-", full[:6][0:3]),
        ("tall", "10000 1 9000,1000:0,1", np.arange(1000, dtype=np.int32).reshape(-1, 1)),  # 2-byte starts
        ("tall", "10000 1 0,9000:0,1", np.arange(9000, dtype=np.int32).reshape(-1, 1)),
        ("f8", "", values_1d("float8_e4m3fn")),
        ("i4", "", values_1d("int4")),
        ("u4", "", values_1d("uint4")),
    ]
    _tf_save_v2(tmp_path / "tf" / "ckpt", items)
    _ckpt_save(tmp_path / "ck" / "ckpt", items)
    _assert_same_files(tmp_path / "tf" / "ckpt", tmp_path / "ck" / "ckpt")


def test_save_v2_and_ckptlib_write_identical_files_many_keys(tmp_path: Path) -> None:
    values = list(_many_values().items())[:6_000]
    items = [(name, "", value) for name, value in values]
    _tf_save_v2(tmp_path / "tf" / "ckpt", items)
    _ckpt_save(tmp_path / "ck" / "ckpt", items)
    with open(tmp_path / "tf" / "ckpt.index", "rb") as f:
        assert TableReader(BytesSource(f.read())).num_blocks >= 2
    _assert_same_files(tmp_path / "tf" / "ckpt", tmp_path / "ck" / "ckpt")


def test_save_v2_and_ckptlib_write_identical_files_odd_keys(tmp_path: Path) -> None:
    """Names that are prefixes of each other, 4-byte UTF-8, and one name over 2 x 256 KiB (the
    table flushes the current block before such an entry)."""
    items: list[tuple[str, str, object]] = [
        ("ab", "", np.int32(1)),
        ("a", "", np.int32(2)),
        ("a/b", "", np.int32(3)),
        ("a.b", "", np.int32(4)),
        ("n" * 600_000, "", np.float32(5)),
        ("\U0010ffff", "", np.int32(6)),
        ("m" * 300_000, "", np.float32(7)),
        ("b~", "", np.int32(8)),
    ]
    _tf_save_v2(tmp_path / "tf" / "ckpt", items)
    _ckpt_save(tmp_path / "ck" / "ckpt", items)
    _assert_same_files(tmp_path / "tf" / "ckpt", tmp_path / "ck" / "ckpt")
    reader = tf.train.load_checkpoint(str(tmp_path / "ck" / "ckpt"))
    for name, _, value in items:
        assert_bitwise(reader.get_tensor(name), np.asarray(value), name[:20])


# ---------------------------------------------------------------------------------------------
# training-state trees: the structure record is one more string tensor TensorFlow reads
# ---------------------------------------------------------------------------------------------


def test_tensorflow_reads_a_tree_checkpoint_tensor_for_tensor(tmp_path: Path) -> None:
    state = {
        "model": {"dense": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3), "bias": np.zeros(3)}},
        "optimizer": {"state": {0: {"step": 3, "m": np.ones(3, ml_dtypes.bfloat16)}}, "betas": (0.9, 0.999)},
        "note": "héllo",
        "none": None,
    }
    prefix = ckptlib.save(state, tmp_path / "tree")
    with ckptlib.load_checkpoint(prefix) as reader:
        ours = reader.read_all()
    tf_reader = tf.train.load_checkpoint(prefix)
    assert sorted(tf_reader.get_variable_to_shape_map()) == sorted(ours)
    for name, value in ours.items():
        theirs = tf_reader.get_tensor(name)
        if value.dtype == object:
            assert np.asarray(theirs, dtype=object).tolist() == value.tolist(), name
        else:
            assert np.asarray(theirs).dtype == value.dtype and np.asarray(theirs).tobytes() == value.tobytes(), name
    assert tf_reader.get_tensor("optimizer/state/0/step") == 3
    assert tf_reader.get_tensor("note") == "héllo".encode()
    # and TF1's Saver restores the variables it knows by name, ignoring the record
    with tf.Graph().as_default():
        kernel = tf.compat.v1.get_variable("model/dense/kernel", shape=(2, 3), dtype=tf.float32)
        step = tf.compat.v1.get_variable("optimizer/state/0/step", shape=(), dtype=tf.int64)
        saver = tf.compat.v1.train.Saver([kernel, step])
        with tf.compat.v1.Session() as session:
            saver.restore(session, prefix)
            assert session.run(kernel).tolist() == state["model"]["dense"]["kernel"].tolist()
            assert session.run(step) == 3


def test_restore_assigns_tf_and_keras_variables(tmp_path: Path) -> None:
    import keras

    prefix = ckptlib.save({"v": np.arange(4, dtype=np.float32), "k": np.ones((2, 2), np.float32)}, tmp_path / "m")
    variable = tf.Variable(np.zeros(4, np.float32))
    keras_variable = keras.Variable(np.zeros((2, 2), np.float32))
    report = ckptlib.restore(prefix, into={"v": variable, "k": keras_variable})
    assert report.tree["v"] is variable and variable.numpy().tolist() == [0, 1, 2, 3]
    assert np.asarray(keras_variable).tolist() == [[1, 1], [1, 1]]
    wrong = tf.Variable(np.zeros(4, np.float64))
    with pytest.raises(ckptlib.DtypeMismatchError, match="v: target dtype float64, checkpoint has float32"):
        ckptlib.restore(prefix, into={"v": wrong, "k": keras_variable})
    assert not wrong.numpy().any()
    # TF tensors and variables are saved as they are
    again = ckptlib.save({"t": tf.constant([1.5, 2.5], dtype=tf.bfloat16), "v": variable}, tmp_path / "n")
    back = ckptlib.restore(again)
    assert back["t"].dtype == ml_dtypes.bfloat16 and back["t"].astype(np.float32).tolist() == [1.5, 2.5]
    assert back["v"].tolist() == [0, 1, 2, 3]


def test_a_variable_of_unknown_shape_is_a_mismatch_not_a_crash(tmp_path: Path) -> None:
    prefix = ckptlib.save({"v": np.arange(3, dtype=np.float32), "w": np.ones(2, np.float32)}, tmp_path / "m")
    w = tf.Variable(np.zeros(2, np.float32))
    for shape in (tf.TensorShape(None), tf.TensorShape([None])):
        v = tf.Variable(np.zeros(3, np.float32), shape=shape)
        with pytest.raises(ckptlib.ShapeMismatchError, match=r"v: target shape \[-1\], checkpoint has \[3\]"):
            ckptlib.restore(prefix, into={"v": v, "w": w})
        assert not w.numpy().any()
