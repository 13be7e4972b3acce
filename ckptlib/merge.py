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

from ckptlib.errors import CorruptCheckpointError, InvalidTensorError, UnsupportedFeatureError
from ckptlib.format.bundle import HEADER_KEY, Entry, encode_entry, encode_header
from ckptlib.format.filenames import data_filename, index_filename
from ckptlib.format.table import build_table
from ckptlib.reader import BundleReader
from ckptlib.store import store_for


def merge_bundles(
    prefixes: Sequence[str | os.PathLike[str]], merged_prefix: str | os.PathLike[str], *, sync: bool = True
) -> str:
    """Merge the bundles at ``prefixes`` into one at ``merged_prefix``; returns it.

    A tensor key present in two inputs is an error (``InvalidTensorError``), except the full
    entries of a partitioned tensor, whose slice lists are joined.
    """
    merged_prefix = os.fspath(merged_prefix)
    store = store_for(merged_prefix)
    if not store.atomic_rename or any(store_for(os.fspath(p)) is not store for p in prefixes):
        raise UnsupportedFeatureError(
            "merging bundles renames their data files: it needs them all on one store with rename (local files)",
            path=merged_prefix,
        )
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
    store.makedirs(directory)
    items = [(HEADER_KEY, encode_header(num_files))]
    items += sorted((key, encode_entry(entry)) for key, entry in entries.items())
    index = build_table(items)
    # Held like a save: a repair elsewhere must not take the temporary index for a leftover.
    with store.saving(directory, None):
        moved: list[tuple[str, str]] = []
        index_file = None
        try:
            for source, new_id in file_ids.items():
                target = data_filename(merged_prefix, new_id, num_files)
                store.rename(sources[source], target)
                moved.append((target, sources[source]))
            index_file = store.create(index_filename(merged_prefix), len(index), sync=sync)
            index_file.write_at(0, [memoryview(index)], len(index))
            index_file.finish(sync)
            if sync:
                store.sync_dir(directory)
            store.rename(index_file.path, index_filename(merged_prefix))
        except BaseException:
            # The inputs' data files go back where their indexes expect them.
            if index_file is not None:
                index_file.abort()
            for now_at, was_at in reversed(moved):
                with contextlib.suppress(OSError):
                    store.rename(now_at, was_at)
            raise
    if sync:
        store.sync_dir(directory)
    for prefix in prefixes:
        if os.fspath(prefix) != merged_prefix:
            store.delete(index_filename(os.fspath(prefix)))
    return merged_prefix
