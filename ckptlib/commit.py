"""THE commit protocol: how a save becomes visible, once, for every store and every saver.

``Saver`` and ``CheckpointManager`` supply only names (``Naming``) and, per save, what
their retention policy decided (``Retention``). A save becomes visible in three durable
steps, so that a kill at any instant leaves the previous latest checkpoint restorable::

    1. the bundle: data shards, then the index, the commit mark      (install.write_bundle)
    2. the state file names it: merged with the entries of other       (update_state)
       savers sharing the directory, replaced atomically under the
       store's lock or by a conditional write, retried
    3. rotation: what the policy dropped is noted in a journal         (rotation)
       before step 2, and deleted after it, index first

All of it runs while the store's save lock for the directory is held (``Store.saving``).
What a killed save left (temporary files, a bundle moved aside, noted deletions) is
repaired by a later save of the same checkpoints when the store can tell that no save is
running: reading never writes.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ckptlib.checkpoint import present
from ckptlib.distributed.coordinator import Coordinator
from ckptlib.distributed.together import failing_together, write_together
from ckptlib.errors import CheckpointNotFoundError, CorruptCheckpointError
from ckptlib.format.filenames import index_filename
from ckptlib.install import recover_interrupted_saves, remove_unindexed_data
from ckptlib.rotation import JOURNAL_NAME, finish_deletions, inside, note_deletions, owner
from ckptlib.state import (
    MAX_STATE_FILE_BYTES,
    CheckpointState,
    format_state_bytes,
    is_absolute,
    parse_state_bytes,
    read_state_file,
    relative_to,
    resolve,
    resolve_all,
    state_file_path,
)
from ckptlib.store import Store, store_for
from ckptlib.store.temp_names import TEMP_MARKER, leftovers
from ckptlib.writer import BundleWriter

logger = logging.getLogger("ckptlib")

Record = tuple[str, float]  # (prefix, timestamp)


@dataclass(frozen=True)
class Naming:
    """Where a saver's checkpoints live and which are its own."""

    directory: str
    state_name: str | None  # the state file's name (None: ``checkpoint``)
    journal: str  # its deletion journal (``rotation.deletion_journal``)
    owns: Callable[[str], bool]  # is this prefix one this saver makes?
    meta: bool = True  # delete a dropped checkpoint's ``.meta`` file too (TF1's Saver does)


@dataclass(frozen=True)
class Retention:
    """What a saver's policy decided for one save, once its bundle is written."""

    latest: Record  # the new checkpoint, named by the state file's model_checkpoint_path
    mine: Sequence[Record]  # the saver's entries, oldest first, replacing every one it ``owns``
    doomed: Sequence[str]  # prefixes to delete once no longer listed
    owns: Callable[[str], bool]  # which listed entries ``mine`` replaces
    undo: Callable[[], None]  # put the policy's bookkeeping back if the state file was not replaced
    relative: bool = True
    last_preserved: float | None = None  # None: keep the file's


@dataclass(frozen=True)
class Listing:
    """A state file's content with prefixes resolved against its directory."""

    latest: str
    records: list[Record]  # (prefix, timestamp), oldest first
    has_timestamps: bool  # False for TF1-written files: timestamps are index mtimes then
    last_preserved: float


def save(
    store: Store,
    naming: Naming,
    writer: BundleWriter,
    retain: Callable[[], Retention] | None,
    *,
    sync: bool,
    before_write: Callable[[], None] | None = None,
    coordinator: Coordinator | None = None,
) -> None:
    """Write ``writer``'s bundle and, with ``retain``, commit it (steps 1 to 3).

    With a ``coordinator``, every process of a job makes this call with its own part of
    the state: each writes its own data file, rank 0 the index and steps 2 and 3 (see
    ``ckptlib.distributed.together``); the others run ``retain`` only to keep their books
    as rank 0 does."""
    with contextlib.ExitStack() as held, failing_together(coordinator):
        store.makedirs(naming.directory)
        held.enter_context(store.saving(naming.directory, lambda: repair_own(store, naming)))
        if before_write is not None:
            before_write()
        if coordinator is None:
            writer.write_to(store)
            if retain is not None:
                _commit(store, naming, retain(), sync)
            return
        commit = None if retain is None else lambda: _commit(store, naming, retain(), sync)
        write_together(coordinator, store, writer, sync, commit)
    if coordinator is not None and retain is not None and coordinator.rank != 0:
        retain()  # after the last exchange: whatever it raises is this process's alone


