"""TensorFlow's DataType enum (``types.proto``) and the numpy dtypes that hold each one.

Numeric tensors are stored as raw little-endian elements, one element per ``itemsize``
bytes, C order. The sub-byte and 8-bit float types (float8, int4, int2, float4) take one
whole byte per element on disk, exactly like the ``ml_dtypes`` arrays that represent them.
The quantized types (qint8, ...) are read as their plain integer counterparts; writing
them needs an explicit ``dtype`` enum.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ckptlib.errors import InvalidTensorError, UnsupportedFeatureError

DT_INVALID = 0
DT_FLOAT = 1
DT_DOUBLE = 2
DT_INT32 = 3
DT_UINT8 = 4
DT_INT16 = 5
DT_INT8 = 6
DT_STRING = 7
DT_COMPLEX64 = 8
DT_INT64 = 9
DT_BOOL = 10
DT_QINT8 = 11
DT_QUINT8 = 12
DT_QINT32 = 13
DT_BFLOAT16 = 14
DT_QINT16 = 15
DT_QUINT16 = 16
DT_UINT16 = 17
DT_COMPLEX128 = 18
DT_HALF = 19
DT_RESOURCE = 20
DT_VARIANT = 21
DT_UINT32 = 22
DT_UINT64 = 23
DT_FLOAT8_E5M2 = 24
DT_FLOAT8_E4M3FN = 25
DT_FLOAT8_E4M3FNUZ = 26
DT_FLOAT8_E4M3B11FNUZ = 27
DT_FLOAT8_E5M2FNUZ = 28
DT_INT4 = 29
DT_UINT4 = 30
DT_INT2 = 31
DT_UINT2 = 32
DT_FLOAT4_E2M1FN = 33

# A reference dtype (a variable's ref type in TF1 graphs) is its value type plus this.
REF_OFFSET = 100


@dataclass(frozen=True)
class DType:
    """One row of the table: TF's enum value and name, and the numpy dtype for its elements.

    The ``ml_dtypes`` types (bfloat16, float8, int4, ...) are looked up on first use: the
    package takes longer to import than the rest of ckptlib together, and most
    checkpoints never need it.
    """

    enum: int
    name: str
    spec: str | None  # a numpy dtype string, "ml_dtypes.<type>", or None (not fixed-size numeric)
    itemsize: int | None = None

    @property
    def numpy(self) -> np.dtype | None:
        """The numpy dtype of one element; None for string, variant and resource."""
        return _resolve(self.spec)

    @property
    def is_numeric(self) -> bool:
        return self.spec is not None


_ML = "ml_dtypes."


@functools.cache
def _resolve(spec: str | None) -> np.dtype | None:
    if spec is None:
        return None
    if spec.startswith(_ML):
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, spec[len(_ML) :]))
    return np.dtype(spec)


def _row(enum: int, name: str, spec: str | None, itemsize: int | None = None) -> DType:
    if spec is not None and itemsize is None:
        itemsize = np.dtype(spec).itemsize  # ml_dtypes rows give theirs explicitly
    return DType(enum, name, spec, itemsize)


DTYPES: tuple[DType, ...] = (
    _row(DT_FLOAT, "float32", "<f4"),
    _row(DT_DOUBLE, "float64", "<f8"),
    _row(DT_INT32, "int32", "<i4"),
    _row(DT_UINT8, "uint8", "u1"),
    _row(DT_INT16, "int16", "<i2"),
    _row(DT_INT8, "int8", "i1"),
    _row(DT_STRING, "string", None),
    _row(DT_COMPLEX64, "complex64", "<c8"),
    _row(DT_INT64, "int64", "<i8"),
    _row(DT_BOOL, "bool", "?"),
    _row(DT_QINT8, "qint8", "i1"),
    _row(DT_QUINT8, "quint8", "u1"),
    _row(DT_QINT32, "qint32", "<i4"),
    _row(DT_BFLOAT16, "bfloat16", _ML + "bfloat16", 2),
    _row(DT_QINT16, "qint16", "<i2"),
    _row(DT_QUINT16, "quint16", "<u2"),
    _row(DT_UINT16, "uint16", "<u2"),
    _row(DT_COMPLEX128, "complex128", "<c16"),
    _row(DT_HALF, "float16", "<f2"),
    _row(DT_RESOURCE, "resource", None),
    _row(DT_VARIANT, "variant", None),
    _row(DT_UINT32, "uint32", "<u4"),
    _row(DT_UINT64, "uint64", "<u8"),
    _row(DT_FLOAT8_E5M2, "float8_e5m2", _ML + "float8_e5m2", 1),
    _row(DT_FLOAT8_E4M3FN, "float8_e4m3fn", _ML + "float8_e4m3fn", 1),
    _row(DT_FLOAT8_E4M3FNUZ, "float8_e4m3fnuz", _ML + "float8_e4m3fnuz", 1),
    _row(DT_FLOAT8_E4M3B11FNUZ, "float8_e4m3b11fnuz", _ML + "float8_e4m3b11fnuz", 1),
    _row(DT_FLOAT8_E5M2FNUZ, "float8_e5m2fnuz", _ML + "float8_e5m2fnuz", 1),
    _row(DT_INT4, "int4", _ML + "int4", 1),
    _row(DT_UINT4, "uint4", _ML + "uint4", 1),
    _row(DT_INT2, "int2", _ML + "int2", 1),
    _row(DT_UINT2, "uint2", _ML + "uint2", 1),
    _row(DT_FLOAT4_E2M1FN, "float4_e2m1fn", _ML + "float4_e2m1fn", 1),
)

_BY_ENUM = {row.enum: row for row in DTYPES}
_BY_NAME = {row.name: row for row in DTYPES}
QUANTIZED = frozenset({DT_QINT8, DT_QUINT8, DT_QINT16, DT_QUINT16, DT_QINT32})
# numpy dtype -> the enum an array of it is saved as: the plain type, never a quantized one.
# Holds numpy's own types at first; the ml_dtypes rows join when an ml_dtypes array shows up.
_ENUM_FOR_NUMPY: dict[np.dtype, int] = {
    np.dtype(row.spec): row.enum
    for row in DTYPES
    if row.spec is not None and not row.spec.startswith(_ML) and row.enum not in QUANTIZED
}
# enum -> numpy dtype, filled on demand (so that a bfloat16 tensor imports ml_dtypes, a float32 one does not)
_NUMPY_BY_ENUM: dict[int, np.dtype] = {}


def _add_ml_dtypes() -> None:
    for row in DTYPES:
        if row.spec is not None and row.spec.startswith(_ML):
            _ENUM_FOR_NUMPY.setdefault(row.numpy, row.enum)  # type: ignore[arg-type]


def lookup(enum: int) -> DType:
    """The table row for a DataType value read from a file."""
    row = _BY_ENUM.get(enum)
    if row is None:
        raise UnsupportedFeatureError(f"unknown or unsupported dtype enum {enum}")
    return row


def numpy_dtype(enum: int) -> np.dtype | None:
    """The numpy dtype of a numeric DataType; None for strings, variants and unknown values."""
    found = _NUMPY_BY_ENUM.get(enum)
    if found is None:
        row = _BY_ENUM.get(enum)
        if row is None or row.spec is None:
            return None
        found = _NUMPY_BY_ENUM[enum] = row.numpy  # type: ignore[assignment]
    return found


def itemsize(enum: int) -> int | None:
    """Bytes per element of a numeric DataType; None for strings, variants and unknown values."""
    row = _BY_ENUM.get(enum)
    return None if row is None else row.itemsize


def by_name(name: str) -> DType:
    """The table row for a dtype name such as ``"bfloat16"`` or ``"qint8"``."""
    row = _BY_NAME.get(name)
    if row is None:
        raise InvalidTensorError(f"unknown dtype name {name!r}")
    return row


def plain_enum(dtype: np.dtype) -> int | None:
    """The DataType of a native little-endian numeric dtype; None for anything else."""
    enum = _ENUM_FOR_NUMPY.get(dtype)
    if enum is None and dtype.isbuiltin == 2 and type(dtype).__module__.startswith("ml_dtypes"):
        _add_ml_dtypes()
        enum = _ENUM_FOR_NUMPY.get(dtype)
    return enum


def enum_for_numpy(dtype: np.dtype) -> int:
    """The DataType a numpy array of ``dtype`` is saved as (byte order ignored)."""
    if dtype.kind in "SUO":
        return DT_STRING
    key = dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype
    enum = plain_enum(key)
    if enum is None:
        raise InvalidTensorError(f"numpy dtype {dtype} has no TensorFlow equivalent")
    return enum
