"""Read one checkpoint lazily: the index at open, each tensor's bytes only when asked for.

Every size, offset and shape taken from the index is checked against the real size of the
file it points into before anything is allocated, so a hostile index cannot make the
reader allocate more than the checkpoint's own size. Checksums are verified by default.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import mmap
import os
from abc import abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import numpy as np

from ckptlib.bulk_read import read_spans
from ckptlib.errors import (
    CheckpointError,
    CheckpointTooLargeError,
    ChecksumMismatchError,
    CorruptCheckpointError,
    DtypeMismatchError,
    InvalidTensorError,
    ShapeMismatchError,
    TensorNotFoundError,
    UnsupportedFeatureError,
)
from ckptlib.format import dtypes
from ckptlib.format.bundle import HEADER_KEY, Entry, Header, decode_entry, decode_header, key_to_name, name_to_key
from ckptlib.format.bundle_columns import EntryColumns, decode_plain_entries_at, keys_to_names
from ckptlib.format.crc import crc32c, unmask
from ckptlib.format.crc_columns import unmask_all
from ckptlib.format.filenames import data_filename, index_filename
from ckptlib.format.object_graph import OBJECT_GRAPH_KEY
from ckptlib.format.slices import check_tiling, intersection, region, shifted, slice_key
from ckptlib.format.strings import decode_strings
from ckptlib.format.table import TableReader
from ckptlib.io_policy import DEFAULT, IOPolicy
from ckptlib.object_graph_view import ObjectGraph
from ckptlib.span_checks import check_spans
from ckptlib.store import ReadFile, store_for

_Method = TypeVar("_Method", bound=Callable[..., Any])


def too_large_if_out_of_memory(method: _Method) -> _Method:
    """Make ``method`` of a reader raise ``CheckpointTooLargeError`` naming the checkpoint
    (and the tensor, the method's first argument if it is a name) where it would run out
    of memory: a valid checkpoint can need more than this process may allocate."""

    @functools.wraps(method)
    def bounded(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except CheckpointError:
            raise
        except MemoryError as e:
            detail = f" ({e})" if str(e) else ""
            named = args and isinstance(args[0], str) and method.__name__ != "__init__"
            tensor = args[0] if named else None
            prefix = getattr(self, "prefix", None)
            raise CheckpointTooLargeError(f"too large for this memory{detail}", path=prefix, tensor=tensor) from None

    return cast(_Method, bounded)


# A TF2 object graph may be at most this large beside a checkpoint's tensors (a Keras model's
# graph takes a few hundred bytes per tensor: layers and functional nodes hold none)
_GRAPH_BASE_BYTES = 1 << 20
_GRAPH_BYTES_PER_TENSOR = 8 << 10


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as stored: TF dtype name, shape, bytes of data, and the shard holding it
    (None for a partitioned tensor, whose slices may sit in several)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    shard: int | None
    num_slices: int = 0


class CheckpointReader(Mapping[str, np.ndarray]):
    """A checkpoint as a read-only mapping from tensor name to numpy array, read lazily.

    Returned by ``ckptlib.load_checkpoint``; the V2 bundle and the legacy V1 format share
    this interface, which follows TensorFlow's ``CheckpointReader``.
    """

    prefix: str

    @abstractmethod
    def keys_list(self) -> list[str]:
        """Tensor names in key order (partitioned tensors by their full name)."""

    @abstractmethod
    def shape(self, name: str) -> tuple[int, ...]:
        """The stored shape of ``name``; raises ``TensorNotFoundError``."""

    @abstractmethod
    def dtype_name(self, name: str) -> str:
        """TensorFlow's name for the stored dtype (``"float32"``, ``"bfloat16"``, ``"qint8"``...)."""

    @abstractmethod
    def get_tensor(self, name: str) -> np.ndarray:
        """Read one tensor (strings as an object array of ``bytes``), checksums verified."""

    @functools.cached_property
    def object_graph(self) -> ObjectGraph | None:
        """The TF2 object graph (``tf.train.Checkpoint``'s ``_CHECKPOINTABLE_OBJECT_GRAPH``):
        every object path to each tensor, and which tensors are optimizer slots; None for a
        checkpoint without one. Read on first use; a damaged graph raises ``CorruptCheckpointError``."""
        keys = self.keys_list()
        if OBJECT_GRAPH_KEY not in keys:
            return None
        value = self.get_tensor(OBJECT_GRAPH_KEY)
        if value.shape != () or not isinstance(value.item(), bytes):
            raise CorruptCheckpointError(
                "damaged object graph: not a string scalar", path=self.prefix, tensor=OBJECT_GRAPH_KEY
            )
        data = value.item()
        limit = _GRAPH_BASE_BYTES + _GRAPH_BYTES_PER_TENSOR * len(keys)
        if len(data) > limit:  # parsing costs time and memory by the node: bound it by the checkpoint
            raise CorruptCheckpointError(
                f"damaged object graph: {len(data)} bytes, more than the {limit} allowed beside {len(keys)} tensors",
                path=self.prefix,
                tensor=OBJECT_GRAPH_KEY,
            )
        return ObjectGraph.parse(data, set(keys), self.prefix)

    @too_large_if_out_of_memory
    def verify(self, progress: Callable[[int, int], None] | None = None) -> list[CheckpointError]:
        """Check everything a restore checks; returns the problems found (empty: ``restore``
        and ``get_tensor`` succeed on every tensor).

        Every block of the index (the metaindex too) and every entry is checked, and every
        tensor read as ``get_tensor`` reads it: its dtype, shape and size, its place inside
        its shard, its slices, its string lengths and its checksum. Tensors ckptlib cannot
        decode (DT_VARIANT, an unknown dtype) are reported as ``UnsupportedFeatureError``,
        since restore refuses them too. Entries that claim the same bytes are reported alone,
        without reading any tensor. ``progress(done, total)`` is called after each tensor.
        """
        try:
            self._verify_structure()
            names = self.keys_list()
        except CheckpointError as e:
            return [e]
        problems = self._verify_layout()
        if problems:  # entries claiming the same bytes: reading each could cost the file's size per entry
            return problems
        for i, name in enumerate(names):
            try:
                self._verify_tensor(name)
            except CheckpointError as e:
                problems.append(e)
            if progress is not None:
                progress(i + 1, len(names))
        return problems

    def _verify_layout(self) -> list[CheckpointError]:
        """Checks a whole-checkpoint restore makes beyond those of each tensor."""
        return []

    def _verify_tensor(self, name: str) -> None:
        self.get_tensor(name)

    @abstractmethod
    def _verify_structure(self) -> None:
        """Read and check every index/table block; raise on the first problem."""

    @abstractmethod
    def close(self) -> None:
        """Release open files (also done by ``with``)."""

    @property
    @abstractmethod
    def files(self) -> list[str]:
        """Every file the checkpoint consists of, present or not (index first)."""

    @abstractmethod
    def tensor_info(self, name: str) -> TensorInfo:
        """Where and how ``name`` is stored, without reading its data."""

    def read_all(self, names: Collection[str] | None = None) -> dict[str, np.ndarray]:
        """Every tensor (or those ``names`` lists), by name in key order, as ``get_tensor``
        returns it (``restore`` uses this); raises for the first damaged tensor, and
        ``TensorNotFoundError`` for a listed name the checkpoint lacks."""
        return {name: self.get_tensor(name) for name in _selected(self.keys_list(), names, self.prefix)}

    def read_into(self, name: str, out: np.ndarray) -> np.ndarray:
        """Read ``name`` into the existing array ``out`` (same shape and dtype) and return it.

        Raises ``ShapeMismatchError``/``DtypeMismatchError`` before reading anything.
        """
        _check_target(self, name, out)
        np.copyto(out, self.get_tensor(name), casting="no")
        return out

    def get_slice(
        self, name: str, offsets: Sequence[int], shape: Sequence[int], out: np.ndarray | None = None
    ) -> np.ndarray:
        """The block of tensor ``name`` that starts at ``offsets`` and spans ``shape``, into
        ``out`` (same shape and dtype as the block) or new memory.

        The tensor may be stored whole or as slices of any split; only the stored pieces the
        block overlaps are read, each whole, so its checksum is verified. Raises
        ``ShapeMismatchError`` for a block outside the tensor (or ``out`` of another shape),
        ``DtypeMismatchError`` for ``out`` of another dtype, ``CorruptCheckpointError`` when
        the stored slices do not cover the block exactly, all before anything is read.
        """
        bounds = _block_bounds(self.shape(name), offsets, shape, name)
        if out is not None:
            _check_out(out, tuple(stop - start for start, stop in bounds), self.dtype(name), name)
        return _into(out, self.get_tensor(name)[region(bounds)])

    def dtype(self, name: str) -> np.dtype:
        """The numpy dtype ``get_tensor(name)`` returns (``object`` for strings)."""
        row = dtypes.by_name(self.dtype_name(name))
        return row.numpy if row.numpy is not None else np.dtype(object)

    def has_tensor(self, name: str) -> bool:
        try:
            self.shape(name)
        except TensorNotFoundError:
            return False
        return True

    def get_variable_to_shape_map(self) -> dict[str, list[int]]:
        return {name: list(self.shape(name)) for name in self.keys_list()}

    def get_variable_to_dtype_map(self) -> dict[str, np.dtype]:
        return {name: self.dtype(name) for name in self.keys_list()}

    def __getitem__(self, name: str) -> np.ndarray:
        return self.get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys_list())

    def __len__(self) -> int:
        return len(self.keys_list())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.has_tensor(name)

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.prefix!r})"


