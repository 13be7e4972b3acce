"""Write the golden checkpoints under ``tests/data/golden/`` with real TensorFlow.

Rerun (needs TensorFlow; tested with tensorflow-cpu 2.21, numpy, ml_dtypes)::

    cd /work/main && TF_CPP_MIN_LOG_LEVEL=3 /work/venv-dev/bin/python tests/data/make_golden.py

Every case directory is deleted and rewritten; the output is deterministic (fixed seeds and
constant initial values), so a rerun with the same TensorFlow gives the same bytes. Pass case
names as arguments to regenerate only those. ``tests/test_golden.py`` reads the result with
ckptlib and does not import TensorFlow.

Each ``golden/<case>/`` holds TensorFlow's files (prefix ``ckpt`` or ``ckpt-N``; the
``checkpoint`` state file where TensorFlow wrote one; ``.meta`` graphs are not written) and:

* ``expected.json`` (``expected.json.gz`` for the 6,000-key case): the manifest, with
  ``prefix`` (relative to the case directory), ``format`` (``V2``/``V1``), and ``tensors``:
  for each name TensorFlow lists (``get_variable_to_shape_map``), TensorFlow's dtype name and
  shape as ``tf.train.load_checkpoint(prefix)`` reports them, and the value
  ``get_tensor(name)`` returned: numeric tensors as ``[offset, nbytes]`` into the ``raw``
  array of ``expected.npz`` (the tensor's raw little-endian element bytes, C order: bfloat16,
  float8, int4... and the quantized types are just their bits), strings as a list of base64
  texts in C order under ``b64``.
* for ``tf.raw_ops.SaveV2`` cases, ``savev2``: the exact ordered arguments given to the op,
  one item per tensor, ``name``, ``shape_and_slice``, ``dtype`` (TF name), ``shape`` and the
  value (``[offset, nbytes]`` into the ``given`` array of ``expected.npz``, or ``b64``), so a
  test can rebuild the same save with ``ckptlib.BundleWriter`` and compare bytes.

``expected.npz`` holds only uint8 arrays (no pickle).

Cases: format_vector (FORMAT.md's ``v``/``s`` vector), dtypes (every saveable dtype, one
SaveV2 call), strings, scalars_empty, sliced_savev2 (explicit shape_and_slices), many_keys
(6,144 keys, index of >= 3 blocks), tf1_partitioned, tf1_sharded (2 CPU devices, 2 shards),
v1_format (``SaverDef.V1``), v1_sharded (V1, 2 devices: prefix ``model.ckpt-?????-of-00002``
as TF records it), tf2_keras (Keras 3 model + Keras Adam), tf2_slots (tf.Module Dense layers +
``tf.compat.v1.train.AdamOptimizer`` in eager mode: ``.OPTIMIZER_SLOT`` keys; Keras 3
optimizers do not create slot variables), tf2_sharding_policy (TF2 ``MaxShardSizePolicy``:
several data files and sliced entries for unpartitioned variables).

For V1 files, TensorFlow's Python ``CheckpointReader.get_tensor`` refuses half, complex and
partitioned tensors ("Data type not supported", "Sliced checkpoints are not supported"); their
expected values come from the ``RestoreV2`` op (which falls back to the V1 reader) instead.

dtypes that TensorFlow 2.21 refused in SaveV2: none. All of float8_e5m2, float8_e4m3fn,
float8_e4m3fnuz, float8_e4m3b11fnuz, float8_e5m2fnuz, int4, uint4, int2, uint2,
float4_e2m1fn, qint8, quint8, qint16, quint16 and qint32 were accepted and read back.
(If a future TensorFlow refuses one, the script skips it and prints it under "refused".)
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import shutil
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import ml_dtypes
import numpy as np
import tensorflow as tf

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "golden")
REFUSED: list[str] = []

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()],
)


# ----------------------------------------------------------------------------------------
# values


def bits(dtype, raw, base):
    """An array of ``dtype`` with the given raw bit patterns (``base``: same-size uint type)."""
    return np.array(raw, dtype=base).view(dtype)


def float_specials(dtype):
    """NaNs (with payloads and sign), infinities, signed zeros, denormals, extremes."""
    info = np.finfo(dtype)
    vals = np.array(
        [
            0.0,
            -0.0,
            1.0,
            -1.5,
            np.inf,
            -np.inf,
            np.nan,
            info.max,
            info.min,
            info.tiny,
            info.smallest_subnormal,
            -info.smallest_subnormal,
            info.smallest_subnormal * 3,
            info.eps,
            np.pi,
            -np.e,
        ],
        dtype=dtype,
    )
    uint = {2: np.uint16, 4: np.uint32, 8: np.uint64}[np.dtype(dtype).itemsize]
    width = np.dtype(dtype).itemsize * 8
    # quiet NaN with payload, negative NaN, signalling NaN
    nans = [
        (int(vals[6:7].view(uint)[0]) | 1),
        (int(vals[6:7].view(uint)[0]) | (1 << (width - 1))),
        ((int(vals[4:5].view(uint)[0])) | 1),
    ]
    return np.concatenate([vals, bits(dtype, nans, uint)])


def half_values():
    return float_specials(np.float16)


def bfloat16_values():
    raw = [
        0x0000,
        0x8000,
        0x3F80,
        0xBFC0,
        0x7F80,
        0xFF80,
        0x7FC0,
        0x7FC1,
        0xFFC0,
        0x7F81,
        0x7F7F,
        0xFF7F,
        0x0080,
        0x0001,
        0x8001,
        0x007F,
        0x4049,
    ]
    return bits(ml_dtypes.bfloat16, raw, np.uint16)


def complex_values(dtype):
    f = np.float32 if dtype == np.complex64 else np.float64
    parts = float_specials(f)
    re = parts
    im = np.roll(parts, 5)
    out = np.empty(len(parts), dtype=dtype)
    out.view(f)[0::2] = re
    out.view(f)[1::2] = im
    return out


def int_values(dtype):
    info = np.iinfo(dtype)
    vals = [0, 1, info.max, info.min, info.max - 1, info.min + 1, 42 % (info.max + 1)]
    if info.min < 0:
        vals += [-1, -42]
    return np.array(vals, dtype=dtype)


SUB_BYTE = {
    "int4": (ml_dtypes.int4, range(-8, 8)),
    "uint4": (ml_dtypes.uint4, range(0, 16)),
    "int2": (ml_dtypes.int2, range(-2, 2)),
    "uint2": (ml_dtypes.uint2, range(0, 4)),
}
FLOAT8 = ["float8_e5m2", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e4m3b11fnuz", "float8_e5m2fnuz"]
QUANTIZED = {"qint8": np.int8, "quint8": np.uint8, "qint16": np.int16, "quint16": np.uint16, "qint32": np.int32}


def tf_tensor(value, dtype_name=None):
    """A TF tensor with exactly ``value``'s bits (quantized types via an explicit dtype)."""
    if dtype_name in QUANTIZED:
        return tf.constant(value, dtype=getattr(tf.dtypes, dtype_name))
    if isinstance(value, np.ndarray) and value.dtype == object:
        return tf.constant(value.astype(object), dtype=tf.string)
    return tf.constant(value)