def _commit(store: Store, naming: Naming, retention: Retention, sync: bool) -> None:
    """Steps 2 and 3 for a bundle in place: the state file names it, rotation deletes."""
    try:
        note_deletions(store, naming.journal, retention.doomed, sync)
        update_state(
            store,
            naming.directory,
            naming.state_name,
            latest=retention.latest,
            mine=retention.mine,
            owns=retention.owns,
            relative=retention.relative,
            last_preserved=retention.last_preserved,
            sync=sync,
        )
    except BaseException:  # a KeyboardInterrupt too: still listed, deleted by a later save
        retention.undo()
        raise
    # Interrupted from here on, the journal still notes them: a later save deletes them.
    finish_deletions(
        store,
        naming.directory,
        lambda: listed_names(store, naming.directory, naming.state_name),
        naming.journal,
        retention.owns,
        also=retention.doomed,
        meta=naming.meta,
    )


def repair_own(store: Store, naming: Naming) -> None:
    """What killed or interrupted saves of this saver's checkpoints left: files aside or
    half written, checkpoints noted for deletion. Only under the store's save lock."""
    state_name = os.path.basename(state_file_path(naming.directory, naming.state_name))
    recover_interrupted_saves(store, naming.directory, naming.owns, (state_name, os.path.basename(naming.journal)))
    finish_deletions(
        store,
        naming.directory,
        lambda: listed_names(store, naming.directory, naming.state_name),
        naming.journal,
        naming.owns,
        meta=naming.meta,
    )


def read_listing(directory: str, latest_filename: str | None) -> Listing | None:
    """The directory's state file, or None if it is absent or unreadable (logged)."""
    path = state_file_path(directory, latest_filename)
    try:
        state = read_state_file(path)
    except CorruptCheckpointError as e:
        logger.warning("ignoring unreadable state file: %s", e)
        return None
    return None if state is None else _listing(directory, state)


def _listing(directory: str, state: CheckpointState) -> Listing:
    paths = resolve_all(directory, state.all_model_checkpoint_paths)
    times = list(state.all_model_checkpoint_timestamps)
    has_timestamps = len(times) == len(paths)
    if not has_timestamps:
        there = set(present(paths))  # one directory listing: a stat per missing path adds up
        times = [_mtime(p) if p in there else 0.0 for p in paths]
    latest = resolve(directory, state.model_checkpoint_path) if state.model_checkpoint_path else ""
    return Listing(latest, list(zip(paths, times, strict=True)), has_timestamps, state.last_preserved_timestamp)


def listed_names(store: Store, directory: str, latest_filename: str | None) -> set[str] | None:
    """The names of the checkpoints in ``directory`` its state file lists (by name, however
    the file spells their paths); None if there is no readable state file."""
    listing = read_listing(directory, latest_filename)
    if listing is None:
        return None
    names = {os.path.basename(p) for p, _ in listing.records if inside(store, directory, p)}
    if listing.latest and inside(store, directory, listing.latest):
        names.add(os.path.basename(listing.latest))
    return names


def update_state(
    store: Store,
    directory: str,
    latest_filename: str | None,
    *,
    latest: Record,
    mine: Sequence[Record],
    owns: Callable[[str], bool],
    relative: bool = True,
    last_preserved: float | None = None,
    sync: bool = True,
) -> None:
    """Rewrite the state file against concurrent updaters (``Store.update``).

    This saver's entries (``mine``, oldest first) replace every entry it ``owns``; entries
    of other savers sharing the directory are kept, in their order, before them. ``latest``
    becomes ``model_checkpoint_path`` and is listed even when it is not tracked
    (``max_to_keep=0``).
    """
    path = state_file_path(directory, latest_filename)

    def change(data: bytes | None) -> bytes:
        current = None
        if data is not None:
            if len(data) > MAX_STATE_FILE_BYTES:
                logger.warning("ignoring unreadable state file: %s is larger than %d bytes", path, len(data))
            else:
                try:
                    current = _listing(directory, parse_state_bytes(data, path))
                except CorruptCheckpointError as e:
                    logger.warning("ignoring unreadable state file: %s", e)
        records = current.records if current is not None else []
        merged = _merge(records, mine, latest, owns)
        state = CheckpointState(
            model_checkpoint_path=_recorded_path(directory, latest[0], relative),
            all_model_checkpoint_paths=tuple(_recorded_path(directory, p, relative) for p, _ in merged),
            all_model_checkpoint_timestamps=tuple(t for _, t in merged),
            last_preserved_timestamp=(current.last_preserved if current is not None else 0.0)
            if last_preserved is None
            else last_preserved,
        )
        return format_state_bytes(state)

    store.update(path, change, sync)


