"""Merge several bundles into one, as TensorFlow's ``MergeV2Checkpoints`` does.

Data files are renamed (never copied) to ``merged.data-<i>-of-<n>``, numbered in the order
they are first referenced when walking the inputs in order, keys sorted; the merged index
is written last, so the result appears whole or not at all: if any step fails, the data
files are renamed back and the inputs are left as they were. The input indexes are
removed once the merged index is in place.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

from ckptlib.errors import CorruptCheckpointError, InvalidTensorError
from ckptlib.format.bundle import HEADER_KEY, Entry, encode_entry, encode_header
from ckptlib.format.table import build_table
from ckptlib.reader import BundleReader
from ckptlib.save_lock import saving
from ckptlib.storage import fsync_dir, remove_quietly, write_temp
from ckptlib.writer import data_filename, index_filename


def merge_bundles(
    prefixes: Sequence[str | os.PathLike[str]], merged_prefix: str | os.PathLike[str], *, sync: bool = True
) -> str:
    """Merge the bundles at ``prefixes`` into one at ``merged_prefix``; returns it.

    A tensor key present in two inputs is an error (``InvalidTensorError``), except the full
    entries of a partitioned tensor, whose slice lists are joined.
    """
    merged_prefix = os.fspath(merged_prefix)
    readers = [BundleReader(p) for p in prefixes]
    try:
        if len({r.header.big_endian for r in readers}) > 1:
            raise CorruptCheckpointError("merging bundles with conflicting endianness")
        entries: dict[bytes, Entry] = {}
        file_ids: dict[tuple[int, int], int] = {}
        for i, reader in enumerate(readers):
            for key, entry in reader.raw_entries():
                known = entries.get(key)
                if entry.slices and known is not None and known.slices:
                    entries[key] = known._replace(slices=known.slices + entry.slices)
                    continue
                if known is not None:
                    raise InvalidTensorError(
                        "duplicate tensor in merged bundles", tensor=key.decode("utf-8", "replace")
                    )
                # Renumbered even for a partitioned tensor's dataless full entry, as TF does.
                shard = file_ids.setdefault((i, entry.shard_id), len(file_ids))
                entries[key] = entry._replace(shard_id=shard)
        sources = {(i, s): data_filename(readers[i].prefix, s, readers[i].header.num_shards) for i, s in file_ids}
    finally:
        for reader in readers:
            reader.close()
    num_files = len(file_ids)
    directory = os.path.dirname(merged_prefix)
    if directory:
        os.makedirs(directory, exist_ok=True)
    items = [(HEADER_KEY, encode_header(num_files))]
    items += sorted((key, encode_entry(entry)) for key, entry in entries.items())
    # Held like a save: a repair elsewhere must not take the temporary index for a leftover.
    with saving(directory):
        moved: list[tuple[str, str]] = []
        temp = None
        try:
            for source, new_id in file_ids.items():
                target = data_filename(merged_prefix, new_id, num_files)
                os.replace(sources[source], target)
                moved.append((target, sources[source]))
            temp = write_temp(index_filename(merged_prefix), [build_table(items)], sync)
            if sync:
                fsync_dir(directory)
            os.replace(temp, index_filename(merged_prefix))
        except BaseException:
            # The inputs' data files go back where their indexes expect them.
            if temp is not None:
                remove_quietly(temp)
            for now_at, was_at in reversed(moved):
                with contextlib.suppress(OSError):
                    os.replace(now_at, was_at)
            raise
    if sync:
        fsync_dir(directory)
    for prefix in prefixes:
        if os.fspath(prefix) != merged_prefix:
            remove_quietly(index_filename(os.fspath(prefix)))
    return merged_prefix