# ----------------------------------------------------------------------------------------
# recording


class Blob:
    """Concatenated raw bytes; entries refer to it by [offset, nbytes]."""

    def __init__(self):
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, array: np.ndarray) -> list[int]:
        raw = np.ascontiguousarray(array).reshape(-1).view(np.uint8).tobytes()
        offset = self.size
        self.parts.append(raw)
        self.size += len(raw)
        return [offset, len(raw)]

    def array(self) -> np.ndarray:
        return np.frombuffer(b"".join(self.parts), dtype=np.uint8)


def b64_list(array) -> list[str]:
    flat = np.asarray(array, dtype=object).reshape(-1)
    return [base64.b64encode(bytes(x)).decode("ascii") for x in flat]


def record(
    case: str,
    prefix: str,
    *,
    fmt: str = "V2",
    savev2: list[dict] | None = None,
    description: str = "",
    compress: bool = False,
) -> None:
    """Read the checkpoint back with TensorFlow and write expected.json / expected.npz."""
    case_dir = os.path.join(GOLDEN, case)
    reader = tf.train.load_checkpoint(os.path.join(case_dir, prefix))
    shapes = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
    raw = Blob()
    tensors = {}
    for name in sorted(shapes):
        dtype = dtypes[name].name
        value = (
            read_tensor(reader, os.path.join(case_dir, prefix), name, dtypes[name])
            if fmt == "V1"
            else reader.get_tensor(name)
        )
        item = {"dtype": dtype, "shape": [int(d) for d in shapes[name]]}
        if dtype == "string":
            value = np.asarray(value, dtype=object)
            assert list(value.shape) == item["shape"], (name, value.shape)
            item["b64"] = b64_list(value)
        else:
            value = np.asarray(value)
            assert list(value.shape) == item["shape"], (name, value.shape)
            assert value.dtype.itemsize == expected_itemsize(dtype), (name, value.dtype, dtype)
            item["raw"] = raw.add(value)
        tensors[name] = item
    manifest = {
        "case": case,
        "description": description,
        "tensorflow": tf.__version__,
        "prefix": prefix,
        "format": fmt,
        "tensors": tensors,
    }
    arrays = {"raw": raw.array()}
    if savev2 is not None:
        given = Blob()
        items = []
        for spec in savev2:
            value = spec["value"]
            item = {k: spec[k] for k in ("name", "shape_and_slice", "dtype")}
            item["shape"] = list(value.shape)
            if not spec["shape_and_slice"]:
                pass  # a whole tensor: the value given is the value read back (checked below)
            elif spec["dtype"] == "string":
                item["b64"] = b64_list(value)
            else:
                item["raw"] = given.add(value)
            items.append(item)
        manifest["savev2"] = items
        arrays["given"] = given.array()
    text = dump_manifest(manifest)
    if compress:
        with gzip.GzipFile(os.path.join(case_dir, "expected.json.gz"), "wb", mtime=0) as f:
            f.write(text.encode("utf-8"))
    else:
        with open(os.path.join(case_dir, "expected.json"), "w", encoding="utf-8") as f:
            f.write(text)
    # np.savez stores zip timestamps from the clock; write it by hand for stable bytes
    write_npz(os.path.join(case_dir, "expected.npz"), arrays)


