"""A bundle's contents laid out for writing, and its index built from where they landed.

``Pending`` holds what was added (key, DataType, array); ``Layout`` places it in shards as
buffers to write (numeric tensors are their own arrays: written and checksummed straight
from their memory; string tensors are encoded); ``index_bytes`` then checksums every
tensor and builds the index table, column-wise (``format/bulk_table``).
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Any

import numpy as np

from ckptlib.format import dtypes
from ckptlib.format.bulk_table import build_table_from_columns
from ckptlib.format.bundle import HEADER_KEY, Entry, encode_entry, encode_header, name_to_key
from ckptlib.format.bundle_columns import encode_plain_entries
from ckptlib.format.crc_columns import crc32c_each_releasing, mask_all
from ckptlib.format.strings import encode_strings
from ckptlib.format.vector_coding import concat_segments

_NBYTES = operator.attrgetter("nbytes")


class Pending:
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


class Layout:
    """Where ``finish`` puts each tensor: every shard's contents as buffers (numeric tensors
    are their own arrays, written and checksummed straight from their memory), and, once
    ``place`` is given the buffers' sizes, each tensor's shard, offset and size. ``keys``,
    ``dtypes`` and ``arrays`` list the tensors shard by shard."""

    def __init__(self, pending: Pending, shards: list[list[int]] | None):
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


def index_bytes(
    layout: Layout, sizes_by_shard: list[np.ndarray], num_shards: int, sliced: Mapping[str, Entry]
) -> bytes:
    """Checksum every numeric tensor's bytes and build the index table."""
    layout.place(sizes_by_shard)
    crcs = np.empty(len(layout.keys), dtype=np.uint32)
    places, numeric = layout.numeric()
    crcs[places] = mask_all(crc32c_each_releasing(numeric))
    for i, crc in layout.string_crcs.items():
        crcs[i] = crc
    shapes = [array.shape for array in layout.arrays]
    values, lengths = encode_plain_entries(layout.dtypes, shapes, layout.shard_ids, layout.offsets, layout.sizes, crcs)
    others = [(HEADER_KEY, encode_header(num_shards))]
    others += [(name_to_key(name), encode_entry(entry)) for name, entry in sliced.items()]
    keys = layout.keys + [key for key, _ in others]
    values = np.concatenate([values, np.frombuffer(b"".join(value for _, value in others), np.uint8)])
    lengths = np.concatenate([lengths, np.fromiter((len(value) for _, value in others), np.int64, len(others))])
    order = np.array(sorted(range(len(keys)), key=keys.__getitem__), dtype=np.int64)
    starts = np.cumsum(lengths) - lengths
    return build_table_from_columns(
        [keys[i] for i in order], concat_segments(values, starts[order], lengths[order]), lengths[order]
    )
