"""Read legacy V1 checkpoints (``write_version=SaverDef.V1``): tables of ``SavedTensorSlices``.

::

    file P (or shards P-00000-of-0000N), each an SSTable:
      ""                     SavedTensorSlices{meta: [SavedSliceMeta{name, shape, type, slice*}], versions}
      slice_key(name, s)     SavedTensorSlices{data: SavedSlice{name, slice, data: TensorProto}}

Every tensor, partitioned or not, is stored as slices; values sit in the TensorProto's typed
repeated fields (``float_val``, ``int_val``, ...). Reading only: nothing writes V1 any more.
"""

from __future__ import annotations

import fnmatch
import math
import mmap
import os
import re
from dataclasses import dataclass

import numpy as np
from google.protobuf.message import DecodeError

from ckptlib.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CheckpointTooLargeError,
    CorruptCheckpointError,
    TensorNotFoundError,
)
from ckptlib.format import dtypes
from ckptlib.format.bundle import check_shape
from ckptlib.format.proto.saved_tensor_slice_pb2 import SavedTensorSlices, TensorProto
from ckptlib.format.slices import TensorSlice, check_tiling, region, slice_key
from ckptlib.format.table import TableReader
from ckptlib.reader import CheckpointReader, TensorInfo, check_numpy_rank, too_large_if_out_of_memory
from ckptlib.store import ReadFile, store_for

_SHARD_SUFFIX = re.compile(r"-\d{5}-of-\d{5}$")

# TensorProto field that holds the values of each dtype in a V1 file, and its element type.
_VALUE_FIELDS: dict[int, tuple[str, str]] = {
    dtypes.DT_FLOAT: ("float_val", "<f4"),
    dtypes.DT_DOUBLE: ("double_val", "<f8"),
    dtypes.DT_INT32: ("int_val", "<i4"),
    dtypes.DT_UINT8: ("int_val", "<i4"),
    dtypes.DT_INT16: ("int_val", "<i4"),
    dtypes.DT_INT8: ("int_val", "<i4"),
    dtypes.DT_QINT8: ("int_val", "<i4"),
    dtypes.DT_QUINT8: ("int_val", "<i4"),
    dtypes.DT_QINT16: ("int_val", "<i4"),
    dtypes.DT_QUINT16: ("int_val", "<i4"),
    dtypes.DT_QINT32: ("int_val", "<i4"),
    dtypes.DT_UINT16: ("int_val", "<i4"),
    dtypes.DT_INT64: ("int64_val", "<i8"),
    dtypes.DT_BOOL: ("bool_val", "?"),
    dtypes.DT_COMPLEX64: ("scomplex_val", "<f4"),
    dtypes.DT_COMPLEX128: ("dcomplex_val", "<f8"),
    dtypes.DT_HALF: ("half_val", "<i4"),
    dtypes.DT_BFLOAT16: ("half_val", "<i4"),
    dtypes.DT_UINT32: ("uint32_val", "<u4"),
    dtypes.DT_UINT64: ("uint64_val", "<u8"),
}


@dataclass(frozen=True)
class _V1Tensor:
    dtype: int
    shape: tuple[int, ...]
    slices: tuple[tuple[TensorSlice, int], ...]  # (slice, index of the file holding it)


def v1_files(prefix: str) -> list[str]:
    """The V1 files of ``prefix``: the file itself, its ``-NNNNN-of-NNNNN`` shards, or the
    files matching it when it is the glob TensorFlow records for a sharded V1 save
    (``model.ckpt-?????-of-00002``)."""
    store = store_for(prefix)
    if store.exists(prefix) and not store.is_dir(prefix):
        return [prefix]
    directory, stem = os.path.split(prefix)
    try:
        names = store.listdir(directory)
    except OSError:
        return []
    shards = sorted(n for n in names if n.startswith(stem) and _SHARD_SUFFIX.fullmatch(n[len(stem) :]))
    if not shards and any(c in stem for c in "*?["):
        shards = sorted(n for n in names if fnmatch.fnmatchcase(n, stem))
    found = [os.path.join(directory, n) for n in shards]
    return [p for p in found if not store.is_dir(p)]