class BundleReader(CheckpointReader):
    """A V2 checkpoint: ``prefix.index`` and its data shards.

    Names are listed like TensorFlow's: the header and the per-slice keys of partitioned
    tensors are hidden; a partitioned tensor appears under its full name and is assembled
    on read.
    """

    @too_large_if_out_of_memory
    def __init__(
        self,
        prefix: str | os.PathLike[str],
        *,
        verify_checksums: bool = True,
        mmap: bool = False,
        io: IOPolicy = DEFAULT,
    ):
        self.prefix = os.fspath(prefix)
        self.verify_checksums = verify_checksums
        self.mmap = mmap
        self._io = io
        self._index_path = index_filename(self.prefix)
        self._store = store_for(self.prefix)
        # Maps only where the store has them; elsewhere mmap=True reads as mmap=False does.
        self._maps = mmap and self._store.can_map
        self._index = self._store.open(self._index_path)
        self._shards: dict[int, ReadFile] = {}
        # Bytes get_tensor has read, and the size of the shards opened: more read than
        # opened means tensors were read twice, or entries alias (see _check_location).
        self._bytes_read = 0
        self._bytes_opened = 0
        self._overlaps_checked = False
        self._overlap: str | None = None  # what overlaps, once found
        self._entries: OrderedDict[str, Entry] = OrderedDict()  # oldest first
        self._names: list[str] | None = None
        try:
            self._table = TableReader(self._index, verify=verify_checksums)
            key, value = self._table.first()
            if key != HEADER_KEY:
                raise CorruptCheckpointError("the first index entry is not the bundle header")
            self.header: Header = decode_header(value)
        except CheckpointError as e:
            self._index.close()
            raise e.with_context(path=self._index_path) from None

    # -- TensorFlow's CheckpointReader surface ---------------------------------------
    @too_large_if_out_of_memory
    def keys_list(self) -> list[str]:
        if self._names is None:
            with self._context():
                keys = [key for key in self._table.iter_keys() if key != HEADER_KEY]
            hidden: set[bytes] = set()
            # Slice keys start with a 0 byte (OrderedCode's NumIncreasing(0)). Only when some
            # key does must every entry be decoded to learn which keys its slices hide;
            # otherwise entries are decoded lazily, when a tensor is asked for.
            if keys and min(keys)[:1] == b"\0":
                for key, entry in self.raw_entries():
                    hidden.update(slice_key(key_to_name(key), s) for s in entry.slices)
            self._names = [key_to_name(key) for key in keys if key not in hidden]
        return self._names

    def raw_entries(self) -> Iterator[tuple[bytes, Entry]]:
        """Every ``(key, entry)`` of the index except the header, slice keys included."""
        with self._context():
            for key, value in self._table.items():
                if key != HEADER_KEY:
                    yield key, self._decode(key_to_name(key), value)

    def entry(self, name: str) -> Entry:
        """The index entry of ``name``; raises ``TensorNotFoundError``."""
        entry = self._entries.get(name)
        if entry is None:
            try:
                value = self._table.get(name_to_key(name))
            except (TensorNotFoundError, InvalidTensorError):
                raise TensorNotFoundError("not found in checkpoint", path=self.prefix, tensor=name) from None
            except CheckpointError as e:
                raise e.with_context(path=self._index_path, tensor=name) from None
            entry = self._entries[name] = self._decode(name, value)
            if len(self._entries) > _ENTRY_CACHE_SIZE:  # a decoded entry takes ~300 bytes
                self._entries.popitem(last=False)
        return entry

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entry(name).shape

    def dtype_name(self, name: str) -> str:
        return dtypes.lookup(self.entry(name).dtype).name

    @property
    def files(self) -> list[str]:
        shards = self.header.num_shards
        return [self._index_path, *(data_filename(self.prefix, i, shards) for i in range(shards))]

    def tensor_info(self, name: str) -> TensorInfo:
        entry = self.entry(name)
        dtype = dtypes.lookup(entry.dtype).name
        if not entry.slices:
            return TensorInfo(name, dtype, entry.shape, entry.size, entry.shard_id)
        pieces = [self.entry(key_to_name(slice_key(name, s))) for s in entry.slices]
        return TensorInfo(name, dtype, entry.shape, sum(p.size for p in pieces), None, len(pieces))

    @too_large_if_out_of_memory
    def get_tensor(self, name: str) -> np.ndarray:
        entry = self.entry(name)
        try:
            check_numpy_rank(entry.shape)
            if entry.slices:
                return self._assemble(name, entry)
            return self._read(entry)
        except CheckpointError as e:
            raise e.with_context(path=self._index_path, tensor=name) from None

    @too_large_if_out_of_memory
    def get_slice(
        self, name: str, offsets: Sequence[int], shape: Sequence[int], out: np.ndarray | None = None
    ) -> np.ndarray:
        entry = self.entry(name)
        bounds = _block_bounds(entry.shape, offsets, shape, name)
        if out is not None:
            _check_out(out, tuple(stop - start for start, stop in bounds), self.dtype(name), name)
        try:
            check_numpy_rank(entry.shape)
            if entry.slices:
                return self._gather(name, entry, bounds, out)
            return _into(out, self._read(entry)[region(bounds)])
        except CheckpointError as e:
            raise e.with_context(path=self._index_path, tensor=name) from None

    @too_large_if_out_of_memory
    def read_all(self, names: Collection[str] | None = None) -> dict[str, np.ndarray]:
        """Every tensor (or those ``names`` lists), by name in key order, as ``get_tensor``
        returns it: private memory (all of it one buffer, which any array still held keeps
        whole), or views of memory-mapped files with ``mmap=True``.

        One pass over the index decodes every entry at once; entries whose data overlap
        are refused (``CorruptCheckpointError``). Checksums are checked a run of
        back-to-back tensors at a time, on several threads (``bulk_read``, ``span_checks``).
        Every value is read and every checksum verified before this returns; the first
        damaged tensor in key order raises as ``get_tensor`` would.
        """
        if self.header.big_endian:
            return super().read_all(names)
        with self._io.applied():
            return self._read_all_at_once(names)

    def _read_all_at_once(self, wanted: Collection[str] | None) -> dict[str, np.ndarray]:
        keys, columns, rest, value = self._entry_columns()
        self._refuse_overlaps(keys, columns, rest, value)
        if columns is None:
            return super().read_all(wanted)  # get_tensor raises, naming the tensor
        partitioned = bool(keys) and min(keys)[:1] == b"\0"  # slice keys (hidden) start with a 0 byte
        skip = np.zeros(len(keys), dtype=bool)
        skip[rest] = True
        if partitioned:  # slices are read by get_tensor, which assembles them
            skip |= np.array([key[:1] == b"\0" for key in keys], dtype=bool)
        row_names = keys_to_names(keys)
        if wanted is not None:
            chosen = set(_selected(self.keys_list(), wanted, self.prefix))
            skip |= np.array([name not in chosen for name in row_names], dtype=bool)
        arrays = self._map_plain(columns, skip) if self._maps else self._copy_plain(columns, skip)
        if partitioned or wanted is not None:
            by_name = {row_names[row]: array for row, array in arrays.items()}
            names = _selected(self.keys_list(), wanted, self.prefix)
            return {name: by_name[name] if name in by_name else self.get_tensor(name) for name in names}
        self._names = row_names
        if len(arrays) == len(row_names):  # every tensor read, in row order
            return dict(zip(row_names, arrays.values(), strict=True))
        return {name: arrays[row] if row in arrays else self.get_tensor(name) for row, name in enumerate(row_names)}

    def _entry_columns(self) -> tuple[list[bytes], EntryColumns | None, list[int], Callable[[int], bytes]]:
        """Every key but the header, in order, with its entry decoded column-wise; the rows
        whose entries need ``decode_entry`` one by one; each row's raw value. Columns are
        None if some entry is damaged (``get_tensor`` then says which)."""
        with self._context():
            table = self._table.columns()
        keys, starts, ends = table.keys, table.value_starts, table.value_ends
        if keys and keys[0] == HEADER_KEY:
            keys, starts, ends = keys[1:], starts[1:], ends[1:]

        def value(row: int) -> bytes:
            return table.data[int(starts[row]) : int(ends[row])]

        try:
            columns, rest = decode_plain_entries_at(table.data, starts, ends)
        except CheckpointError:
            return keys, None, [], value
        return keys, columns, rest, value

    def _refuse_overlaps(
        self, keys: list[bytes], columns: EntryColumns | None, rest: list[int], value: Callable[[int], bytes]
    ) -> None:
        """Raise ``CorruptCheckpointError`` if two entries' data overlap in a shard.

        No writer produces that, and it would let a small index make a reader checksum and
        copy the same bytes without end (20,000 names for one 64 MiB region). Entries that
        cannot be decoded here are left to ``get_tensor``, which refuses them."""
        if not self._overlaps_checked:
            self._overlap = self._find_overlap(keys, columns, rest, value)
            self._overlaps_checked = True
        if self._overlap is not None:
            raise CorruptCheckpointError(self._overlap, path=self._index_path)

    def _find_overlap(
        self, keys: list[bytes], columns: EntryColumns | None, rest: list[int], value: Callable[[int], bytes]
    ) -> str | None:
        if columns is None:
            rest = list(range(len(keys)))
            shard_ids, offsets, sizes = (np.zeros(0, dtype=np.int64) for _ in range(3))
            rows = np.zeros(0, dtype=np.int64)
        else:
            plain = np.ones(len(keys), dtype=bool)
            plain[rest] = False
            rows = np.flatnonzero(plain & (columns.sizes > 0))
            shard_ids, offsets, sizes = (c[rows].astype(np.int64) for c in columns[2:5])
        extra = []
        for row in rest:
            with contextlib.suppress(CheckpointError):
                entry = decode_entry(value(row))
                if entry.size > 0 and not entry.slices:
                    extra.append((row, entry.shard_id, entry.offset, entry.size))
        if extra:
            more = np.array(extra, dtype=np.int64).T
            rows, shard_ids, offsets, sizes = (
                np.concatenate(p) for p in zip((rows, shard_ids, offsets, sizes), more, strict=True)
            )
        order = np.lexsort((offsets, shard_ids))
        shard, start, size = shard_ids[order], offsets[order], sizes[order]
        # start[i+1] - start[i] < size[i], not start[i] + size[i] > start[i+1]: no overflow
        clash = np.flatnonzero((shard[1:] == shard[:-1]) & (start[1:] - start[:-1] < size[:-1]))
        if not len(clash):
            return None
        i = int(clash[0])
        a, b = (key_to_name(keys[int(rows[order[j]])]) for j in (i, i + 1))
        return (
            f"index entries overlap: {a!r} at [{start[i]}, {start[i] + size[i]}) and {b!r} at "
            f"[{start[i + 1]}, {start[i + 1] + size[i + 1]}) of shard {shard[i]}"
        )

    def _inside_shards(self, columns: EntryColumns) -> tuple[np.ndarray, np.ndarray]:
        """Which entries hold bytes that lie inside their (existing) shard, and every
        entry's shard id clipped to the shard count."""
        file_sizes = np.full(self.header.num_shards + 1, -1, dtype=np.int64)  # -1: missing or out of range
        for shard_id in np.unique(columns.shard_ids).tolist():
            with contextlib.suppress(CheckpointError):
                file_sizes[shard_id] = self._shard(shard_id).size
        shard_ids = np.minimum(columns.shard_ids, self.header.num_shards)
        # offset <= size - n, not offset + n <= size: a hostile offset near 2**63 must not wrap
        inside = (columns.sizes > 0) & (columns.offsets <= file_sizes[shard_ids] - columns.sizes)
        return inside, shard_ids

    def _plain_rows(
        self, columns: EntryColumns, skip: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, dict[int, np.dtype | None]]:
        """The rows that are numeric, non-empty, not marked in ``skip``, inside their shard;
        every entry's shard id (clipped to the shard count); the numpy dtype of each
        DataType present."""
        inside, shard_ids = self._inside_shards(columns)
        if columns.shapes and max(map(len, columns.shapes)) > NUMPY_MAX_RANK:  # get_tensor refuses those
            inside &= np.fromiter(map(len, columns.shapes), np.int64, len(columns.shapes)) <= NUMPY_MAX_RANK
        by_enum = {enum: dtypes.numpy_dtype(enum) for enum in np.unique(columns.dtypes).tolist()}
        usable = inside & np.isin(columns.dtypes, [enum for enum, found in by_enum.items() if found is not None])
        usable &= ~skip
        return np.flatnonzero(usable), shard_ids, by_enum

    def _map_plain(self, columns: EntryColumns, skip: np.ndarray) -> dict[int, np.ndarray]:
        """Arrays viewing the memory-mapped shards for the entries (by row) that are
        numeric, non-empty, not in ``skip``, inside their shard and (if verifying) intact;
        the others are left for ``get_tensor``, which reports what is wrong with them."""
        rows, shard_ids, by_enum = self._plain_rows(columns, skip)
        row_list = rows.tolist()
        used = np.unique(shard_ids[rows]).tolist()
        # Each array's base is a byte array over its shard's map, which holds a buffer export
        # of the map for as long as any array lives (closing the map then fails quietly: see
        # LocalFile.close). np.ndarray(buffer=the map itself) would hold none.
        bases = {i: np.frombuffer(cast("mmap.mmap", self._shards[i].mapped()), np.uint8) for i in used}
        shapes = columns.shapes if len(row_list) == len(columns.shapes) else [columns.shapes[i] for i in row_list]
        numpy_dtypes = list(map(by_enum.__getitem__, columns.dtypes[rows].tolist()))
        row_bases = (
            itertools.repeat(bases[used[0]]) if len(used) == 1 else map(bases.__getitem__, shard_ids[rows].tolist())
        )
        offsets = columns.offsets[rows]

        def make_arrays() -> dict[int, np.ndarray]:
            return dict(zip(row_list, map(np.ndarray, shapes, numpy_dtypes, row_bases, offsets.tolist()), strict=True))

        if not self.verify_checksums:
            return make_arrays()
        views = {i: cast("memoryview", self._shards[i].mapped_view()) for i in used}
        intact, arrays = check_spans(
            views,
            shard_ids[rows],
            offsets,
            columns.sizes[rows],
            unmask_all(columns.crcs[rows]),
            make_arrays,
            threads=self._io.threads_for(self._store.io_threads),
        )
        for row in rows[~intact].tolist():
            del arrays[row]
        return arrays

    def _copy_plain(self, columns: EntryColumns, skip: np.ndarray) -> dict[int, np.ndarray]:
        """Arrays of private memory for the entries (by row) ``_map_plain`` would map, all
        views of one buffer the shards are read into (``bulk_read``), checked there, so
        that what is returned is what was verified; damaged ones are left out, for
        ``get_tensor`` to report."""
        rows, shard_ids, by_enum = self._plain_rows(columns, skip)
        row_list = rows.tolist()
        shapes = columns.shapes if len(row_list) == len(columns.shapes) else [columns.shapes[i] for i in row_list]
        numpy_dtypes = list(map(by_enum.__getitem__, columns.dtypes[rows].tolist()))

        def make_arrays(buffer: np.ndarray, places: np.ndarray) -> dict[int, np.ndarray]:
            views = map(np.ndarray, shapes, numpy_dtypes, itertools.repeat(buffer), places.tolist())
            return dict(zip(row_list, views, strict=True))

        expected = unmask_all(columns.crcs[rows]) if self.verify_checksums else None
        intact, arrays = read_spans(
            self._shards,
            shard_ids[rows],
            columns.offsets[rows],
            columns.sizes[rows],
            expected,
            make_arrays,
            threads=self._io.threads_for(self._store.io_threads),
        )
        for row in rows[~intact].tolist():
            del arrays[row]
        return arrays

    def _verify_structure(self) -> None:
        with self._context():
            self._table.verify_all()

    def _verify_layout(self) -> list[CheckpointError]:
        """Entries whose data overlap, reported alone: reading them would be unbounded work."""
        try:
            self._refuse_overlaps(*self._entry_columns())
        except CheckpointError as e:
            return [e]
        return []

    def _verify_tensor(self, name: str) -> None:
        """``get_tensor``; for a tensor of a dtype it cannot decode (DT_VARIANT), its bytes'
        place and checksum are checked before that is reported, so damage shows as damage."""
        try:
            self.get_tensor(name)
        except UnsupportedFeatureError:
            entry = self.entry(name)
            if not entry.slices:
                with self._context(tensor=name):
                    shard = self._check_location(entry)  # bounds the buffer below by the file's size
                    if self.verify_checksums:
                        raw = memoryview(bytearray(entry.size))
                        self._check_crc(entry, _read_checksummed(shard, entry.offset, raw, True) or 0, shard)
            raise

    def close(self) -> None:
        self._index.close()
        for shard in self._shards.values():
            shard.close()
        self._shards.clear()

    # -- internals -------------------------------------------------------------------
    def _context(self, tensor: str | None = None) -> _ErrorContext:
        return _ErrorContext(self._index_path, tensor)

    def _decode(self, name: str, value: bytes) -> Entry:
        try:
            return decode_entry(value)
        except CheckpointError as e:
            raise e.with_context(path=self._index_path, tensor=name) from None

    def _shard(self, shard_id: int) -> ReadFile:
        shard = self._shards.get(shard_id)
        if shard is None:
            if shard_id >= self.header.num_shards:
                raise CorruptCheckpointError(
                    f"entry refers to shard {shard_id} but the bundle has {self.header.num_shards}"
                )
            path = data_filename(self.prefix, shard_id, self.header.num_shards)
            shard = self._shards[shard_id] = self._store.open(path)
            self._bytes_opened += shard.size
        return shard

    def _check_location(self, entry: Entry) -> ReadFile:
        """The shard holding ``entry``'s data, which must lie inside it and overlap no
        other entry's: the index is checked for overlaps once this reader has read more
        than its open shards hold (tensors read again, or names aliasing the same bytes),
        so reading tensor by tensor costs at most the data files' size before that."""
        shard = self._shard(entry.shard_id)
        if entry.offset + entry.size > shard.size:
            raise CorruptCheckpointError(
                f"data at [{entry.offset}, {entry.offset + entry.size}) lies past the end of "
                f"{os.path.basename(shard.path)} ({shard.size} bytes)"
            )
        if not self._overlaps_checked:
            self._bytes_read += entry.size
            if self._bytes_read > self._bytes_opened:
                self._refuse_overlaps(*self._entry_columns())
        elif self._overlap is not None:
            raise CorruptCheckpointError(self._overlap, path=self._index_path)
        return shard

    def _read(self, entry: Entry, out: np.ndarray | None = None) -> np.ndarray:
        """One unsliced tensor: a view of the memory-mapped shard, or read into ``out``
        (a C-contiguous array of the right shape and dtype) or into new memory."""
        if out is None and self._maps and entry.size and not self.header.big_endian:
            numpy_dtype = dtypes.numpy_dtype(entry.dtype)
            if numpy_dtype is not None:  # the common case, kept lean: no copy, one checksum
                shard = self._check_location(entry)
                raw = cast("memoryview", shard.mapped_view())[entry.offset : entry.offset + entry.size]
                if self.verify_checksums:
                    self._check_crc(entry, crc32c(raw), shard)
                return np.frombuffer(raw, dtype=numpy_dtype).reshape(entry.shape)
        row = dtypes.lookup(entry.dtype)
        if entry.dtype == dtypes.DT_STRING:
            shard = self._check_location(entry)
            data = shard.read_at(entry.offset, entry.size)
            masked = entry.crc32c if self.verify_checksums else None
            try:
                values = decode_strings(data, entry.num_elements, masked)
            except CheckpointError as e:
                raise e.with_context(path=shard.path) from None
            strings = np.empty(len(values), dtype=object)
            strings[:] = values
            if out is None:
                return strings.reshape(entry.shape)
            out[...] = strings.reshape(entry.shape)
            return out
        if row.numpy is None:
            raise UnsupportedFeatureError(f"reading {row.name} tensors is not supported")
        shard = self._check_location(entry)
        if out is None:
            out = np.empty(entry.shape, dtype=row.numpy)
        raw = out.reshape(-1).view(np.uint8).data
        crc = _read_checksummed(shard, entry.offset, raw, self.verify_checksums)
        if crc is not None:
            self._check_crc(entry, crc, shard)
        if self.header.big_endian:
            out.byteswap(inplace=True)
        return out

    def _check_crc(self, entry: Entry, actual: int, shard: ReadFile) -> None:
        if actual != unmask(entry.crc32c):
            raise ChecksumMismatchError(
                f"checksum does not match: stored {unmask(entry.crc32c):08x}, "
                f"computed {actual:08x} on {entry.size} bytes at offset {entry.offset}",
                path=shard.path,
            )

    @too_large_if_out_of_memory
    def read_into(self, name: str, out: np.ndarray) -> np.ndarray:
        entry = self.entry(name)
        with self._context(tensor=name):
            check_numpy_rank(entry.shape)
        _check_target(self, name, out)
        with self._context(tensor=name):
            if not entry.slices and out.flags.c_contiguous and out.flags.writeable:
                return self._read(entry, out)
        return super().read_into(name, out)

    def _assemble(self, name: str, full: Entry) -> np.ndarray:
        """Build a partitioned tensor from its slices, after checking that they tile it."""
        return self._gather(name, full, tuple((0, dim) for dim in full.shape), None)

    def _gather(
        self, name: str, full: Entry, bounds: tuple[tuple[int, int], ...], out: np.ndarray | None
    ) -> np.ndarray:
        """The block ``bounds`` of a partitioned tensor, from the slices it overlaps (read
        whole, checksums verified), after checking that those tile the block exactly."""
        if dtypes.numpy_dtype(full.dtype) is None and full.dtype != dtypes.DT_STRING:
            # Checked first: without an item size, nothing bounds the pieces by real bytes.
            raise UnsupportedFeatureError(f"partitioned {dtypes.lookup(full.dtype).name} tensors are not supported")
        origin = [start for start, _ in bounds]
        block_shape = tuple(stop - start for start, stop in bounds)
        hits = []
        for tensor_slice in full.slices:
            key = slice_key(name, tensor_slice)
            try:
                value = self._table.get(key)
            except TensorNotFoundError:
                raise CorruptCheckpointError(f"slice {tensor_slice} is listed but not stored") from None
            piece = decode_entry(value)
            expected = tensor_slice.shape(full.shape)
            if piece.slices or piece.shape != expected or piece.dtype != full.dtype:
                raise CorruptCheckpointError(
                    f"slice {tensor_slice} is stored with dtype {piece.dtype} shape {list(piece.shape)}, "
                    f"expected dtype {full.dtype} shape {list(expected)}"
                )
            piece_bounds = tensor_slice.bounds(full.shape)
            common = intersection(piece_bounds, bounds)
            if common is not None:  # pieces the block does not touch are never read
                self._check_location(piece)
                hits.append((common, piece_bounds, piece))
        try:
            check_tiling([shifted(common, origin) for common, _, _ in hits], block_shape)
        except CorruptCheckpointError as e:
            whole = all(d == stop - start for d, (start, stop) in zip(full.shape, bounds, strict=True))
            asked = "the whole tensor" if whole else f"the block {[list(b) for b in bounds]}"
            held = sum(math.prod(stop - start for start, stop in common) for common, _, _ in hits)
            raise CorruptCheckpointError(
                f"{e.reason}: {len(full.slices)} slice(s) stored, covering {held} of the "
                f"{math.prod(block_shape)} elements of {asked} (a part of a checkpoint saved by several processes?)"
            ) from None
        if out is None:
            row = dtypes.lookup(full.dtype)
            out = np.empty(block_shape, dtype=row.numpy if row.numpy is not None else object)
        for common, piece_bounds, piece in hits:
            out[region(shifted(common, origin))] = self._read(piece)[
                region(shifted(common, [s for s, _ in piece_bounds]))
            ]
        return out