def dump_manifest(manifest: dict) -> str:
    """JSON with one line per tensor / per SaveV2 item."""
    lines = ["{"]
    keys = list(manifest)
    for i, key in enumerate(keys):
        comma = "," if i < len(keys) - 1 else ""
        value = manifest[key]
        if key == "tensors":
            inner = [f"  {json.dumps(n, ensure_ascii=False)}: {json.dumps(v)}" for n, v in value.items()]
            lines.append(f' "{key}": {{\n' + ",\n".join(inner) + f"\n }}{comma}")
        elif key == "savev2":
            inner = [f"  {json.dumps(v, ensure_ascii=False)}" for v in value]
            lines.append(f' "{key}": [\n' + ",\n".join(inner) + f"\n ]{comma}")
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}{comma}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def read_tensor(reader, prefix: str, name: str, dtype):
    """TensorFlow's value of ``name``. The Python CheckpointReader refuses some V1 tensors
    (half, complex, partitioned: "Data type not supported", "Sliced checkpoints are not
    supported"); those are read with the RestoreV2 op, which falls back to the V1 reader."""
    try:
        return reader.get_tensor(name)
    except (tf.errors.UnimplementedError, NotImplementedError):
        return tf.raw_ops.RestoreV2(prefix=prefix, tensor_names=[name], shape_and_slices=[""], dtypes=[dtype])[
            0
        ].numpy()


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    import io
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, array in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, array, allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())


def expected_itemsize(dtype_name: str) -> int:
    return tf.dtypes.as_dtype(dtype_name).size


def fresh(case: str) -> str:
    case_dir = os.path.join(GOLDEN, case)
    shutil.rmtree(case_dir, ignore_errors=True)
    os.makedirs(case_dir)
    return case_dir


def tf_dtype_name(value: np.ndarray, dtype_name: str | None) -> str:
    if dtype_name is not None:
        return dtype_name
    if value.dtype == object:
        return "string"
    return tf.dtypes.as_dtype(value.dtype).name


