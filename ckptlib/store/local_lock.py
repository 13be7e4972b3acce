"""Which saves are running in a directory, told by a lock the kernel releases when its holder dies.

Every save holds a shared ``flock`` on ``DIR/.ckptlib-saves.lock`` from before it creates its
first temporary file until it is done with its last. Repairing what killed saves left behind
(putting back a checkpoint whose overwrite was interrupted, deleting temporary files) needs
the same lock exclusively, asked for without waiting: granted, no save is running in the
directory and every leftover belongs to a dead one; refused, the repair is left to a later save.

Nothing else is consulted: no process id (a process in another PID namespace has its own),
no host name, no time stamp. ``flock`` locks belong to the open file, so they also tell apart
two threads of one process, and they hold across PID namespaces and containers. Across
machines they hold only where the file system makes ``flock`` coherent between hosts (local
disks; NFSv4 and Lustre with flock enabled); on a mount that keeps locks per host (NFS with
``local_lock``, ``nolock``) saves from two machines into one directory are not protected.
Where the file system refuses to lock, nothing is repaired: unknown files are left alone.
A process forked during a save does not inherit its lock.
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
# (EBADF: NFS locks exclusively only files open for writing.)
_CANNOT_LOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.EBADF}


@contextlib.contextmanager
def saving(directory: str, repair: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold ``directory``'s save lock, shared, for the duration of one save.

    If no other save is running there, ``repair`` is called first, under the lock held
    exclusively. ``directory`` must exist.
    """
    fd = _open_lock_file(directory)
    try:
        if fd is not None and repair is not None and _lock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB):
            _run(repair, directory)
        if fd is not None:
            _lock(fd, fcntl.LOCK_SH)  # from exclusive: others may take it for a moment in between
        yield
    finally:
        if fd is not None:
            _close(fd)


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
        _run(repair, directory)
        return True
    finally:
        _close(fd)


def _run(repair: Callable[[], None], directory: str) -> None:
    """A repair that fails (a leftover of another user's, an I/O error) must not fail the
    save that runs it: it is logged, and tried again by the next save."""
    try:
        repair()
    except OSError as e:
        logger.warning("could not repair what an interrupted save left in %s: %s", directory or ".", e)


# Lock descriptors this process holds, closed in a child forked meanwhile: the child must
# not keep a save's lock for as long as it lives (a data loader's worker, say).
_held: set[int] = set()


def _forget_held_locks() -> None:
    for fd in _held:
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_held_locks)


def _open_lock_file(directory: str) -> int | None:
    path = os.path.join(directory or ".", LOCK_NAME)
    fd = None
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:  # another user's lock file, a read-only file system: reading may do
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_RDONLY)
    if fd is None:
        logger.debug("no save lock in %s: nothing will be repaired there", directory or ".")
        return None
    _held.add(fd)
    return fd


def _close(fd: int) -> None:
    if fd in _held:  # else closed already, in a child forked meanwhile
        _held.discard(fd)
        os.close(fd)


def _lock(fd: int, operation: int) -> bool:
    """``flock``; False if refused (``LOCK_NB``) or if the file system cannot lock."""
    try:
        fcntl.flock(fd, operation)
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno not in _CANNOT_LOCK:
            raise
        logger.debug("cannot take the save lock (%s): nothing will be repaired", e)
        return False
    return True
