"""The commit protocol shared by ``Saver`` and ``CheckpointManager``.

A save becomes visible in three durable steps, so that a kill at any instant leaves the
previous latest checkpoint restorable:

1. the bundle: data shards under temporary names, renamed; the index renamed last
   (``writer.BundleWriter``), each step fsynced;
2. the state file, replaced atomically (temporary file + rename) while holding a
   cross-process lock, merged with the entries other savers keep in the same directory;
3. rotation: old checkpoints of *this* saver deleted only after the state file no longer
   lists them, index first (so a half-deleted checkpoint is never visible), and only
   inside the save directory, whatever the state file says. They are noted in a journal
   (``.checkpoint.<name>.deleting``) before the state file drops them, and the journal
   goes once they are gone, so a kill or an interrupt in between leaves no checkpoint behind
   for good: the next save of that name finishes the job (``finish_deletions``).

What a killed save leaves (temporary files, a bundle moved aside) is repaired by a later
save of the same checkpoints when no save is running in the directory (``save_lock``).
"""

from __future__ import annotations

import functools
import glob
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ckptlib.checkpoint import present
from ckptlib.errors import CheckpointNotFoundError, CorruptCheckpointError
from ckptlib.save_lock import repair_if_idle
from ckptlib.state import (
    CheckpointState,
    read_state_file,
    relative_to,
    resolve,
    resolve_all,
    state_file_path,
    state_lock,
    write_state_file,
)
from ckptlib.storage import TEMP_MARKER, fsync_dir, leftover_files, remove_quietly, write_temp
from ckptlib.writer import index_filename, recover_interrupted_saves

logger = logging.getLogger("ckptlib")

Record = tuple[str, float]  # (prefix, timestamp)


@dataclass(frozen=True)
class Listing:
    """A state file's content with prefixes resolved against its directory."""

    latest: str
    records: list[Record]  # (prefix, timestamp), oldest first
    has_timestamps: bool  # False for TF1-written files: timestamps are index mtimes then
    last_preserved: float


def read_listing(directory: str, latest_filename: str | None) -> Listing | None:
    """The directory's state file, or None if it is absent or unreadable (logged)."""
    path = state_file_path(directory, latest_filename)
    try:
        state = read_state_file(path)
    except CorruptCheckpointError as e:
        logger.warning("ignoring unreadable state file: %s", e)
        return None
    if state is None:
        return None
    paths = resolve_all(directory, state.all_model_checkpoint_paths)
    times = list(state.all_model_checkpoint_timestamps)
    has_timestamps = len(times) == len(paths)
    if not has_timestamps:
        there = set(present(paths))  # one directory listing: a stat per missing path adds up
        times = [_mtime(p) if p in there else 0.0 for p in paths]
    latest = resolve(directory, state.model_checkpoint_path) if state.model_checkpoint_path else ""
    return Listing(latest, list(zip(paths, times, strict=True)), has_timestamps, state.last_preserved_timestamp)


