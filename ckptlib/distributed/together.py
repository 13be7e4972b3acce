"""A bundle written by several processes at once, becoming visible as one checkpoint.

::

    every process                                 rank 0
    1  manifest of what it holds     -- gather -> the same plan everywhere (``plan``)
    2  writes its own data file, durable, under a temporary name where the store renames
                                     -- gather -> every data file's name and index entries
    3                                             merges the entries; puts every data file
                                                  in place, then the index (the commit mark),
                                                  as one process does (``install``)
                                     -- gather
    4                                             state file and rotation
                                     -- gather -> the outcome, on every process

Every gather also carries each process's outcome so far: a process that fails raises its
own error, and every other one raises ``CoordinationError`` naming it, at the same step,
after taking its own file away again; a process that dies makes the gather raise (the
coordinator's timeout bounds the wait). Until rank 0 installs the index nothing new is
visible, and an install that fails puts back the bundle it was replacing, so a failure at
any step leaves the previous checkpoints as they were. What a killed process left (its
temporary file) is swept by a later save, under the store's save lock.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterator

import numpy as np

from ckptlib.distributed.coordinator import Coordinator
from ckptlib.distributed.plan import Manifest, make_plan, manifest_of
from ckptlib.errors import CoordinationError, CorruptCheckpointError, InvalidTensorError, UnsupportedFeatureError
from ckptlib.format.bundle import HEADER_KEY, Entry, decode_entry, encode_entry, encode_header
from ckptlib.format.filenames import data_filename, index_filename
from ckptlib.format.table import BytesSource, TableReader, build_table
from ckptlib.install import install_files, recover_interrupted_saves, remove_stale_shards
from ckptlib.store import NewFile, Store, store_for
from ckptlib.writer import BundleWriter

logger = logging.getLogger("ckptlib")

_OK, _FAILED = b"\x00", b"\x01"


def exchange(coordinator: Coordinator, step: Callable[[], bytes], what: str) -> list[bytes]:
    """Run ``step`` here, then gather every process's result; raise this process's error,
    or a ``CoordinationError`` naming the processes that failed."""
    error: Exception | None = None
    try:
        payload = _OK + step()
    except Exception as e:
        error = e
        payload = _FAILED + f"{type(e).__name__}: {e}".encode("utf-8", "replace")[:4000]
    try:
        gathered = coordinator.all_gather(payload)
    except Exception as e:
        raise _shared(e) from error
    if error is not None:
        raise _shared(error)
    failed = [(rank, data[1:].decode("utf-8", "replace")) for rank, data in enumerate(gathered) if data[:1] != _OK]
    if failed:
        detail = "; ".join(f"rank {rank}: {message}" for rank, message in failed)
        raise _shared(CoordinationError(f"the coordinated save failed while {what}: {detail}"))
    return [data[1:] for data in gathered]


def _shared(error: Exception) -> Exception:
    """Mark an error every process of the save has raised or will raise at this step."""
    error._ckptlib_exchanged = True  # type: ignore[attr-defined]
    return error


@contextlib.contextmanager
def failing_together(coordinator: Coordinator | None) -> Iterator[None]:
    """Around a coordinated save, from the first thing a process does for it (flattening
    its state, copying it, taking the save lock): an error raised before the save's first
    exchange is raised here and, through that exchange, as ``CoordinationError`` on every
    other process, instead of leaving them waiting. Errors of the exchanges themselves,
    which every process already sees, pass through."""
    try:
        yield
    except Exception as error:
        if coordinator is not None and not getattr(error, "_ckptlib_exchanged", False):
            exchange(coordinator, functools.partial(_reraise, error), "describing the state")
        raise


def _reraise(error: Exception) -> bytes:
    raise error


def write_together(
    coordinator: Coordinator,
    store: Store,
    writer: BundleWriter,
    sync: bool,
    commit: Callable[[], None] | None,
) -> None:
    """Write ``writer``'s tensors, together with the same call on every other process, as
    one bundle at its prefix; then, on rank 0, run ``commit`` (state file, rotation). Every
    process returns once the checkpoint is committed, or raises.

    On a store with rename, each process writes its data file under a temporary name and
    rank 0 alone puts every file in place, the index last, as a single process does
    (``install.install_files``): a bundle already at the prefix is replaced, and comes back
    if anything fails. On a store without rename the data files go straight to their final
    names, the index last, and a bundle already there is refused."""
    prefix = writer.prefix
    rank = coordinator.rank
    index_path = index_filename(prefix)

    def describe() -> bytes:
        if rank == 0 and not store.atomic_rename and store.exists(index_path):
            raise UnsupportedFeatureError(
                "a checkpoint already exists here, and this store cannot replace one atomically (it has no "
                "rename): save under a new prefix (a new step), or delete the old checkpoint first",
                path=prefix,
            )
        return manifest_of(prefix, writer.pending, writer.sliced).encode()

    manifests = [Manifest.decode(m) for m in exchange(coordinator, describe, "describing the state")]
    mine: list[NewFile] = []
    finals: list[str] = []  # the bundle's data files, by shard
    shard_of: dict[int, int] = {}

    def write() -> bytes:
        plan = make_plan(manifests)  # the same on every process
        shard_of.update(plan.shard_of)
        finals.extend(data_filename(prefix, plan.shard_of[r], plan.num_shards) for r in sorted(plan.shard_of))
        writer.keep_only(plan.owned[rank])
        if rank == 0:
            for name, record in plan.merged.items():
                writer.add(name, np.array(record, dtype=object))
            if plan.dropped:
                logger.warning(
                    "the processes saved conflicting parts of a tree: %s left out of %s (it restores as {name: array})",
                    ", ".join(sorted(plan.dropped)),
                    prefix,
                )
        if rank not in plan.shard_of:
            return b""
        files, index = writer.write_data_to(store, [finals[plan.shard_of[rank]]])
        mine.extend(files)
        path = files[0].path.encode("utf-8", "surrogateescape")
        return len(path).to_bytes(4, "little") + path + index

    def put_in_place(written: list[bytes]) -> bytes:
        if rank != 0:
            return b""
        temps: list[str] = []  # by rank, so by shard
        indexes: list[bytes] = []
        for data in written:
            if not data:
                indexes.append(b"")
                continue
            size = int.from_bytes(data[:4], "little")
            temps.append(data[4 : 4 + size].decode("utf-8", "surrogateescape"))
            indexes.append(data[4 + size :])
        index = merged_index(indexes, shard_of, len(finals))
        if not store.atomic_rename:
            _write_index(store, index_path, index, sync)
            remove_stale_shards(store, prefix, finals)
            return b""
        new_index = store.create(index_path, len(index), sync=sync)
        try:
            new_index.write_at(0, [memoryview(index)], len(index))
            new_index.finish(sync)
        except BaseException:
            new_index.abort()
            raise
        install_files(store, prefix, [*temps, new_index.path], [*finals, index_path], sync)
        return b""

    try:
        written = exchange(coordinator, write, "writing the data files")
        exchange(coordinator, functools.partial(put_in_place, written), "putting the checkpoint in place")
    except BaseException:
        # Rank 0 puts everything back itself if its install fails; here each process takes
        # its own file away, unless an index made it part of a checkpoint (rank 0 may have
        # died just after writing it).
        if mine and not (not store.atomic_rename and _exists(store, index_path)):
            with contextlib.suppress(OSError):
                mine[0].abort()
        raise

    def commit_it() -> bytes:
        if rank == 0 and commit is not None:
            commit()
        return b""

    exchange(coordinator, commit_it, "committing")


def _exists(store: Store, path: str) -> bool:
    try:
        return store.exists(path)
    except OSError:
        return True  # unknown: keep what may be a checkpoint's


def merged_index(indexes: list[bytes], shard_of: dict[int, int], num_shards: int) -> bytes:
    """One index from every process's (each of a one-shard bundle): shard numbers made the
    global ones, and the slice lists of partitioned tensors joined."""
    entries: dict[bytes, Entry] = {}
    for rank, index in enumerate(indexes):
        if not index:
            continue
        for key, value in TableReader(BytesSource(index)).items():
            if key == HEADER_KEY:
                continue
            entry = decode_entry(value)
            known = entries.get(key)
            if entry.slices:
                if known is None:
                    entries[key] = entry
                else:
                    extra = tuple(s for s in entry.slices if s not in known.slices)
                    entries[key] = known._replace(slices=known.slices + extra)
                continue
            if known is not None:
                raise InvalidTensorError("written by two processes", tensor=key.decode("utf-8", "replace"))
            if rank not in shard_of:
                raise CorruptCheckpointError(f"rank {rank} sent index entries but writes no data file")
            entries[key] = entry._replace(shard_id=shard_of[rank])
    items = [(HEADER_KEY, encode_header(num_shards))]
    items += sorted((key, encode_entry(entry)) for key, entry in entries.items())
    return build_table(items)


def _write_index(store: Store, path: str, index: bytes, sync: bool) -> None:
    """The index of a bundle whose data files are in place (a store without rename): last."""
    new = store.create(path, len(index), sync=sync)
    try:
        new.write_at(0, [memoryview(index)], len(index))
        new.finish(sync)
    except BaseException:
        new.abort()
        raise


def save_together(coordinator: Coordinator, writer: BundleWriter) -> None:
    """``BundleWriter.finish`` for a bundle written by several processes (``ckptlib.save``)."""
    store = store_for(writer.prefix)
    directory, name = os.path.split(writer.prefix)
    store.makedirs(directory)

    def repair() -> None:
        recover_interrupted_saves(store, directory, lambda prefix: os.path.basename(prefix) == name)

    with store.saving(directory, repair):
        write_together(coordinator, store, writer, writer.sync, None)