def _block_bounds(
    full_shape: Sequence[int], offsets: Sequence[int], shape: Sequence[int], name: str
) -> tuple[tuple[int, int], ...]:
    """``(start, stop)`` per dimension of the block at ``offsets`` spanning ``shape``; raises
    ``ShapeMismatchError`` unless it lies inside a tensor of ``full_shape``."""
    offsets, shape = tuple(int(o) for o in offsets), tuple(int(d) for d in shape)
    bounds = tuple((start, start + n) for start, n in zip(offsets, shape, strict=False))
    fits = len(offsets) == len(shape) == len(full_shape) and all(
        0 <= start <= stop <= dim for (start, stop), dim in zip(bounds, full_shape, strict=False)
    )
    if not fits:
        raise ShapeMismatchError(
            f"a block at offsets {list(offsets)} of shape {list(shape)} does not lie inside the "
            f"checkpoint's shape {list(full_shape)}",
            tensor=name,
        )
    return bounds


def _check_out(out: np.ndarray, shape: tuple[int, ...], dtype: np.dtype, name: str) -> None:
    if out.shape != shape:
        raise ShapeMismatchError(f"target shape {list(out.shape)}, the block has {list(shape)}", tensor=name)
    if out.dtype != dtype:
        raise DtypeMismatchError(f"target dtype {out.dtype}, checkpoint has {dtype}", tensor=name)


