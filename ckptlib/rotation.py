"""Step 3 of the commit protocol: deleting the checkpoints rotation dropped, safely.

Old checkpoints of a saver are deleted only after the state file no longer lists them,
index first (so a half-deleted checkpoint is never visible), and only inside the save
directory, whatever the state file says. They are noted in a journal
(``.checkpoint.<name>.deleting``) before the state file drops them, and the journal goes
once they are gone, so a kill or an interrupt in between leaves no checkpoint behind for
good: the next save of that name finishes the job (``finish_deletions``).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from collections.abc import Callable, Sequence

from ckptlib.format.filenames import index_filename, is_data_file_of
from ckptlib.state import state_file_path
from ckptlib.store import Store

logger = logging.getLogger("ckptlib")

# A journal is a JSON list of names; even a million of them is far below this.
_MAX_JOURNAL_BYTES = 64 << 20


def inside(store: Store, directory: str, prefix: str) -> bool:
    """Whether checkpoint ``prefix`` lives directly in ``directory`` (symlinks resolved)."""
    parent = store.real(os.path.dirname(prefix) or ".")
    return parent == store.real(directory or ".") and os.path.basename(prefix) not in ("", ".", "..")


def owner(store: Store, directory: str, name_pattern: re.Pattern[str]) -> Callable[[str], bool]:
    """A predicate: is a prefix one of those a saver makes, i.e. in ``directory`` and with a
    basename matching ``name_pattern`` entirely?"""
    real_parent = functools.lru_cache(maxsize=16)(lambda parent: store.real(parent or "."))

    def owns(prefix: str) -> bool:
        name = os.path.basename(prefix)
        if name in ("", ".", "..") or name_pattern.fullmatch(name) is None:
            return False
        return real_parent(os.path.dirname(prefix)) == real_parent(directory)

    return owns


def remove_checkpoint(store: Store, directory: str, prefix: str, *, meta: bool = True) -> bool:
    """Delete one checkpoint's files (index first), refusing anything outside ``directory``."""
    if not inside(store, directory, prefix):
        logger.warning("not deleting %s: it is outside the save directory %s", prefix, directory)
        return False
    store.delete(index_filename(prefix))
    name = os.path.basename(prefix)
    for other in store.listdir(os.path.dirname(prefix)):
        if is_data_file_of(other, name):
            store.delete(os.path.join(os.path.dirname(prefix), other))
    if meta:
        store.delete(prefix + ".meta")
    return True


def deletion_journal(directory: str, latest_filename: str | None, name: str) -> str:
    """Where the saver of checkpoints named ``name`` notes the ones it is deleting: a
    hidden file beside the state file, which TensorFlow ignores."""
    state_name = os.path.basename(state_file_path(directory, latest_filename))
    return os.path.join(directory, f".{state_name}.{name}.deleting")


# A deletion journal: ".<state file>.<saver name>.deleting" (see deletion_journal).
JOURNAL_NAME = re.compile(r"\.([^.]+)\.(.+)\.deleting")


def note_deletions(store: Store, journal: str, prefixes: Sequence[str], sync: bool) -> None:
    """Record, before the state file stops listing them, the checkpoints about to go, with
    those an interrupted deletion noted before and did not finish."""
    directory = os.path.dirname(journal)
    names = [os.path.basename(p) for p in prefixes if inside(store, directory, p)]
    if not names:  # (a prefix outside the directory is never deleted anyway)
        return
    names = list(dict.fromkeys([*_noted(store, journal), *names]))
    store.write_small(journal, json.dumps(names).encode(), sync)


def finish_deletions(
    store: Store,
    directory: str,
    listed: Callable[[], set[str] | None],
    journal: str,
    owns: Callable[[str], bool],
    *,
    also: Sequence[str] = (),
    meta: bool = True,
) -> list[str]:
    """Delete the checkpoints the journal notes, and ``also`` these, that the saver ``owns``
    and the state file does not list, then the journal; returns the prefixes deleted.

    ``listed()`` gives the names the state file lists in ``directory`` (None if it is
    absent or unreadable: nothing is deleted then). Only the saver that owns these names
    adds them to the state file, so what it lists cannot change under this saver's feet.

    After the state file dropped them, this is rotation's last step; run by a repair, it
    finishes what a killed or interrupted saver noted (a kill before the state file was
    replaced leaves them listed, and kept).
    """
    names = list(
        dict.fromkeys([*_noted(store, journal), *(os.path.basename(p) for p in also if inside(store, directory, p))])
    )
    if not names:
        store.delete(journal)  # if it was there, it noted nothing readable
        return []
    deleted = []
    kept = listed()
    if kept is None:  # what was listed is unknown: delete nothing, forget the notes
        store.delete(journal)
        return []
    for name in names:
        prefix = os.path.join(directory, name)
        if name not in kept and owns(prefix) and remove_checkpoint(store, directory, prefix, meta=meta):
            deleted.append(prefix)
    store.delete(journal)
    return deleted


def _noted(store: Store, journal: str) -> list[str]:
    """The names a deletion journal holds; none if it is absent or unreadable (logged)."""
    try:
        data = store.read_small(journal, _MAX_JOURNAL_BYTES)
        if data is None:
            return []
        names = json.loads(data)
    except (OSError, ValueError) as e:
        logger.warning("ignoring unreadable deletion journal %s: %s", journal, e)
        return []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        logger.warning("ignoring malformed deletion journal %s", journal)
        return []
    return names