def savev2_case(case: str, specs: list[tuple], description: str, compress: bool = False) -> None:
    """specs: (name, shape_and_slice, numpy value, TF dtype name or None)."""
    case_dir = fresh(case)
    prefix = os.path.join(case_dir, "ckpt")
    kept = []
    for name, sas, value, dtype_name in specs:
        kept.append({"name": name, "shape_and_slice": sas, "value": value, "dtype": tf_dtype_name(value, dtype_name)})
    tf.raw_ops.SaveV2(
        prefix=prefix,
        tensor_names=[s["name"] for s in kept],
        shape_and_slices=[s["shape_and_slice"] for s in kept],
        tensors=[tf_tensor(s["value"], s["dtype"] if s["dtype"] in QUANTIZED else None) for s in kept],
    )
    record(case, "ckpt", savev2=kept, description=description, compress=compress)
    # sanity: every whole tensor reads back with exactly the bits that were given
    reader = tf.train.load_checkpoint(prefix)
    for s in kept:
        if s["shape_and_slice"]:
            continue
        back = reader.get_tensor(s["name"])
        if s["dtype"] == "string":
            assert list(np.asarray(back, dtype=object).reshape(-1)) == list(s["value"].reshape(-1)), s["name"]
        else:
            a = np.ascontiguousarray(np.asarray(back)).view(np.uint8).tobytes()
            b = np.ascontiguousarray(s["value"]).view(np.uint8).tobytes()
            assert a == b, (s["name"], a, b)