def _into(out: np.ndarray | None, block: np.ndarray) -> np.ndarray:
    """``block`` copied into ``out`` or into new memory of its own (not a view that would
    keep the whole tensor it was cut from alive)."""
    if out is None:
        return block.copy()
    out[...] = block
    return out


def _check_target(reader: CheckpointReader, name: str, out: np.ndarray) -> None:
    shape, dtype = tuple(reader.shape(name)), reader.dtype(name)
    if out.shape != shape:
        raise ShapeMismatchError(f"target shape {list(out.shape)}, checkpoint has {list(shape)}", tensor=name)
    if out.dtype != dtype:
        raise DtypeMismatchError(f"target dtype {out.dtype}, checkpoint has {dtype}", tensor=name)


def _numpy_max_rank() -> int:
    """The most dimensions this numpy's arrays may have (32 before numpy 2, 64 since)."""
    for rank in (64, 32):
        try:
            np.empty((1,) * rank)
        except ValueError:
            continue
        return rank
    return 32


NUMPY_MAX_RANK = _numpy_max_rank()


def check_numpy_rank(shape: tuple[int, ...]) -> None:
    """Refuse a shape that TensorFlow allows (up to rank 254) but numpy cannot hold."""
    if len(shape) > NUMPY_MAX_RANK:
        raise UnsupportedFeatureError(
            f"a tensor of rank {len(shape)} cannot be read: numpy arrays have at most {NUMPY_MAX_RANK} dimensions"
        )


