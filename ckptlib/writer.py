"""Write one bundle: ``prefix.data-NNNNN-of-MMMMM`` shards and the ``prefix.index`` table.

Commit order (a reader never sees a half-written bundle): every shard is written and
flushed under a temporary name and renamed into place, then the index is written the same
way and renamed last; the index is what makes a bundle exist. Tensor bytes go to disk
straight from each array's buffer, with their crc32c computed on that same buffer.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import heapq
import itertools
import math
import operator
import os
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, cast

import numpy as np

from ckptlib.errors import CheckpointError, InvalidTensorError
from ckptlib.format import dtypes
from ckptlib.format.bulk_table import build_table_from_columns
from ckptlib.format.bundle import (
    HEADER_KEY,
    Entry,
    decode_header,
    encode_entry,
    encode_header,
    encode_plain_entries,
    name_to_key,
)
from ckptlib.format.crc import crc32c_each_releasing, mask_all
from ckptlib.format.slices import TensorSlice, overlaps, slice_key
from ckptlib.format.strings import encode_strings
from ckptlib.format.table import TableReader
from ckptlib.format.vector_coding import concat_segments
from ckptlib.gc_pause import gc_paused
from ckptlib.save_lock import saving
from ckptlib.shard_writer import write_shards
from ckptlib.storage import (
    ASIDE_MARKER,
    TEMP_MARKER,
    LocalFile,
    aside_path,
    fsync_dir,
    leftover_files,
    remove_quietly,
    write_temp,
)
from ckptlib.tree import tensors_of
from ckptlib.values import to_array


def data_filename(prefix: str, shard_id: int, num_shards: int) -> str:
    return f"{prefix}.data-{shard_id:05d}-of-{num_shards:05d}"


def index_filename(prefix: str) -> str:
    return f"{prefix}.index"


class _Pending:
    """The tensors (and slices of tensors) waiting to be written, as columns: index key,
    DataType and array (whose shape is the tensor's)."""

    def __init__(self) -> None:
        self.keys: list[bytes] = []
        self.dtypes: list[int] = []
        self.arrays: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self.keys)

    def append(self, key: bytes, dtype: int, array: np.ndarray) -> None:
        self.keys.append(key)
        self.dtypes.append(dtype)
        self.arrays.append(array)

    def nbytes(self) -> np.ndarray:
        """Each tensor's bytes; for a string tensor, its elements' bytes plus a length byte
        each (close to its encoded size, which is known only once encoded)."""
        sizes = np.fromiter(map(_NBYTES, self.arrays), dtype=np.int64, count=len(self.arrays))
        for i in np.flatnonzero(np.asarray(self.dtypes, dtype=np.int64) == dtypes.DT_STRING).tolist():
            elements = self.arrays[i].reshape(-1)
            sizes[i] = sum(map(len, elements)) + len(elements)
        return sizes