def try_dtype(name: str, value: np.ndarray, dtype_name: str | None = None) -> bool:
    """Whether SaveV2 accepts this dtype (tried in a scratch directory)."""
    scratch = os.path.join(GOLDEN, "_scratch")
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        tf.raw_ops.SaveV2(
            prefix=os.path.join(scratch, "x"),
            tensor_names=[name],
            shape_and_slices=[""],
            tensors=[tf_tensor(value, dtype_name)],
        )
        tf.train.load_checkpoint(os.path.join(scratch, "x")).get_tensor(name)
        return True
    except Exception as e:  # any refusal means: skip this dtype
        REFUSED.append(f"{dtype_name or value.dtype}: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
        return False
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# ----------------------------------------------------------------------------------------
# cases


def case_format_vector():
    savev2_case(
        "format_vector",
        [("v", "", np.array(1.0, dtype=np.float32), None), ("s", "", np.array([b"ab"], dtype=object), None)],
        "FORMAT.md golden vector: SaveV2(['v','s'], [1.0 float32 scalar, ['ab']])",
    )


def case_dtypes():
    specs = [
        ("float32", "", float_specials(np.float32), None),
        ("float16", "", half_values(), None),
        ("bfloat16", "", bfloat16_values(), None),
        ("float64", "", float_specials(np.float64), None),
        ("complex64", "", complex_values(np.complex64), None),
        ("complex128", "", complex_values(np.complex128), None),
        ("bool", "", np.array([[True, False, True], [False, False, True]]), None),
    ]
    for t in [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]:
        specs.append((np.dtype(t).name, "", int_values(t), None))
    for name in FLOAT8:  # every one of the 256 bit patterns
        specs.append((name, "", np.arange(256, dtype=np.uint8).view(getattr(ml_dtypes, name)).reshape(16, 16), None))
    for name, (t, values) in SUB_BYTE.items():
        specs.append((name, "", np.array(list(values), dtype=t), None))
    specs.append(("float4_e2m1fn", "", np.arange(16, dtype=np.uint8).view(ml_dtypes.float4_e2m1fn), None))
    for name, base in QUANTIZED.items():
        specs.append((name, "", int_values(base), name))
    specs.append(("float32_3d", "", np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 11.5, None))
    specs.append(("int64_2d", "", (np.arange(6, dtype=np.int64) * -(2**40)).reshape(3, 2), None))
    specs.append(("half_2d", "", half_values()[:12].reshape(3, 4), None))
    # deliberately not in key order: the data file follows the order given
    specs = specs[::-1][::2] + specs[::-1][1::2]
    kept = []
    for spec in specs:
        if try_dtype(spec[0], spec[2], spec[3]):
            kept.append(spec)
    savev2_case("dtypes", kept, "every saveable dtype, one SaveV2 call (mixed dtypes, not in key order)")


def case_strings():
    rng = np.random.RandomState(7)
    s70k = bytes(rng.randint(0, 256, size=70000, dtype=np.uint8))
    long300 = ("x" * 100 + "y" * 100 + "z" * 100).encode()
    specs = [
        ("scalar", "", np.array(b"hello, world", dtype=object), None),
        ("empty_string", "", np.array([b""], dtype=object), None),
        (
            "binary",
            "",
            np.array([b"\x00", b"a\x00b", b"\xff\xfe\x00\xff", b"", b"\x00" * 5, bytes(range(256))], dtype=object),
            None,
        ),
        (
            "utf8",
            "",
            np.array(["héllo".encode(), "日本語".encode(), "🙂 emoji".encode(), "Ωmega".encode()], dtype=object),
            None,
        ),
        ("long_300", "", np.array([long300], dtype=object), None),
        ("long_70k", "", np.array(s70k, dtype=object), None),
        ("length_edges", "", np.array([b"a" * n for n in (0, 1, 127, 128, 16383, 16384)], dtype=object), None),
        ("matrix", "", np.array([[b"a", b"bb", b"ccc"], [b"", b"\x00\x01", "é".encode()]], dtype=object), None),
        ("empty_tensor", "", np.empty((0,), dtype=object), None),
        ("empty_matrix", "", np.empty((3, 0), dtype=object), None),
        ("ünïcode/名前", "", np.array([b"non-ASCII tensor name"], dtype=object), None),
    ]
    savev2_case("strings", specs, "DT_STRING tensors: empty, binary, UTF-8, long, 2-D, scalar, 0-element")


def case_scalars_empty():
    specs = []
    for t in [
        "float32",
        "float64",
        "float16",
        "bfloat16",
        "int8",
        "int32",
        "int64",
        "uint16",
        "bool",
        "complex64",
        "float8_e4m3fn",
        "int4",
    ]:
        npt = getattr(ml_dtypes, t, None) if t in ("bfloat16", "float8_e4m3fn", "int4") else np.dtype(t)
        scalar = np.array(3 if t != "bool" else True).astype(npt)
        if t in ("float32", "float64", "float16"):
            scalar = np.array(-0.0, dtype=npt)
        specs.append((f"{t}/scalar", "", scalar, None))
        specs.append((f"{t}/empty_0", "", np.zeros((0,), dtype=npt), None))
        specs.append((f"{t}/empty_3x0", "", np.zeros((3, 0), dtype=npt), None))
    specs.append(("qint8/scalar", "", np.array(-7, dtype=np.int8), "qint8"))
    specs.append(("qint32/empty_0", "", np.zeros((0,), dtype=np.int32), "qint32"))
    specs.append(("float32/empty_0x5x2", "", np.zeros((0, 5, 2), dtype=np.float32), None))
    savev2_case("scalars_empty", specs, "scalars and zero-size tensors ([0], [3,0], [0,5,2]) of numeric types")


def case_sliced_savev2():
    w = np.arange(30, dtype=np.float32).reshape(10, 3) * 0.25
    part = np.arange(7, dtype=np.int64) * 1000 - 3000
    b16 = bfloat16_values()[:8].reshape(4, 2)
    cube = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    full = np.arange(4, dtype=np.float64).reshape(2, 2)
    specs = [
        ("w", "10 3 5,5:-", w[5:], None),  # second slice first
        ("plain", "", np.array([1.5, 2.5], dtype=np.float32), None),
        ("w", "10 3 0,5:-", w[:5], None),
        ("part", "7 0,3", part[0:3], None),
        ("part", "7 3,2", part[3:5], None),
        ("part", "7 5,2", part[5:7], None),
        ("b16", "4 2 -:0,1", b16[:, 0:1], None),
        ("b16", "4 2 -:1,1", b16[:, 1:2], None),
        ("cube", "2 3 4 0,1:-:0,2", cube[0:1, :, 0:2], None),
        ("cube", "2 3 4 1,1:-:0,2", cube[1:2, :, 0:2], None),
        ("cube", "2 3 4 -:-:2,2", cube[:, :, 2:4], None),
        ("full_slice", "2 2 -:-", full, None),  # a slice that is the whole tensor: stored plainly
    ]
    savev2_case("sliced_savev2", specs, "SaveV2 with explicit shape_and_slices (partitioned tensors)")


MANY_KEYS = 6144
MANY_SUFFIX = "transformer_encoder_block/multi_head_self_attention/query_key_value_projection/dense_weights/"


def case_many_keys():
    specs = []
    for i in range(MANY_KEYS):
        kind = i % 4
        if kind == 0:
            specs.append((f"layer_{i:05d}/{MANY_SUFFIX}kernel", "", np.array(i * 0.5, dtype=np.float32), None))
        elif kind == 1:
            specs.append((f"layer_{i:05d}/{MANY_SUFFIX}bias", "", np.array([i, -i], dtype=np.int32), None))
        elif kind == 2:
            specs.append((f"layer_{i:05d}/{MANY_SUFFIX}scale", "", np.array([i % 2048], dtype=np.float16), None))
        else:
            specs.append((f"layer_{i:05d}/{MANY_SUFFIX}label", "", np.array(b"k%d" % i, dtype=object), None))
    order = np.random.RandomState(0).permutation(len(specs))
    specs = [specs[i] for i in order]
    savev2_case(
        "many_keys", specs, f"{MANY_KEYS} keys in one SaveV2 call, shuffled; index of >= 3 blocks", compress=True
    )


def partitioned_init(full):
    """An initializer giving each partition its piece of ``full``."""
    full = np.asarray(full)

    def init(shape, dtype=None, partition_info=None):
        offset = partition_info.var_offset if partition_info is not None else [0] * full.ndim
        index = tuple(slice(o, o + n) for o, n in zip(offset, shape, strict=True))
        return tf.constant(full[index], dtype=dtype)

    return init


def graph_session(graph):
    return tf.compat.v1.Session(graph=graph, config=tf.compat.v1.ConfigProto(device_count={"CPU": 2}))


def case_tf1_partitioned():
    case = "tf1_partitioned"
    case_dir = fresh(case)
    g = tf.Graph()
    with g.as_default():
        part = tf.compat.v1.get_variable(
            "part",
            shape=[7, 3],
            dtype=tf.float32,
            initializer=partitioned_init(np.arange(21, dtype=np.float32).reshape(7, 3) / 8),
            partitioner=tf.compat.v1.fixed_size_partitioner(3),
        )
        with tf.compat.v1.variable_scope("scope"):
            ipart = tf.compat.v1.get_variable(
                "ipart",
                shape=[5],
                dtype=tf.int64,
                initializer=partitioned_init(np.arange(5) * 7 - 10),
                partitioner=tf.compat.v1.fixed_size_partitioner(2),
            )
            col = tf.compat.v1.get_variable(
                "col",
                shape=[2, 6],
                dtype=tf.float64,
                initializer=partitioned_init(np.arange(12, dtype=np.float64).reshape(2, 6) - 0.5),
                partitioner=tf.compat.v1.fixed_size_partitioner(3, axis=1),
            )
        plain = tf.compat.v1.get_variable("plain", initializer=tf.constant([1.0, -2.0], dtype=tf.float32))
        step = tf.compat.v1.train.get_or_create_global_step()
        del part, ipart, col, plain, step
        saver = tf.compat.v1.train.Saver(save_relative_paths=True)
        with graph_session(g) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            sess.run(tf.compat.v1.assign(tf.compat.v1.train.get_global_step(), 42))
            saver.save(sess, os.path.join(case_dir, "model.ckpt"), global_step=42, write_meta_graph=False)
    record(case, "model.ckpt-42", description="TF1 Saver, partitioned variables (fixed_size_partitioner)")


def case_tf1_sharded():
    case = "tf1_sharded"
    case_dir = fresh(case)
    g = tf.Graph()
    with g.as_default():
        with tf.device("/cpu:0"):
            tf.compat.v1.get_variable("a", initializer=tf.constant([[1.0, 2.0], [3.0, 4.0]]))
            tf.compat.v1.train.get_or_create_global_step()
            tf.compat.v1.get_variable("names", initializer=tf.constant([b"alpha", b"\x00beta"]), dtype=tf.string)
        with tf.device("/cpu:1"):
            with tf.compat.v1.variable_scope("scope"):
                tf.compat.v1.get_variable("b", initializer=tf.constant(np.arange(6, dtype=np.int32).reshape(2, 3)))
            tf.compat.v1.get_variable(
                "part",
                shape=[6, 2],
                dtype=tf.float32,
                initializer=partitioned_init(np.arange(12, dtype=np.float32).reshape(6, 2) - 6),
                partitioner=tf.compat.v1.fixed_size_partitioner(3),
            )
            tf.compat.v1.get_variable("h", initializer=tf.constant(np.array([0.5, -0.0], dtype=np.float16)))
        saver = tf.compat.v1.train.Saver(sharded=True, save_relative_paths=True)
        with graph_session(g) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, os.path.join(case_dir, "model.ckpt"), global_step=1, write_meta_graph=False)
            saver.save(sess, os.path.join(case_dir, "model.ckpt"), global_step=2, write_meta_graph=False)
    record(case, "model.ckpt-2", description="TF1 Saver(sharded=True) over /cpu:0 and /cpu:1: 2 data shards")