# Decoded index entries kept for lookups by name; more are decoded again when asked for.
_ENTRY_CACHE_SIZE = 1 << 16

# Tensors at least this large are read in chunks, each checksummed on another thread while
# the next is read (both release the GIL).
_PIPELINE_BYTES = 8 << 20


def _read_checksummed(shard: ReadFile, offset: int, raw: memoryview, verify: bool) -> int | None:
    """Fill ``raw`` from ``shard`` at ``offset``; returns the crc32c of the bytes if ``verify``."""
    if not verify:
        shard.readinto(offset, raw)
        return None
    if raw.nbytes < 2 * _PIPELINE_BYTES:
        shard.readinto(offset, raw)
        return crc32c(raw)
    state = [0]

    def extend(part: memoryview) -> None:
        state[0] = crc32c(part, state[0])

    with ThreadPoolExecutor(1) as checksummer:  # one worker: chunks are checksummed in order
        futures = []
        for start in range(0, raw.nbytes, _PIPELINE_BYTES):
            part = raw[start : start + _PIPELINE_BYTES]
            shard.readinto(offset + start, part)
            futures.append(checksummer.submit(extend, part))
    for future in futures:
        future.result()
    return state[0]


def _selected(keys: list[str], names: Collection[str] | None, prefix: str) -> list[str]:
    """``keys`` (all, or those in ``names``), in key order; raises ``TensorNotFoundError``
    for a name not among them."""
    if names is None:
        return keys
    wanted = set(names)
    missing = sorted(wanted.difference(keys))
    if missing:
        raise TensorNotFoundError("not found in checkpoint", path=prefix, tensor=missing[0])
    return [key for key in keys if key in wanted]


class _ErrorContext:
    """Adds the file (and tensor) to any ckptlib error raised inside the block."""

    def __init__(self, path: str, tensor: str | None):
        self._path = path
        self._tensor = tensor

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, CheckpointError):
            exc.with_context(path=self._path, tensor=self._tensor)