class V1Reader(CheckpointReader):
    """A legacy V1 checkpoint, with the same interface as ``BundleReader``."""

    @too_large_if_out_of_memory
    def __init__(self, prefix: str | os.PathLike[str], *, verify_checksums: bool = True):
        self.prefix = os.fspath(prefix)
        paths = v1_files(self.prefix)
        if not paths:
            raise CheckpointNotFoundError("no V1 checkpoint file", path=self.prefix)
        self._files: list[ReadFile] = []
        self._tables: list[TableReader] = []
        self._tensors: dict[str, _V1Tensor] = {}
        try:
            for path in paths:
                self._open(path, verify_checksums)
        except BaseException:
            self.close()
            raise

    def _open(self, path: str, verify: bool) -> None:
        file = store_for(path).open(path)
        self._files.append(file)
        try:
            table = TableReader(file, verify=verify)
            key, value = table.first()
            record = _parse(value)
            if key != b"" or not record.HasField("meta"):
                raise CorruptCheckpointError("the first entry of a V1 checkpoint is not its metadata")
            file_index = len(self._tables)
            self._tables.append(table)
            for meta in record.meta.tensor:
                dtypes.lookup(meta.type)
                shape = check_shape([d.size for d in meta.shape.dim], meta.shape.unknown_rank)
                pieces = tuple((TensorSlice.from_proto(s), file_index) for s in meta.slice)
                known = self._tensors.get(meta.name)
                if known is not None:
                    if (known.dtype, known.shape) != (meta.type, shape):
                        raise CorruptCheckpointError("files disagree on the tensor's dtype or shape", tensor=meta.name)
                    pieces = known.slices + pieces
                for tensor_slice, _ in pieces:
                    tensor_slice.bounds(shape)
                self._tensors[meta.name] = _V1Tensor(meta.type, shape, pieces)
        except CheckpointError as e:
            raise e.with_context(path=path) from None
        except ValueError as e:  # a slice that does not fit its shape
            raise CorruptCheckpointError(str(e), path=path) from None

    def keys_list(self) -> list[str]:
        return sorted(self._tensors)

    def _tensor(self, name: str) -> _V1Tensor:
        tensor = self._tensors.get(name)
        if tensor is None:
            raise TensorNotFoundError("not found in checkpoint", path=self.prefix, tensor=name)
        return tensor

    def shape(self, name: str) -> tuple[int, ...]:
        return self._tensor(name).shape

    def dtype_name(self, name: str) -> str:
        return dtypes.lookup(self._tensor(name).dtype).name

    @property
    def files(self) -> list[str]:
        return [file.path for file in self._files]

    def tensor_info(self, name: str) -> TensorInfo:
        tensor = self._tensor(name)
        if tensor.dtype == dtypes.DT_STRING:  # V1 stores no size: the strings' bytes, as read
            nbytes = sum(len(value) for value in self.get_tensor(name).reshape(-1).tolist())
        else:
            nbytes = math.prod(tensor.shape) * (dtypes.itemsize(tensor.dtype) or 0)
        files = {file_index for _, file_index in tensor.slices}
        shard = files.pop() if len(files) == 1 else None
        return TensorInfo(
            name,
            dtypes.lookup(tensor.dtype).name,
            tensor.shape,
            nbytes,
            shard,
            len(tensor.slices) if len(tensor.slices) > 1 else 0,
        )

    @too_large_if_out_of_memory
    def get_tensor(self, name: str) -> np.ndarray:
        tensor = self._tensor(name)
        try:
            check_numpy_rank(tensor.shape)
        except CheckpointError as e:
            raise e.with_context(path=self.prefix, tensor=name) from None
        pieces = []
        for tensor_slice, file_index in tensor.slices:
            path = self._files[file_index].path
            try:
                values = self._read_slice(name, tensor, tensor_slice, file_index)
            except CheckpointError as e:
                raise e.with_context(path=path, tensor=name) from None
            pieces.append((tensor_slice.bounds(tensor.shape), values))
        try:
            check_tiling([bounds for bounds, _ in pieces], tensor.shape)
        except CheckpointError as e:
            raise e.with_context(path=self.prefix, tensor=name) from None
        row = dtypes.lookup(tensor.dtype)
        if len(pieces) == 1:  # the common case: one slice, the whole tensor, already its own array
            return pieces[0][1]
        out = np.empty(tensor.shape, dtype=row.numpy if row.numpy is not None else object)
        for bounds, values in pieces:
            out[region(bounds)] = values
        return out

    def _read_slice(self, name: str, tensor: _V1Tensor, tensor_slice: TensorSlice, file_index: int) -> np.ndarray:
        try:
            value = self._tables[file_index].get(slice_key(name, tensor_slice))
        except TensorNotFoundError:
            raise CorruptCheckpointError(f"slice {tensor_slice} is listed but not stored") from None
        record = _parse(value)
        saved = record.data
        if not record.HasField("data") or saved.name != name or TensorSlice.from_proto(saved.slice) != tensor_slice:
            raise CorruptCheckpointError(f"the record stored for slice {tensor_slice} is not that slice")
        shape = tensor_slice.shape(tensor.shape)
        return _values(saved.data, tensor.dtype, shape)

    def _verify_structure(self) -> None:
        for file, table in zip(self._files, self._tables, strict=True):
            try:
                table.verify_all()
            except CheckpointError as e:
                raise e.with_context(path=file.path) from None

    def close(self) -> None:
        for file in self._files:
            file.close()