def case_v1_format():
    case = "v1_format"
    case_dir = fresh(case)
    g = tf.Graph()
    with g.as_default():
        tf.compat.v1.get_variable("f", initializer=tf.constant([[1.5, -0.0, np.inf], [np.nan, 2.0, -3.25]]))
        tf.compat.v1.get_variable("d", initializer=tf.constant([1e-310, -2.5], dtype=tf.float64))
        tf.compat.v1.get_variable("i", initializer=tf.constant([1, -2, 2147483647], dtype=tf.int32))
        tf.compat.v1.get_variable("i64", initializer=tf.constant([-(2**62), 5], dtype=tf.int64))
        tf.compat.v1.get_variable("b", initializer=tf.constant([True, False]))
        tf.compat.v1.get_variable("h", initializer=tf.constant(np.array([1.0, -0.0, 65504], dtype=np.float16)))
        tf.compat.v1.get_variable("u8", initializer=tf.constant(np.array([0, 255], dtype=np.uint8)))
        tf.compat.v1.get_variable("i8", initializer=tf.constant(np.array([-128, 127], dtype=np.int8)))
        tf.compat.v1.get_variable("c", initializer=tf.constant(np.array([1 + 2j, -0.5j], dtype=np.complex64)))
        tf.compat.v1.get_variable("s", initializer=tf.constant([b"hello", b"", b"\x00\xff"]), dtype=tf.string)
        tf.compat.v1.get_variable("scalar", initializer=tf.constant(7.0))
        tf.compat.v1.get_variable(
            "part",
            shape=[5, 2],
            dtype=tf.float32,
            initializer=partitioned_init(np.arange(10, dtype=np.float32).reshape(5, 2) / 4),
            partitioner=tf.compat.v1.fixed_size_partitioner(2),
        )
        saver = tf.compat.v1.train.Saver(write_version=tf.compat.v1.train.SaverDef.V1, save_relative_paths=True)
        with graph_session(g) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, os.path.join(case_dir, "model.ckpt"), write_meta_graph=False)
    record(case, "model.ckpt", fmt="V1", description="legacy V1 format (SaverDef.V1), with a partitioned variable")