class _Layout:
    """Where ``finish`` puts each tensor: every shard's contents as buffers (numeric tensors
    are their own arrays, written and checksummed straight from their memory), and, once
    ``place`` is given the buffers' sizes, each tensor's shard, offset and size. ``keys``,
    ``dtypes`` and ``arrays`` list the tensors shard by shard."""

    def __init__(self, pending: _Pending, shards: list[list[int]] | None):
        self.order: list[int] | None = None
        if shards is None:  # one shard, in the order added
            self.keys, self.dtypes, self.arrays = pending.keys, pending.dtypes, pending.arrays
            counts = [len(pending)]
        else:
            self.order = order = [i for shard in shards for i in shard]
            self.keys = [pending.keys[i] for i in order]
            self.dtypes = [pending.dtypes[i] for i in order]
            self.arrays = [pending.arrays[i] for i in order]
            counts = [len(shard) for shard in shards]
        self.counts = counts
        self.contents: list[list[Any]] = []
        self.string_crcs: dict[int, int] = {}  # masked crcs of string tensors, by place
        # With string tensors, how many buffers hold each tensor of a shard (numeric ones: 1)
        self.buffer_counts: list[list[int]] = []
        has_strings = dtypes.DT_STRING in self.dtypes
        first = 0
        for count in counts:
            arrays = self.arrays[first : first + count]
            self.contents.append(self._with_strings(arrays, first) if has_strings else arrays)
            first += count
        self.sizes = self.shard_ids = self.offsets = np.zeros(0, np.int64)

    def sizes_of(self, nbytes: np.ndarray) -> list[np.ndarray]:
        """Each shard's buffer sizes, given every pending tensor's (none a string tensor)."""
        placed = nbytes if self.order is None else nbytes[self.order]
        return np.split(placed, np.cumsum(self.counts)[:-1])

    def place(self, sizes_by_shard: list[np.ndarray]) -> None:
        """Set every tensor's size, shard and offset from each shard's buffer sizes."""
        if self.buffer_counts:  # add up the buffers of each tensor
            sizes_by_shard = [
                np.add.reduceat(sizes, np.cumsum(counts) - counts) if len(counts) else sizes[:0]
                for sizes, counts in zip(sizes_by_shard, map(np.array, self.buffer_counts), strict=True)
            ]
        self.sizes = np.concatenate([np.zeros(0, np.int64), *sizes_by_shard])
        self.shard_ids = np.repeat(np.arange(len(self.counts)), self.counts)
        self.offsets = np.concatenate([np.zeros(0, np.int64), *(np.cumsum(s) - s for s in sizes_by_shard)])

    def numeric(self) -> tuple[np.ndarray, list[np.ndarray]]:
        """The places of the numeric tensors, and their arrays."""
        if not self.string_crcs:
            return np.arange(len(self.arrays)), self.arrays
        places = np.setdiff1d(np.arange(len(self.arrays)), list(self.string_crcs))
        return places, [self.arrays[i] for i in places.tolist()]

    def _with_strings(self, arrays: list[np.ndarray], first: int) -> list[Any]:
        """A shard's buffers, each string tensor encoded (see ``_string_buffers``); ``first``
        is the place of the shard's first tensor."""
        buffers: list[Any] = []
        counts: list[int] = []
        for i, array in enumerate(arrays):
            if array.dtype == object:
                chunks, _, self.string_crcs[first + i] = encode_strings(list(array.reshape(-1)))
                encoded = _string_buffers(chunks)
                buffers += encoded
                counts.append(len(encoded))
            else:
                buffers.append(array)
                counts.append(1)
        self.buffer_counts.append(counts)
        return buffers


# A string element at least this large is written from its own bytes, not copied.
STRING_OWN_BUFFER = 64 << 10


