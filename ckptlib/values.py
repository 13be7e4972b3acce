"""One leaf of the state to save as a numpy array (``tree.py`` names the leaves).

Leaves may be numpy arrays, numpy or Python scalars, ``bytes``/``str`` (and numpy arrays of
them: string tensors), torch tensors of any dtype, device or layout in memory, or any other
object numpy can view through ``__array__`` or ``__dlpack__`` (JAX arrays, TF tensors and
variables). No framework is imported that the value did not come from.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from ckptlib.errors import InvalidTensorError
from ckptlib.format import dtypes
from ckptlib.frameworks import framework_of, torch_to_numpy


def to_array(value: Any, name: str) -> np.ndarray:
    """A C-contiguous, little-endian numpy array for a numeric leaf, or an object array of
    ``bytes`` for a string leaf. Copies only when the input's layout requires it."""
    if isinstance(value, (bytes, str)):
        return _string_array(np.array(value, dtype=object), name)
    if isinstance(value, np.ndarray):
        array = value
    elif framework_of(value) == "torch" and hasattr(value, "detach"):
        try:
            array = torch_to_numpy(value)
        except InvalidTensorError as e:
            raise e.with_context(tensor=name) from None
    elif hasattr(value, "__array__") or isinstance(value, (list, tuple, int, float, complex, bool, np.generic)):
        try:
            array = np.asarray(value)
        except (TypeError, ValueError, RuntimeError) as e:
            array = _from_dlpack(value, name, e)
        if array.dtype.kind in "SU":  # numpy would have dropped trailing NULs of bytes
            array = np.array(value, dtype=object)
    elif hasattr(value, "__dlpack__"):
        array = _from_dlpack(value, name, None)
    else:
        raise InvalidTensorError(f"cannot save a value of type {type(value).__name__}", tensor=name)
    if array.dtype.kind in "SUO":
        return _string_array(array, name)
    try:
        dtypes.enum_for_numpy(array.dtype)
    except InvalidTensorError as e:
        raise e.with_context(tensor=name) from None
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    # not np.ascontiguousarray: it turns 0-d arrays into 1-d ones
    return array if array.flags.c_contiguous else array.copy(order="C")


def _from_dlpack(value: Any, name: str, cause: Exception | None) -> np.ndarray:
    if hasattr(value, "__dlpack__"):
        try:
            return np.from_dlpack(value)
        except (TypeError, ValueError, RuntimeError, BufferError) as e:
            cause = e
    raise InvalidTensorError(f"cannot view {type(value).__name__} as a numpy array: {cause}", tensor=name)


def _string_array(array: np.ndarray, name: str) -> np.ndarray:
    out = np.empty(array.shape, dtype=object)
    flat_in = array.reshape(-1)
    flat_out = out.reshape(-1)
    for i, item in enumerate(flat_in):
        if isinstance(item, str):
            try:
                flat_out[i] = item.encode("utf-8")
            except UnicodeEncodeError as e:
                raise InvalidTensorError(
                    f"a str that UTF-8 cannot encode ({e.reason}: {item!r})", tensor=name
                ) from None
        elif isinstance(item, (bytes, bytearray, memoryview, np.bytes_)):
            flat_out[i] = bytes(item)
        else:
            raise _not_strings(flat_in, item, name)
    return out


def _not_strings(items: np.ndarray, found: Any, name: str) -> InvalidTensorError:
    """Why an object array that is not all str/bytes cannot be saved, in the user's terms."""
    values = items.tolist()
    huge = next((v for v in values if isinstance(v, int) and not _INT_LOW <= v <= _UINT64_MAX), None)
    if huge is not None:  # numpy keeps ints beyond 64 bits as Python objects
        return InvalidTensorError(
            f"integer {huge} is out of range for int64 and uint64, TensorFlow's widest integer dtypes", tensor=name
        )
    if all(isinstance(v, numbers.Number) for v in values):
        kinds = sorted({type(v).__name__ for v in values})
        return InvalidTensorError(
            f"an object array of {'/'.join(kinds)} values is not a tensor: give it a numeric dtype, "
            f"e.g. np.asarray(value, dtype=np.float32) (object arrays are saved only as strings)",
            tensor=name,
        )
    return InvalidTensorError(f"a string tensor may hold only str or bytes, found {type(found).__name__}", tensor=name)


_INT_LOW = -(2**63)
_UINT64_MAX = 2**64 - 1


def is_string_array(array: np.ndarray) -> bool:
    return array.dtype == object
