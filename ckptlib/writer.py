"""Collect a bundle's tensors, then write it: ``prefix.data-NNNNN-of-MMMMM`` shards and the
``prefix.index`` table, on whatever store holds ``prefix``.

What is added is checked and queued (``index_builder.Pending``); ``finish`` spreads it over
shards (``shard_plan``), writes the shards in parallel straight from each array's buffer
(``shard_writer``) while this thread checksums the same buffers and builds the index
(``index_builder``), and puts the files in place, the index last (``install``): a reader
never sees a half-written bundle.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import numpy as np

from ckptlib.distributed.coordinator import Coordinator
from ckptlib.dtensor import as_slice, is_dtensor
from ckptlib.errors import InvalidTensorError
from ckptlib.format import dtypes
from ckptlib.format.bundle import HEADER_KEY, Entry, name_to_key
from ckptlib.format.slices import TensorSlice, overlaps, slice_key
from ckptlib.index_builder import Layout, Pending, index_bytes
from ckptlib.install import recover_interrupted_saves, write_bundle
from ckptlib.io_policy import DEFAULT, IOPolicy
from ckptlib.shard_plan import assign_shards
from ckptlib.shard_writer import write_shards
from ckptlib.slice_value import Slice
from ckptlib.store import NewFile, Store, store_for
from ckptlib.tree import tensors_of
from ckptlib.values import to_array


class BundleWriter:
    """Collects tensors, then writes them as one bundle at ``finish()``.

    ``num_shards`` data files are written in parallel, tensors spread over them to balance
    bytes; with ``num_shards=None``, as many as keep each near ``max_shard_bytes`` (a tensor
    larger than that gets a shard of its own). With ``sync`` (the default) every file and
    the directory are fsynced before the index appears, so a power loss cannot leave an
    index pointing at missing data. ``io`` sets the threads and process-wide settings the
    write may use (``IOPolicy``).
    """

    def __init__(
        self,
        prefix: str | os.PathLike[str],
        *,
        num_shards: int | None = 1,
        max_shard_bytes: int | None = None,
        sync: bool = True,
        io: IOPolicy = DEFAULT,
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
        self._io = io
        self._pending = Pending()
        self._keys: set[bytes] = set()
        self._sliced: dict[str, Entry] = {}  # full entries of partitioned tensors

    @property
    def pending(self) -> Pending:
        """The tensors added so far, not yet written (an asynchronous save swaps them for
        private copies)."""
        return self._pending

    @property
    def sync(self) -> bool:
        """Whether files are made durable before they become visible."""
        return self._sync

    @property
    def sliced(self) -> dict[str, Entry]:
        """The full entries of the partitioned tensors added so far, by name."""
        return self._sliced

    def add_all(self, tensors: Mapping[str, Any]) -> None:
        """``add`` every ``name: value`` of a flat mapping, in order. C-contiguous ndarrays
        of plain numeric types (the usual state) are taken in bulk, not one call each."""
        names, values = list(tensors), list(tensors.values())
        keys = _keys_of(names)
        fresh = set(keys) if keys is not None and b"" not in keys else set()
        if keys is None or len(fresh) != len(keys) or not self._keys.isdisjoint(fresh):
            for name, value in zip(names, values, strict=True):
                self.add(name, value)  # raises what is wrong, for the first value it concerns
            return
        enums = [
            dtypes.plain_enum(value.dtype) if type(value) is np.ndarray and value.flags.c_contiguous else None
            for value in values
        ]
        plain = np.array([enum is not None for enum in enums], dtype=bool)
        bounds = [0, *(np.flatnonzero(plain[1:] != plain[:-1]) + 1).tolist(), len(values)]
        for start, stop in itertools.pairwise(bounds):
            if not plain[start]:
                for name, value in zip(names[start:stop], values[start:stop], strict=True):
                    self.add(name, value)
                continue
            if stop - start == len(keys) and not self._keys:
                self._keys = fresh  # all plain, into an empty writer: the usual case
            else:
                self._keys.update(keys[start:stop])
            self._pending.keys += keys[start:stop]
            self._pending.dtypes += cast("list[int]", enums[start:stop])  # all plain in a run
            self._pending.arrays += values[start:stop]

    def keep_only(self, keys: set[bytes]) -> None:
        """Forget every tensor added whose index key is not in ``keys`` (a coordinated save
        writes a replica once, from one process)."""
        kept = [i for i, key in enumerate(self._pending.keys) if key in keys]
        pending = self._pending
        self._keys -= {key for key in pending.keys if key not in keys}
        pending.keys = [pending.keys[i] for i in kept]
        pending.dtypes = [pending.dtypes[i] for i in kept]
        pending.arrays = [pending.arrays[i] for i in kept]

    def add(self, name: str, value: Any, *, dtype: str | None = None) -> None:
        """Add a whole tensor, or one block of it given as a ``Slice`` (see ``add_slice``).
        ``dtype`` names a TF type to store instead of the array's own (only for types sharing
        its layout, e.g. ``"qint8"`` for an int8 array)."""
        if dtype is None and type(value) is np.ndarray and value.flags.c_contiguous:
            enum = dtypes.plain_enum(value.dtype)  # the common case, kept lean
            if enum is not None:
                self._pending.append(self._key(name), enum, value)
                return
        if is_dtensor(value):
            value = as_slice(value, name)
        if isinstance(value, Slice):
            self.add_slice(name, value.full_shape, value.tensor_slice(name), value.value, dtype=dtype)
            return
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

        The shards are written in parallel while this thread checksums every tensor and
        builds the index (see ``shard_writer``). On any failure nothing new remains and,
        on a store with rename, an existing bundle at the same prefix is left as it was
        (see ``install``). If no other save is running in the directory, what a killed save
        of this same prefix left behind is repaired first (``recover_interrupted_saves``).
        """
        store = store_for(self.prefix)
        directory, name = os.path.split(self.prefix)
        store.makedirs(directory)

        def repair() -> None:
            recover_interrupted_saves(store, directory, lambda prefix: os.path.basename(prefix) == name)

        with store.saving(directory, repair):
            self.write_to(store)
        return self.prefix

    def write_to(self, store: Store) -> None:
        """``finish``, for a caller already holding the store's save lock for the directory."""
        write_data = self._data_writer(store)
        with self._io.applied():
            write_bundle(store, self.prefix, write_data, self._num_shards, self._sync)

    def write_data_to(self, store: Store, final_paths: list[str]) -> tuple[list[NewFile], bytes]:
        """Write the data shards only, to new files that are to become ``final_paths`` (one
        per shard); return them, finished, and the bytes of the index they need (a
        coordinated save merges the indexes of several processes)."""
        write_data = self._data_writer(store)
        if len(final_paths) != self._num_shards:
            raise ValueError(f"{self._num_shards} shards to write, {len(final_paths)} paths given")
        with self._io.applied():
            return write_data(final_paths)

    def _data_writer(self, store: Store) -> Callable[[list[str]], tuple[list[NewFile], bytes]]:
        """Size the shards; return what writes them and builds the index (``write_bundle``'s
        ``write_data``)."""
        nbytes = self._pending.nbytes() if self._num_shards > 1 or self._requested_shards is None else None
        if self._requested_shards is None:
            assert self._max_shard_bytes is not None and nbytes is not None
            total = int(nbytes.sum())
            self._num_shards = max(1, min(len(self._pending), math.ceil(total / self._max_shard_bytes)))

        def write_data(finals: list[str]) -> tuple[list[NewFile], bytes]:
            shards = None if nbytes is None else assign_shards(nbytes, self._num_shards)
            layout = Layout(self._pending, shards)
            # given each shard's buffer sizes
            meanwhile = functools.partial(index_bytes, layout, num_shards=self._num_shards, sliced=self._sliced)
            known = None if nbytes is None or layout.string_crcs else layout.sizes_of(nbytes)
            threads = self._io.threads_for(store.io_threads)
            return write_shards(store, finals, layout.contents, self._sync, meanwhile, known, threads=threads)

        return write_data

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
        self._pending.append(key, entry.dtype, array)