def update_state(
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
    """Rewrite the state file under the directory's lock.

    This saver's entries (``mine``, oldest first) replace every entry it ``owns``; entries
    of other savers sharing the directory are kept, in their order, before them. ``latest`` becomes
    ``model_checkpoint_path`` and is listed even when it is not tracked (``max_to_keep=0``).
    """
    path = state_file_path(directory, latest_filename)
    with state_lock(directory, latest_filename):
        current = read_listing(directory, latest_filename)
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
        write_state_file(path, state, sync=sync)


def _merge(
    listed: Sequence[Record], mine: Sequence[Record], latest: Record, owns: Callable[[str], bool]
) -> list[Record]:
    """The new list: the file's order kept (save order: clocks may step back), this saver's
    dropped entries removed, its new ones appended, and ``latest`` last."""
    key = _path_key
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


def _path_key(prefix: str) -> str:
    return os.path.normpath(os.path.abspath(prefix))


def _recorded_path(directory: str, prefix: str, relative: bool) -> str:
    """How a prefix is written into the state file. Relative (ckptlib's default) keeps a
    moved or copied run directory working; otherwise TensorFlow's rule: absolute paths stay
    absolute, and paths relative to the working directory become relative to ``directory``."""
    if relative or not os.path.isabs(prefix):
        return relative_to(directory, prefix)
    return prefix


def inside(directory: str, prefix: str) -> bool:
    """Whether checkpoint ``prefix`` lives directly in ``directory`` (symlinks resolved)."""
    parent = os.path.realpath(os.path.dirname(prefix) or ".")
    return parent == os.path.realpath(directory or ".") and os.path.basename(prefix) not in ("", ".", "..")


def owner(directory: str, name_pattern: re.Pattern[str]) -> Callable[[str], bool]:
    """A predicate: is a prefix one of those a saver makes, i.e. in ``directory`` and with a
    basename matching ``name_pattern`` entirely?"""
    real_parent = functools.lru_cache(maxsize=16)(lambda parent: os.path.realpath(parent or "."))

    def owns(prefix: str) -> bool:
        name = os.path.basename(prefix)
        if name in ("", ".", "..") or name_pattern.fullmatch(name) is None:
            return False
        return real_parent(os.path.dirname(prefix)) == real_parent(directory)

    return owns


def remove_checkpoint(directory: str, prefix: str, *, meta: bool = True) -> bool:
    """Delete one checkpoint's files (index first), refusing anything outside ``directory``."""
    if not inside(directory, prefix):
        logger.warning("not deleting %s: it is outside the save directory %s", prefix, directory)
        return False
    remove_quietly(index_filename(prefix))
    pattern = glob.escape(prefix) + ".data-?????-of-?????"
    for path in glob.glob(pattern):
        remove_quietly(path)
    if meta:
        remove_quietly(prefix + ".meta")
    return True


def deletion_journal(directory: str, latest_filename: str | None, name: str) -> str:
    """Where the saver of checkpoints named ``name`` notes the ones it is deleting: a
    hidden file beside the state file, which TensorFlow ignores."""
    state_name = os.path.basename(state_file_path(directory, latest_filename))
    return os.path.join(directory, f".{state_name}.{name}.deleting")


def note_deletions(journal: str, prefixes: Sequence[str], sync: bool) -> None:
    """Record, before the state file stops listing them, the checkpoints about to go, with
    those an interrupted deletion noted before and did not finish."""
    directory = os.path.dirname(journal)
    names = [os.path.basename(p) for p in prefixes if inside(directory, p)]
    if not names:  # (a prefix outside the directory is never deleted anyway)
        return
    names = list(dict.fromkeys([*_noted(journal), *names]))
    data = json.dumps(names).encode()
    os.replace(write_temp(journal, [data], sync), journal)
    if sync:
        fsync_dir(directory)


def finish_deletions(
    directory: str,
    latest_filename: str | None,
    journal: str,
    owns: Callable[[str], bool],
    *,
    also: Sequence[str] = (),
    meta: bool = True,
) -> list[str]:
    """Delete the checkpoints the journal notes, and ``also`` these, that the saver ``owns``
    and the state file does not list, then the journal; returns the prefixes deleted.

    After ``update_state`` dropped them, this is rotation's last step; run by a repair, it
    finishes what a killed or interrupted saver noted (a kill before the state file was
    replaced leaves them listed, and kept). Where there is no readable state file, nothing
    is deleted.
    """
    names = list(dict.fromkeys([*_noted(journal), *(os.path.basename(p) for p in also if inside(directory, p))]))
    if not names:
        remove_quietly(journal)  # if it was there, it noted nothing readable
        return []
    deleted = []
    with state_lock(directory, latest_filename):
        listing = read_listing(directory, latest_filename)
        if listing is None:  # what was listed is unknown: delete nothing, forget the notes
            remove_quietly(journal)
            return []
        # by name within this directory, however the state file spells its paths
        listed = {os.path.basename(p) for p, _ in listing.records if inside(directory, p)}
        if listing.latest and inside(directory, listing.latest):
            listed.add(os.path.basename(listing.latest))
        for name in names:
            prefix = os.path.join(directory, name)
            if name not in listed and owns(prefix) and remove_checkpoint(directory, prefix, meta=meta):
                deleted.append(prefix)
        remove_quietly(journal)
    return deleted


def _noted(journal: str) -> list[str]:
    """The names a deletion journal holds; none if it is absent or unreadable (logged)."""
    try:
        with open(journal, "rb") as f:
            names = json.loads(f.read())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        logger.warning("ignoring unreadable deletion journal %s: %s", journal, e)
        return []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        logger.warning("ignoring malformed deletion journal %s", journal)
        return []
    return names


def _mtime(prefix: str) -> float:
    try:
        return os.path.getmtime(index_filename(prefix))
    except OSError:
        return 0.0


def repair(directory: str | os.PathLike[str]) -> bool:
    """Repair everything interrupted saves left in ``directory``, whichever saver made them:
    put back checkpoints whose overwrite was killed, delete temporary files, finish the
    deletions savers noted. Saves repair their own checkpoints' leftovers as they go; this
    is for the rest (a killed one-off ``save``, a saver that never runs again).

    Returns False, doing nothing, if a save is running in the directory (or its file
    system cannot lock): only then is every leftover known to be abandoned.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory or "."):
        raise CheckpointNotFoundError("no such directory", path=directory)

    def everything() -> None:
        recover_interrupted_saves(directory, lambda prefix: True, _metadata_names(directory))
        for name in os.listdir(directory or "."):
            match = _JOURNAL.fullmatch(name)
            if match is not None:
                state_name, saver_name = match.groups()
                owns = owner(directory, re.compile(re.escape(saver_name) + r"(--?\d+)?"))
                finish_deletions(directory, state_name, os.path.join(directory, name), owns)

    return repair_if_idle(directory, everything)


# A deletion journal: ".<state file>.<saver name>.deleting" (see deletion_journal).
_JOURNAL = re.compile(r"\.([^.]+)\.(.+)\.deleting")


def _metadata_names(directory: str) -> set[str]:
    """Names of the files beside checkpoints that ckptlib writes through temporary files:
    state files and deletion journals (their temporaries are named after them)."""
    names = set()
    for _, final in leftover_files(directory, TEMP_MARKER):
        name = os.path.basename(final)
        if not name.endswith(".index") and ".data-" not in name:
            names.add(name)
    return names
