"""TensorFlow's DataType enum and its numpy counterparts (FORMAT.md section 9)."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import ckptlib
from ckptlib.format import dtypes

# FORMAT.md section 9, verbatim: enum value -> (TF name, numpy dtype or None)
EXPECTED = {
    1: ("float32", np.dtype("<f4")),
    2: ("float64", np.dtype("<f8")),
    3: ("int32", np.dtype("<i4")),
    4: ("uint8", np.dtype("u1")),
    5: ("int16", np.dtype("<i2")),
    6: ("int8", np.dtype("i1")),
    7: ("string", None),
    8: ("complex64", np.dtype("<c8")),
    9: ("int64", np.dtype("<i8")),
    10: ("bool", np.dtype("?")),
    11: ("qint8", np.dtype("i1")),
    12: ("quint8", np.dtype("u1")),
    13: ("qint32", np.dtype("<i4")),
    14: ("bfloat16", np.dtype(ml_dtypes.bfloat16)),
    15: ("qint16", np.dtype("<i2")),
    16: ("quint16", np.dtype("<u2")),
    17: ("uint16", np.dtype("<u2")),
    18: ("complex128", np.dtype("<c16")),
    19: ("float16", np.dtype("<f2")),
    20: ("resource", None),
    21: ("variant", None),
    22: ("uint32", np.dtype("<u4")),
    23: ("uint64", np.dtype("<u8")),
    24: ("float8_e5m2", np.dtype(ml_dtypes.float8_e5m2)),
    25: ("float8_e4m3fn", np.dtype(ml_dtypes.float8_e4m3fn)),
    26: ("float8_e4m3fnuz", np.dtype(ml_dtypes.float8_e4m3fnuz)),
    27: ("float8_e4m3b11fnuz", np.dtype(ml_dtypes.float8_e4m3b11fnuz)),
    28: ("float8_e5m2fnuz", np.dtype(ml_dtypes.float8_e5m2fnuz)),
    29: ("int4", np.dtype(ml_dtypes.int4)),
    30: ("uint4", np.dtype(ml_dtypes.uint4)),
    31: ("int2", np.dtype(ml_dtypes.int2)),
    32: ("uint2", np.dtype(ml_dtypes.uint2)),
    33: ("float4_e2m1fn", np.dtype(ml_dtypes.float4_e2m1fn)),
}


def test_table_matches_format_md() -> None:
    assert {row.enum: (row.name, row.numpy) for row in dtypes.DTYPES} == EXPECTED


@pytest.mark.parametrize("enum", sorted(EXPECTED))
def test_lookup_and_by_name(enum: int) -> None:
    row = dtypes.lookup(enum)
    assert row.enum == enum
    assert dtypes.by_name(row.name) is row
    assert row.is_numeric == (row.numpy is not None)
    assert dtypes.itemsize(enum) == (None if row.numpy is None else row.numpy.itemsize)


def test_sub_byte_types_take_one_byte() -> None:
    for name in ["float8_e5m2", "float8_e4m3fn", "int4", "uint4", "int2", "uint2", "float4_e2m1fn"]:
        assert dtypes.by_name(name).numpy.itemsize == 1


@pytest.mark.parametrize("enum", [0, 34, 101, -1, 10**6])
def test_unknown_enum(enum: int) -> None:
    with pytest.raises(ckptlib.UnsupportedFeatureError):
        dtypes.lookup(enum)
    assert dtypes.itemsize(enum) is None


def test_unknown_name() -> None:
    with pytest.raises(ckptlib.InvalidTensorError):
        dtypes.by_name("float33")


@pytest.mark.parametrize("row", [r for r in dtypes.DTYPES if r.numpy is not None], ids=lambda r: r.name)
def test_enum_for_numpy(row: dtypes.DType) -> None:
    enum = dtypes.enum_for_numpy(row.numpy)
    if row.enum in dtypes.QUANTIZED:
        # a plain numpy array is saved as the plain integer type, never a quantized one
        assert enum != row.enum
        assert dtypes.lookup(enum).numpy == row.numpy
    else:
        assert enum == row.enum
    # byte order is ignored
    if row.numpy.byteorder == "<":
        assert dtypes.enum_for_numpy(row.numpy.newbyteorder(">")) == enum


def test_enum_for_numpy_strings() -> None:
    for dt in [np.dtype(object), np.dtype("S3"), np.dtype("U2")]:
        assert dtypes.enum_for_numpy(dt) == dtypes.DT_STRING


@pytest.mark.parametrize("dt", ["datetime64[s]", "timedelta64[ns]", "V4", "f16" if hasattr(np, "float128") else "V8"])
def test_enum_for_numpy_unsupported(dt: str) -> None:
    with pytest.raises(ckptlib.InvalidTensorError) as info:
        dtypes.enum_for_numpy(np.dtype(dt))
    assert isinstance(info.value, ValueError)


def test_numpy_native_aliases() -> None:
    assert dtypes.enum_for_numpy(np.dtype(np.float32)) == dtypes.DT_FLOAT
    assert dtypes.enum_for_numpy(np.dtype(np.bool_)) == dtypes.DT_BOOL
    assert dtypes.enum_for_numpy(np.dtype(np.intp)) == dtypes.DT_INT64
    assert dtypes.enum_for_numpy(np.dtype(np.longlong)) == dtypes.DT_INT64


def _fresh_python(code: str) -> str:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_ml_dtypes_is_imported_only_when_a_tensor_needs_it(tmp_path: Path) -> None:
    """It takes longer to import than the rest of ckptlib; float32 work must not pay for it."""
    prefix = str(tmp_path / "plain")
    out = _fresh_python(
        "import sys, numpy as np, ckptlib\n"
        f"ckptlib.save({{'x': np.ones(3, np.float32), 's': b'text'}}, {prefix!r})\n"
        f"assert ckptlib.restore({prefix!r})['x'].sum() == 3\n"
        "print('ml_dtypes' in sys.modules)"
    )
    assert out == "False"
    bf16 = str(tmp_path / "bf16")
    ckptlib.save({"b": np.arange(4).astype(ml_dtypes.bfloat16)}, bf16)
    out = _fresh_python(
        f"import sys, ckptlib\nb = ckptlib.restore({bf16!r})['b']\n"
        "print(b.dtype, b.tolist(), 'ml_dtypes' in sys.modules)"
    )
    assert out == "bfloat16 [0.0, 1.0, 2.0, 3.0] True"