def _merge(
    listed: Sequence[Record], mine: Sequence[Record], latest: Record, owns: Callable[[str], bool]
) -> list[Record]:
    """The new list: the file's order kept (save order: clocks may step back), this saver's
    dropped entries removed, its new ones appended, and ``latest`` last."""
    key = path_key
    kept = {key(p): (p, t) for p, t in mine}
    latest_key = key(latest[0])
    merged: list[Record] = []
    for p, t in listed:
        k = key(p)
        if k == latest_key:
            continue
        if not owns(p):
            merged.append((p, t))
        elif k in kept:
            merged.append(kept.pop(k))
    merged.extend(r for k, r in kept.items() if k != latest_key)
    merged.append(latest)
    return merged


def path_key(prefix: str) -> str:
    """One spelling per prefix, for comparing them (not resolving symlinks)."""
    if is_absolute(prefix) and not os.path.isabs(prefix):  # a URL
        return store_for(prefix).real(prefix)
    return os.path.normpath(os.path.abspath(prefix))


def _recorded_path(directory: str, prefix: str, relative: bool) -> str:
    """How a prefix is written into the state file. Relative (ckptlib's default) keeps a
    moved or copied run directory working; otherwise TensorFlow's rule: absolute paths stay
    absolute, and paths relative to the working directory become relative to ``directory``."""
    if relative or not is_absolute(prefix):
        return relative_to(directory, prefix)
    return prefix


def _mtime(prefix: str) -> float:
    return store_for(prefix).mtime(index_filename(prefix)) or 0.0


def saver_owner(store: Store, directory: str, name: str) -> Callable[[str], bool]:
    """Is this prefix one of the checkpoints named ``name`` makes (``name``, or
    ``name-<step>``, the step possibly negative)?"""
    return owner(store, directory, re.compile(re.escape(name) + r"(--?\d+)?"))


def repair(directory: str | os.PathLike[str], *, assume_idle: bool = False) -> bool:
    """Repair everything interrupted saves left in ``directory``, whichever saver made them:
    put back checkpoints whose overwrite was killed, delete temporary files and (object
    stores) unfinished uploads and data files without an index, finish the deletions
    savers noted. Saves repair their own checkpoints' leftovers as they go where the store
    can tell no other save is running (local files); this is for the rest (a killed
    one-off ``save``, a saver that never runs again, and object stores).

    Returns False, doing nothing, if the store cannot tell that no save is running in the
    directory (a save is running, or the store has no such lock, as object stores do):
    only then is every leftover known to be abandoned. ``assume_idle=True`` is your word
    that no save is running there: the repair then runs regardless.
    """
    directory = os.fspath(directory)
    store = store_for(directory)
    if not store.is_dir(directory or "."):
        raise CheckpointNotFoundError("no such directory", path=directory)

    def everything() -> None:
        recover_interrupted_saves(store, directory, lambda prefix: True, _metadata_names(store, directory))
        if not store.atomic_rename:
            remove_unindexed_data(store, directory, lambda prefix: True)
        for name in store.listdir(directory):
            match = JOURNAL_NAME.fullmatch(name)
            if match is not None:
                state_name, saver_name = match.groups()
                finish_deletions(
                    store,
                    directory,
                    functools.partial(listed_names, store, directory, state_name),
                    os.path.join(directory, name),
                    saver_owner(store, directory, saver_name),
                )

    if assume_idle:
        everything()
        return True
    return store.repair_if_idle(directory, everything)


def _metadata_names(store: Store, directory: str) -> set[str]:
    """Names of the files beside checkpoints that ckptlib writes through temporary files:
    state files and deletion journals (their temporaries are named after them)."""
    names = set()
    for _, final in leftovers(directory, store.listdir(directory), TEMP_MARKER):
        name = os.path.basename(final)
        if not name.endswith(".index") and ".data-" not in name:
            names.add(name)
    return names
