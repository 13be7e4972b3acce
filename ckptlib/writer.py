"""Write one bundle: ``prefix.data-NNNNN-of-MMMMM`` shards and the ``prefix.index`` table.

Commit order (a reader never sees a half-written bundle): every shard is written and
flushed under a temporary name and renamed into place, then the index is written the same
way and renamed last; the index is what makes a bundle exist. Tensor bytes go to disk
straight from each array's buffer, with their crc32c computed on that same buffer.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ckptlib.errors import CheckpointError, InvalidTensorError
from ckptlib.format import dtypes
from ckptlib.format.bundle import EMPTY_CRC, HEADER_KEY, Entry, decode_header, encode_entry, encode_header, name_to_key
from ckptlib.format.crc import crc32c, mask
from ckptlib.format.slices import TensorSlice, overlaps, slice_key
from ckptlib.format.strings import encode_strings
from ckptlib.format.table import TableReader, build_table
from ckptlib.storage import (
    ASIDE_MARKER,
    LocalFile,
    aside_path,
    fsync_dir,
    new_temp_file,
    remove_quietly,
    remove_stale_temps,
    stale_files,
    write_temp,
)
from ckptlib.values import flatten, is_string_array, to_array

# Writes smaller than this are gathered; larger ones go straight from the array's buffer.
_WRITE_BUFFER = 1 << 20
# Tensors at least this large have their checksum computed on another thread during the write.
_PARALLEL_CRC_BYTES = 4 << 20


def _masked_crc(data: memoryview) -> int:
    return mask(crc32c(data)) if data.nbytes else EMPTY_CRC


def data_filename(prefix: str, shard_id: int, num_shards: int) -> str:
    return f"{prefix}.data-{shard_id:05d}-of-{num_shards:05d}"


def index_filename(prefix: str) -> str:
    return f"{prefix}.index"


@dataclass
class _Pending:
    """A tensor (or one slice of one) waiting to be written."""

    key: bytes
    entry: Entry  # location and checksum are filled in when the shard is written
    array: np.ndarray

    @property
    def nbytes(self) -> int:
        return 0 if is_string_array(self.array) else self.array.nbytes


class BundleWriter:
    """Collects tensors, then writes them as one bundle at ``finish()``.

    ``num_shards`` data files are written in parallel, tensors spread over them to balance
    bytes; with ``num_shards=None``, as many as keep each near ``max_shard_bytes`` (a tensor
    larger than that gets a shard of its own). With ``sync`` (the default) every file and
    the directory are fsynced before the index appears, so a power loss cannot leave an
    index pointing at missing data.
    """

    def __init__(
        self,
        prefix: str | os.PathLike[str],
        *,
        num_shards: int | None = 1,
        max_shard_bytes: int | None = None,
        sync: bool = True,
    ):
        if num_shards is None and max_shard_bytes is None:
            raise ValueError("give num_shards or max_shard_bytes")
        if num_shards is not None and num_shards < 1:
            raise ValueError(f"num_shards must be at least 1, got {num_shards}")
        if max_shard_bytes is not None and max_shard_bytes < 1:
            raise ValueError(f"max_shard_bytes must be at least 1, got {max_shard_bytes}")
        self.prefix = os.fspath(prefix)
        self._requested_shards = num_shards
        self._max_shard_bytes = max_shard_bytes
        self._num_shards = num_shards or 1
        self._sync = sync
        self._pending: list[_Pending] = []
        self._keys: set[bytes] = set()
        self._sliced: dict[str, Entry] = {}  # full entries of partitioned tensors

    def add(self, name: str, value: Any, *, dtype: str | None = None) -> None:
        """Add a whole tensor. ``dtype`` names a TF type to store instead of the array's own
        (only for types sharing its layout, e.g. ``"qint8"`` for an int8 array)."""
        array = to_array(value, name)
        entry = self._entry_for(array, name, dtype)  # first: a refused value reserves no name
        self._add_entry(self._key(name), entry, array)

    def add_slice(
        self,
        name: str,
        full_shape: Sequence[int],
        tensor_slice: TensorSlice | str,
        value: Any,
        *,
        dtype: str | None = None,
    ) -> None:
        """Add one slice of a partitioned tensor, as ``SaveV2`` does with a ``shape_and_slice``.

        ``tensor_slice`` is a ``TensorSlice`` or TF's spec text (``"0,5:-"``). A slice that
        covers the whole tensor is stored as an ordinary tensor.
        """
        if isinstance(tensor_slice, str):
            tensor_slice = TensorSlice.parse(tensor_slice)
        full_shape = tuple(int(d) for d in full_shape)
        array = to_array(value, name)
        try:
            expected_shape = tensor_slice.shape(full_shape)
        except InvalidTensorError as e:
            raise e.with_context(tensor=name) from None
        if array.shape != expected_shape:
            raise InvalidTensorError(
                f"slice {tensor_slice} of shape {list(full_shape)} needs a value of shape "
                f"{list(expected_shape)}, got {list(array.shape)}",
                tensor=name,
            )
        if tensor_slice.covers(full_shape):
            self.add(name, array, dtype=dtype)
            return
        entry = self._entry_for(array, name, dtype)
        full = self._sliced.get(name)
        if full is None:
            self._key(name)
            full = Entry(entry.dtype, full_shape)
        elif full.dtype != entry.dtype or full.shape != full_shape:
            raise InvalidTensorError(
                f"slices disagree: dtype {full.dtype} shape {list(full.shape)} vs "
                f"dtype {entry.dtype} shape {list(full_shape)}",
                tensor=name,
            )
        bounds = tensor_slice.bounds(full_shape)
        for other in full.slices:
            if overlaps(bounds, other.bounds(full_shape)):
                raise InvalidTensorError(f"slice {tensor_slice} overlaps slice {other}", tensor=name)
        self._sliced[name] = full._replace(slices=(*full.slices, tensor_slice))
        self._add_entry(self._key(slice_key(name, tensor_slice)), entry, array)

    def finish(self) -> str:
        """Write the data shards, then the index; returns the prefix.

        On any failure every temporary file is removed and an existing bundle at the same
        prefix is left as it was (see ``_install``).
        """
        directory = os.path.dirname(self.prefix)
        if directory:
            os.makedirs(directory, exist_ok=True)
        if self._requested_shards is None:
            assert self._max_shard_bytes is not None
            total = sum(p.nbytes for p in self._pending)
            self._num_shards = max(1, min(len(self._pending), math.ceil(total / self._max_shard_bytes)))
        shards = self._assign_shards()
        temps = self._write_shards(shards)
        try:
            temps.append(write_temp(index_filename(self.prefix), [self._index_bytes(shards)], self._sync))
        except BaseException:
            for temp in temps:
                remove_quietly(temp)
            raise
        finals = [data_filename(self.prefix, i, self._num_shards) for i in range(self._num_shards)]
        _install(self.prefix, temps, [*finals, index_filename(self.prefix)], self._sync)
        return self.prefix

    def _write_shards(self, shards: list[list[_Pending]]) -> list[str]:
        """Write every shard to a temporary file, in parallel; all or none survive."""
        with ThreadPoolExecutor(max_workers=min(len(shards), os.cpu_count() or 1)) as pool:
            futures = [pool.submit(self._write_shard, i, shard) for i, shard in enumerate(shards)]
        temps, failure = [], None
        for future in futures:
            try:
                temps.append(future.result())
            except BaseException as e:
                failure = failure or e
        if failure is not None:
            for temp in temps:
                remove_quietly(temp)
            raise failure
        return temps

    def _key(self, name: str | bytes) -> bytes:
        key = name_to_key(name) if isinstance(name, str) else name
        if key == HEADER_KEY:
            raise InvalidTensorError("tensor names must not be empty")
        if key in self._keys:
            raise InvalidTensorError("adding duplicate key", tensor=key.decode("utf-8", "replace"))
        self._keys.add(key)
        return key

    def _entry_for(self, array: np.ndarray, name: str, dtype: str | None) -> Entry:
        enum = dtypes.enum_for_numpy(array.dtype)
        if dtype is not None:
            row = dtypes.by_name(dtype)
            if row.numpy is None or enum == dtypes.DT_STRING or row.numpy.itemsize != array.dtype.itemsize:
                raise InvalidTensorError(f"cannot store a {array.dtype} array as {dtype}", tensor=name)
            enum = row.enum
        return Entry(enum, tuple(int(d) for d in array.shape))

    def _add_entry(self, key: bytes, entry: Entry, array: np.ndarray) -> None:
        self._pending.append(_Pending(key, entry, array))

    def _assign_shards(self) -> list[list[_Pending]]:
        """Spread tensors over shards, largest first onto the least-filled shard; each shard
        keeps the order in which tensors were added."""
        if self._num_shards == 1:
            return [self._pending]
        load = [0] * self._num_shards
        owner: dict[int, int] = {}
        for i in sorted(range(len(self._pending)), key=lambda i: -self._pending[i].nbytes):
            shard = load.index(min(load))
            owner[i] = shard
            load[shard] += max(self._pending[i].nbytes, 1)
        shards: list[list[_Pending]] = [[] for _ in range(self._num_shards)]
        for i, pending in enumerate(self._pending):
            shards[owner[i]].append(pending)
        return shards

    def _write_shard(self, shard_id: int, tensors: list[_Pending]) -> str:
        """Write one shard to a temporary file; returns its path.

        Tensors go out from their own buffers (small ones gathered into larger writes);
        checksums of large tensors are computed on another thread while they are written,
        as both the crc32c extension and file writes release the GIL.
        """
        with new_temp_file(data_filename(self.prefix, shard_id, self._num_shards), self._sync) as (path, fd):
            checksums: list[int | Future[int]] = []
            with open(fd, "wb", buffering=_WRITE_BUFFER, closefd=False) as out, ThreadPoolExecutor(1) as crc_pool:
                offset = 0
                for pending in tensors:
                    if is_string_array(pending.array):
                        chunks, size, crc = encode_strings(list(pending.array.reshape(-1)))
                        checksums.append(crc)
                        for chunk in chunks:
                            out.write(chunk)
                    else:
                        data = pending.array.reshape(-1).view(np.uint8).data
                        size = data.nbytes
                        big = size >= _PARALLEL_CRC_BYTES
                        checksums.append(crc_pool.submit(_masked_crc, data) if big else _masked_crc(data))
                        out.write(data)
                    pending.entry = pending.entry._replace(shard_id=shard_id, offset=offset, size=size)
                    offset += size
            for pending, checksum in zip(tensors, checksums, strict=True):
                value = checksum if isinstance(checksum, int) else checksum.result()
                pending.entry = pending.entry._replace(crc32c=value)
        return path

    def _index_bytes(self, shards: list[list[_Pending]]) -> bytes:
        items = [(HEADER_KEY, encode_header(self._num_shards))]
        items += [(p.key, encode_entry(p.entry)) for shard in shards for p in shard]
        items += [(name_to_key(name), encode_entry(entry)) for name, entry in self._sliced.items()]
        items.sort(key=lambda item: item[0])
        return build_table(items)


def _install(prefix: str, temps: list[str], finals: list[str], sync: bool) -> None:
    """Rename ``temps`` to ``finals`` (the index last), replacing any bundle at ``prefix``.

    An existing bundle is first moved aside: its index before its data, so no reader can
    ever pair an old index with new data. On failure the new files are removed and the old
    bundle is put back; on success its leftovers (say, shards of another shard count) go.
    After a kill, ``recover_interrupted_saves`` puts the old bundle back (or drops it if
    the new one had been completed).
    """
    directory = os.path.dirname(prefix)
    index = index_filename(prefix)
    candidates = [index, *sorted(glob.glob(glob.escape(prefix) + ".data-?????-of-?????"))]
    existing = [path for path in candidates if os.path.isfile(path) or os.path.islink(path)]
    moved: list[tuple[str, str]] = []
    installed: list[str] = []
    try:
        for path in existing:
            aside = aside_path(path)
            os.replace(path, aside)
            moved.append((aside, path))
        for temp, final in zip(temps, finals, strict=True):
            if final == index and sync:
                fsync_dir(directory)  # every shard's new name is durable before the index appears
            os.replace(temp, final)
            installed.append(final)
        if sync:
            fsync_dir(directory)
    except BaseException:
        for path in installed:
            remove_quietly(path)
        for temp in temps[len(installed) :]:
            remove_quietly(temp)
        for aside, path in reversed(moved):
            with contextlib.suppress(OSError):
                os.replace(aside, path)
        raise
    for aside, _ in moved:
        remove_quietly(aside)


def recover_interrupted_saves(directory: str) -> None:
    """Repair what killed saves left in ``directory``: a bundle that was being replaced gets
    its old files back unless the new index made it; temporary files are removed.

    Only files of writers that are gone are touched (see ``storage.stale_files``).
    """
    by_prefix: dict[str, dict[str, str]] = {}
    for aside, final in stale_files(directory, ASIDE_MARKER):
        prefix = _bundle_prefix(final)
        if prefix is not None:
            by_prefix.setdefault(prefix, {})[final] = aside
    for prefix, asides in by_prefix.items():
        _recover_bundle(prefix, asides)
    remove_stale_temps(directory)


def _bundle_prefix(path: str) -> str | None:
    if path.endswith(".index"):
        return path[: -len(".index")]
    match = _DATA_SUFFIX.search(path)
    return path[: match.start()] if match else None


_DATA_SUFFIX = re.compile(r"\.data-\d{5}-of-\d{5}$")


def _recover_bundle(prefix: str, asides: dict[str, str]) -> None:
    """``asides``: final name -> moved-aside file, for one prefix. _install moves the old
    index, then every old shard, then installs the new shards and the new index last."""
    index = index_filename(prefix)
    old_index = asides.get(index)
    old_shards = _num_shards(old_index) if old_index is not None else None
    if os.path.exists(index) or old_index is None or old_shards is None:
        for aside in asides.values():  # the new bundle is whole, or the old one is beyond use
            remove_quietly(aside)
        return
    old_data = {data_filename(prefix, i, old_shards) for i in range(old_shards)}
    if old_data <= asides.keys():  # all old shards had moved: what is in place now is new
        for path in glob.glob(glob.escape(prefix) + ".data-?????-of-?????"):
            remove_quietly(path)
    for final in sorted(asides, key=lambda f: f == index):  # data first, index last
        with contextlib.suppress(OSError):
            os.replace(asides[final], final)
    fsync_dir(os.path.dirname(prefix))


def _num_shards(index_path: str) -> int | None:
    try:
        with LocalFile(index_path) as file:
            key, value = TableReader(file).first()
            return decode_header(value).num_shards if key == HEADER_KEY else None
    except CheckpointError:
        return None


def save(
    tensors: Mapping[str, Any],
    prefix: str | os.PathLike[str],
    *,
    num_shards: int = 1,
    sync: bool = True,
) -> str:
    """Write ``tensors`` (a possibly nested mapping, flattened with ``/``) as a bundle at ``prefix``.

    Returns the prefix. Readable by ``tf.train.load_checkpoint(prefix)`` and by
    ``tf.compat.v1.train.Saver.restore``. Raises ``InvalidTensorError`` for values that
    cannot be stored, before any file is written.
    """
    writer = BundleWriter(prefix, num_shards=num_shards, sync=sync)
    for name, value in flatten(tensors).items():
        writer.add(name, value)
    return writer.finish()