def _parse(value: bytes) -> SavedTensorSlices:
    record = SavedTensorSlices()
    try:
        record.ParseFromString(value)
    except DecodeError:
        # The protobuf parser reports running out of memory as a decode error.
        if value and not _could_allocate(_PARSED_BYTES_PER_BYTE * len(value)):
            raise CheckpointTooLargeError(f"a {len(value)}-byte V1 record is too large for this memory") from None
        raise CorruptCheckpointError("a V1 record is not parseable") from None
    return record


# Parsed, a record may take this many times its size: a 1-byte varint becomes an 8-byte
# int64, in a repeated field that grows by doubling.
_PARSED_BYTES_PER_BYTE = 16


def _could_allocate(nbytes: int) -> bool:
    """Whether this process can have ``nbytes`` more memory now (reserved, not touched)."""
    try:
        mmap.mmap(-1, nbytes).close()
    except (OSError, MemoryError, OverflowError, ValueError):
        return False
    return True


def _values(proto: TensorProto, dtype: int, shape: tuple[int, ...]) -> np.ndarray:
    """The values of one stored slice as an array of ``shape``."""
    count = math.prod(shape)
    row = dtypes.lookup(dtype)
    if dtype == dtypes.DT_STRING:
        if len(proto.string_val) != count:
            raise CorruptCheckpointError(f"slice holds {len(proto.string_val)} strings, expected {count}")
        out = np.empty(count, dtype=object)
        out[:] = list(proto.string_val)
        return out.reshape(shape)
    if row.numpy is None:
        raise CorruptCheckpointError(f"V1 checkpoints cannot hold {row.name} tensors")
    if proto.tensor_content:
        if len(proto.tensor_content) != count * row.numpy.itemsize:
            raise CorruptCheckpointError("slice content has the wrong size")
        return np.frombuffer(proto.tensor_content, dtype=row.numpy).reshape(shape).copy()
    field, stored_type = _VALUE_FIELDS.get(dtype, (None, None))
    if field is None or stored_type is None:
        raise CorruptCheckpointError(f"V1 checkpoints cannot hold {row.name} tensors")
    values = np.asarray(getattr(proto, field), dtype=stored_type)
    if dtype in (dtypes.DT_COMPLEX64, dtypes.DT_COMPLEX128):
        if len(values) != 2 * count:
            raise CorruptCheckpointError(f"slice holds {len(values)} floats, expected {2 * count} (complex pairs)")
        values = values.view(row.numpy)
    elif dtype in (dtypes.DT_HALF, dtypes.DT_BFLOAT16):
        values = values.astype("<u2").view(row.numpy)
    else:
        values = values.astype(row.numpy, copy=False)
    if values.size != count:
        raise CorruptCheckpointError(f"slice holds {values.size} values, expected {count}")
    return values.reshape(shape)