def case_v1_sharded():
    case = "v1_sharded"
    case_dir = fresh(case)
    g = tf.Graph()
    with g.as_default():
        with tf.device("/cpu:0"):
            tf.compat.v1.get_variable("a", initializer=tf.constant([1.0, -2.0, 3.5]))
            tf.compat.v1.get_variable("s", initializer=tf.constant(b"shard zero"), dtype=tf.string)
        with tf.device("/cpu:1"):
            tf.compat.v1.get_variable("b", initializer=tf.constant(np.arange(6, dtype=np.int64).reshape(3, 2)))
            tf.compat.v1.get_variable(
                "part",
                shape=[4, 3],
                dtype=tf.float32,
                initializer=partitioned_init(np.arange(12, dtype=np.float32).reshape(4, 3) * -1.5),
                partitioner=tf.compat.v1.fixed_size_partitioner(2),
            )
        saver = tf.compat.v1.train.Saver(
            write_version=tf.compat.v1.train.SaverDef.V1, sharded=True, save_relative_paths=True
        )
        with graph_session(g) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            prefix = saver.save(sess, os.path.join(case_dir, "model.ckpt"), write_meta_graph=False)
    record(
        case,
        os.path.basename(prefix),
        fmt="V1",
        description="legacy V1 format, Saver(sharded=True) over 2 devices: files model.ckpt-0000N-of-00002",
    )


