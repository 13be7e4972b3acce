"""Which saves are running in a directory, told by a lock the kernel releases when its holder dies.

Every save holds a shared ``flock`` on ``DIR/.ckptlib-saves.lock`` from before it creates its
first temporary file until it is done with its last. Repairing what killed saves left behind
(putting back a checkpoint whose overwrite was interrupted, deleting temporary files) needs
the same lock exclusively, asked for without waiting: granted, no save is running in the
directory and every leftover belongs to a dead one; refused, the repair is left to a later save.

Nothing else is consulted: no process id (a process in another PID namespace, or on another
machine, has its own), no host name, no time stamp. ``flock`` locks belong to the open file,
so they also tell apart two threads of one process, and they hold across PID namespaces.
Where the file system cannot lock (some network file systems), nothing is repaired: unknown
files are left alone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from collections.abc import Callable, Iterator

LOCK_NAME = ".ckptlib-saves.lock"

logger = logging.getLogger("ckptlib")

# flock's ways of saying that this file system cannot lock.
_CANNOT_LOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


@contextlib.contextmanager
def saving(directory: str, repair: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold ``directory``'s save lock, shared, for the duration of one save.

    If no other save is running there, ``repair`` is called first, under the lock held
    exclusively. ``directory`` must exist.
    """
    fd = _open_lock_file(directory)
    try:
        if fd is not None and repair is not None and _lock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB):
            repair()
        if fd is not None:
            _lock(fd, fcntl.LOCK_SH)  # from exclusive: others may take it for a moment in between
        yield
    finally:
        if fd is not None:
            os.close(fd)


def repair_if_idle(directory: str, repair: Callable[[], None]) -> bool:
    """Call ``repair`` if no save is running in ``directory`` (a missing directory has none
    and needs none); returns whether it was called."""
    if not os.path.isdir(directory or "."):
        return False
    fd = _open_lock_file(directory)
    if fd is None:
        return False
    try:
        if not _lock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB):
            return False
        repair()
        return True
    finally:
        os.close(fd)


def _open_lock_file(directory: str) -> int | None:
    path = os.path.join(directory or ".", LOCK_NAME)
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except PermissionError:  # another user's lock file: a read-only descriptor locks as well
        pass
    try:
        return os.open(path, os.O_RDONLY)
    except OSError as e:
        logger.debug("no save lock in %s (%s): nothing will be repaired there", directory, e)
        return None


def _lock(fd: int, operation: int) -> bool:
    """``flock``; False if refused (``LOCK_NB``) or if the file system cannot lock."""
    try:
        fcntl.flock(fd, operation)
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno not in _CANNOT_LOCK:
            raise
        logger.debug("cannot lock %s: %s", fd, e)
        return False
    return True