def _keys_of(names: list[str]) -> list[bytes] | None:
    """``name_to_key`` of every name, in one encode; None when some name is not a str,
    holds a NUL, or cannot be encoded (``add`` then says which)."""
    try:
        joined = "\0".join(names)
    except TypeError:
        return None
    if joined.count("\0") != len(names) - 1:
        return None
    try:
        return joined.encode("utf-8", "surrogateescape").split(b"\0") if names else []
    except UnicodeEncodeError:
        return None


def save(
    tree: Any,
    prefix: str | os.PathLike[str],
    *,
    num_shards: int = 1,
    sync: bool = True,
    object_graph: bool = False,
    io: IOPolicy = DEFAULT,
    coordinator: Coordinator | None = None,
) -> str:
    """Write ``tree`` (a training state: nested dicts, lists, tuples, namedtuples or dataclasses
    of arrays, scalars, strings and None; see ``ckptlib.tree``) as a bundle at ``prefix``.

    Returns the prefix. Readable by ``tf.train.load_checkpoint(prefix)`` and by
    ``tf.compat.v1.train.Saver.restore``. Raises ``InvalidTensorError`` for values that
    cannot be stored, before any file is written. An empty mapping writes a checkpoint of
    no tensors (an index holding only its header), as TensorFlow does.

    With ``object_graph=True`` the tree is also written as a TF2 object graph (see
    ``ckptlib.object_tree``): ``tf.train.Checkpoint(**mirror).restore(prefix)`` restores a
    mirror of the tree, with ``save_counter`` 1, as after one ``tf.train.Checkpoint.save``.

    A ``ckptlib.Slice`` leaf is written as one slice of the tensor its path names, in the
    layout of TF's partitioned variables: TensorFlow (and ``restore``) read that tensor whole
    once every slice of it is in the checkpoint (merged from several saves), and ``restore``
    reads any block of it into a ``Slice`` target.

    ``prefix`` may be a URL (``s3://bucket/run/model.ckpt``; see ``ckptlib.store``). ``io``
    sets the threads and process-wide settings the save may use (``IOPolicy``).

    With a ``coordinator`` (``ckptlib.distributed``), every process of a job calls this with
    its own part of the state and the same ``prefix``: each writes its own data file, and
    the bundle appears, whole, once all have (see ``Saver`` for checkpoints with a state file).
    """
    if coordinator is not None and num_shards != 1:
        raise ValueError("a coordinated save writes one data file per process: num_shards must be 1")
    writer = BundleWriter(prefix, num_shards=num_shards, sync=sync, io=io)
    if coordinator is None:
        writer.add_all(tensors_of(tree, object_graph=object_graph))
        return writer.finish()
    from ckptlib.distributed.together import failing_together, save_together  # they build on this module

    with failing_together(coordinator):
        writer.add_all(tensors_of(tree, object_graph=object_graph))
    save_together(coordinator, writer)
    return writer.prefix