def case_tf2_keras():
    import keras

    case = "tf2_keras"
    case_dir = fresh(case)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="relu"), keras.layers.Dense(2)])
    opt = keras.optimizers.Adam(0.01)
    x = np.random.RandomState(0).randn(5, 4).astype(np.float32)
    y = np.random.RandomState(1).randn(5, 2).astype(np.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean((model(x) - y) ** 2)
    grads = tape.gradient(loss, model.trainable_variables)
    opt.apply_gradients(zip(grads, model.trainable_variables, strict=True))
    tf.train.Checkpoint(model=model, optimizer=opt).save(os.path.join(case_dir, "ckpt"))
    record(case, "ckpt-1", description="TF2 tf.train.Checkpoint of a Keras 3 Dense model + Keras Adam, one step")


class DenseLayer(tf.Module):
    def __init__(self, n_in, n_out, seed, name=None):
        super().__init__(name=name)
        rng = np.random.RandomState(seed)
        self.kernel = tf.Variable(rng.randn(n_in, n_out).astype(np.float32), name="kernel")
        self.bias = tf.Variable(np.zeros(n_out, dtype=np.float32), name="bias")

    def __call__(self, x):
        return tf.matmul(x, self.kernel) + self.bias


class MLP(tf.Module):
    def __init__(self):
        super().__init__()
        self.dense = DenseLayer(4, 3, 1, name="dense")
        self.dense_1 = DenseLayer(3, 2, 2, name="dense_1")

    def __call__(self, x):
        return self.dense_1(tf.nn.relu(self.dense(x)))


def case_tf2_slots():
    case = "tf2_slots"
    case_dir = fresh(case)
    model = MLP()
    opt = tf.compat.v1.train.AdamOptimizer(0.01)
    x = np.random.RandomState(0).randn(5, 4).astype(np.float32)
    y = np.random.RandomState(1).randn(5, 2).astype(np.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean((model(x) - y) ** 2)
    variables = model.trainable_variables
    opt.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
    step = tf.Variable(1, dtype=tf.int64)
    tf.train.Checkpoint(model=model, optimizer=opt, step=step).save(os.path.join(case_dir, "ckpt"))
    record(case, "ckpt-1", description="TF2 tf.train.Checkpoint: tf.Module Dense layers + Adam slot variables")


def case_tf2_sharding_policy():
    case = "tf2_sharding_policy"
    case_dir = fresh(case)
    big = tf.Variable(np.arange(64, dtype=np.float32).reshape(16, 4) - 20.5)
    mid = tf.Variable(np.arange(40, dtype=np.int64) * 3)
    small = tf.Variable(np.array([0.5, -0.25], dtype=np.float64))
    options = tf.train.CheckpointOptions(
        experimental_sharding_callback=tf.train.experimental.MaxShardSizePolicy(max_shard_size=100)
    )
    ckpt = tf.train.Checkpoint(big=big, mid=mid, small=small)
    prefix = ckpt.save(os.path.join(case_dir, "ckpt"), options=options)
    record(
        case,
        os.path.basename(prefix),
        description="TF2 CheckpointOptions(MaxShardSizePolicy(100 bytes)): several shards, sliced variables",
    )


CASES = {
    "format_vector": case_format_vector,
    "dtypes": case_dtypes,
    "strings": case_strings,
    "scalars_empty": case_scalars_empty,
    "sliced_savev2": case_sliced_savev2,
    "many_keys": case_many_keys,
    "tf1_partitioned": case_tf1_partitioned,
    "tf1_sharded": case_tf1_sharded,
    "v1_format": case_v1_format,
    "v1_sharded": case_v1_sharded,
    "tf2_keras": case_tf2_keras,
    "tf2_slots": case_tf2_slots,
    "tf2_sharding_policy": case_tf2_sharding_policy,
}


def main(argv: list[str]) -> None:
    names = argv or list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; known: {list(CASES)}")
    os.makedirs(GOLDEN, exist_ok=True)
    for name in names:
        CASES[name]()
        total = sum(os.path.getsize(os.path.join(GOLDEN, name, f)) for f in os.listdir(os.path.join(GOLDEN, name)))
        print(f"{name}: {total} bytes")
    if REFUSED:
        print("refused:\n  " + "\n  ".join(REFUSED))
    else:
        print("refused: none")


if __name__ == "__main__":
    main(sys.argv[1:])