def _string_buffers(chunks: list[bytes]) -> list[memoryview]:
    """A string tensor's chunks (lengths, their checksum, then every element) as few
    buffers: runs of small chunks joined, every element of ``STRING_OWN_BUFFER`` bytes
    or more left as it is, so that saving large strings holds no second copy of them
    (elements below that size are copied into the joined runs)."""
    buffers: list[memoryview] = []
    run: list[bytes] = []
    for chunk in chunks:
        if len(chunk) < STRING_OWN_BUFFER:
            run.append(chunk)
            continue
        if run:
            buffers.append(memoryview(b"".join(run)))
            run = []
        buffers.append(memoryview(chunk))
    if run or not buffers:
        buffers.append(memoryview(b"".join(run)))
    return buffers


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
        self._pending = _Pending()
        self._keys: set[bytes] = set()
        self._sliced: dict[str, Entry] = {}  # full entries of partitioned tensors

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

    def add(self, name: str, value: Any, *, dtype: str | None = None) -> None:
        """Add a whole tensor. ``dtype`` names a TF type to store instead of the array's own
        (only for types sharing its layout, e.g. ``"qint8"`` for an int8 array)."""
        if dtype is None and type(value) is np.ndarray and value.flags.c_contiguous:
            enum = dtypes.plain_enum(value.dtype)  # the common case, kept lean
            if enum is not None:
                self._pending.append(self._key(name), enum, value)
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
        builds the index (see ``shard_writer``). On any failure every temporary file is
        removed and an existing bundle at the same prefix is left as it was (see ``_install``).
        If no other save is running in the directory, what a killed save of this same prefix
        left behind is repaired first (see ``recover_interrupted_saves``).
        """
        directory = os.path.dirname(self.prefix)
        if directory:
            os.makedirs(directory, exist_ok=True)
        name = os.path.basename(self.prefix)
        with saving(directory, lambda: recover_interrupted_saves(directory, lambda p: os.path.basename(p) == name)):
            return self._write()

    def _write(self) -> str:
        nbytes = self._pending.nbytes() if self._num_shards > 1 or self._requested_shards is None else None
        if self._requested_shards is None:
            assert self._max_shard_bytes is not None and nbytes is not None
            total = int(nbytes.sum())
            self._num_shards = max(1, min(len(self._pending), math.ceil(total / self._max_shard_bytes)))
        finals = [data_filename(self.prefix, i, self._num_shards) for i in range(self._num_shards)]
        with gc_paused():
            layout = _Layout(self._pending, None if nbytes is None else self._assign_shards(nbytes))
            index_of = functools.partial(self._index_bytes, layout)  # given each shard's buffer sizes
            known = None if nbytes is None or layout.string_crcs else layout.sizes_of(nbytes)
            temps, index = write_shards(finals, layout.contents, self._sync, index_of, known)
        try:
            temps.append(write_temp(index_filename(self.prefix), [index], self._sync))
        except BaseException:
            for temp in temps:
                remove_quietly(temp)
            raise
        _install(self.prefix, temps, [*finals, index_filename(self.prefix)], self._sync)
        return self.prefix

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

    def _assign_shards(self, nbytes: np.ndarray) -> list[list[int]] | None:
        """Spread tensors over shards to balance their bytes; each shard lists its tensors
        (by place in ``_pending``) in the order they were added. None: one shard, everything
        in order.

        Large tensors (an eighth of a shard's share or more) go first, largest first onto
        the least-filled shard. The rest, in the order added, top the shards up to one
        common level in consecutive runs: neighbours stay together (a reader checks
        back-to-back tensors in one pass), and no shard is left short by more than about
        one small tensor.
        """
        count = self._num_shards
        if count == 1:
            return None
        weights = np.maximum(nbytes, 1)
        share = int(weights.sum()) / count
        owner = np.empty(len(weights), dtype=np.int64)
        is_large = weights * 8 >= share
        large = np.flatnonzero(is_large)
        heap = [(0, shard) for shard in range(count)]  # (load, shard): the least filled on top
        for i in large[np.argsort(-weights[large], kind="stable")].tolist():
            load, shard = heap[0]
            owner[i] = shard
            heapq.heapreplace(heap, (load + int(weights[i]), shard))
        loads = np.zeros(count, dtype=np.float64)
        for load, shard in heap:
            loads[shard] = load
        small = np.flatnonzero(~is_large)
        ends = np.cumsum(weights[small])
        room = np.cumsum(np.maximum(_fill_level(loads, float(ends[-1]) if len(ends) else 0.0) - loads, 0))
        middles = ends - weights[small] / 2
        owner[small] = np.minimum(np.searchsorted(room, middles, side="right"), count - 1)
        order = np.argsort(owner, kind="stable")
        return [part.tolist() for part in np.split(order, np.cumsum(np.bincount(owner, minlength=count))[:-1])]

    def _index_bytes(self, layout: _Layout, sizes_by_shard: list[np.ndarray]) -> bytes:
        """Checksum every numeric tensor's bytes and build the index table."""
        layout.place(sizes_by_shard)
        crcs = np.empty(len(layout.keys), dtype=np.uint32)
        places, numeric = layout.numeric()
        crcs[places] = mask_all(crc32c_each_releasing(numeric))
        for i, crc in layout.string_crcs.items():
            crcs[i] = crc
        shapes = [array.shape for array in layout.arrays]
        values, lengths = encode_plain_entries(
            layout.dtypes, shapes, layout.shard_ids, layout.offsets, layout.sizes, crcs
        )
        others = [(HEADER_KEY, encode_header(self._num_shards))]
        others += [(name_to_key(name), encode_entry(entry)) for name, entry in self._sliced.items()]
        keys = layout.keys + [key for key, _ in others]
        values = np.concatenate([values, np.frombuffer(b"".join(value for _, value in others), np.uint8)])
        lengths = np.concatenate([lengths, np.fromiter((len(value) for _, value in others), np.int64, len(others))])
        order = np.array(sorted(range(len(keys)), key=keys.__getitem__), dtype=np.int64)
        starts = np.cumsum(lengths) - lengths
        return build_table_from_columns(
            [keys[i] for i in order], concat_segments(values, starts[order], lengths[order]), lengths[order]
        )


_NBYTES = operator.attrgetter("nbytes")


def _fill_level(loads: np.ndarray, amount: float) -> float:
    """The level to which ``amount`` more tops up every load below it (water filling)."""
    ordered = np.sort(loads)
    below = np.cumsum(ordered)
    for k in range(1, len(ordered) + 1):  # fill the k least loaded shards
        level = (amount + below[k - 1]) / k
        if k == len(ordered) or level <= ordered[k]:
            return float(level)
    return 0.0  # no shards


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


def _install(prefix: str, temps: list[str], finals: list[str], sync: bool) -> None:
    """Rename ``temps`` to ``finals`` (the index last), replacing any bundle at ``prefix``.

    An existing bundle is first moved aside: its index before its data, so no reader can
    ever pair an old index with new data. On failure the new files are removed and the old
    bundle is put back; on success its leftovers (say, shards of another shard count) go.
    After a kill, ``recover_interrupted_saves``, run by a later save, puts the old bundle
    back (or drops it if the new one had been completed).

    An earlier save of this prefix killed mid-install and not repaired yet (another save was
    running) left files aside: they are repaired first, as a later save would, so that only
    ever one generation of files is aside.
    """
    directory = os.path.dirname(prefix)
    index = index_filename(prefix)
    name = os.path.basename(prefix)
    earlier = {
        final: aside
        for aside, final in leftover_files(directory, ASIDE_MARKER)
        if os.path.basename(_bundle_prefix(final) or "") == name
    }
    if earlier:
        _recover_bundle(os.path.join(directory, name), earlier)
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


def recover_interrupted_saves(directory: str, owns: Callable[[str], bool], own_files: Collection[str] = ()) -> None:
    """Repair what killed saves left in ``directory``: a bundle whose prefix ``owns`` accepts
    that was being replaced gets its old files back unless the new index made it, and the
    temporary files of those bundles and of ``own_files`` (names: a saver's state file and
    deletion journal) go.

    Only for a caller holding the directory's save lock exclusively (``save_lock``): every
    writer of these files is gone then. Other savers' files are theirs to repair.
    """
    by_prefix: dict[str, dict[str, str]] = {}
    for aside, final in leftover_files(directory, ASIDE_MARKER):
        prefix = _bundle_prefix(final)
        if prefix is not None and owns(prefix):
            by_prefix.setdefault(prefix, {})[final] = aside
    for prefix, asides in by_prefix.items():
        _recover_bundle(prefix, asides)
    for temp, final in leftover_files(directory, TEMP_MARKER):
        prefix = _bundle_prefix(final)
        if os.path.basename(final) in own_files if prefix is None else owns(prefix):
            remove_quietly(temp)


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
    tree: Any,
    prefix: str | os.PathLike[str],
    *,
    num_shards: int = 1,
    sync: bool = True,
    object_graph: bool = False,
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
    """
    writer = BundleWriter(prefix, num_shards=num_shards, sync=sync)
    writer.add_all(tensors_of(tree, object_graph=object_graph))
    return writer.finish()
