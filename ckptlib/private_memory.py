"""Private memory for restores, and memory earlier restores gave back handed out again.

A default restore returns views of one buffer of private memory (``bulk_read``). Filling
fresh memory costs more than the copy into it: the kernel faults in and zeroes every page,
and on a VM that hands freed memory back to its host, first gets the page back (1 GiB here:
0.09 s in a process doing nothing else, up to 1.5 s right after another allocator, such as
TensorFlow's, freed memory). So, as TensorFlow's own allocator does, a buffer of at least
``MIN_MAPPED_BYTES`` is kept when the last array viewing it is freed, and handed to the next
restore it fits. A kept buffer is marked ``MADV_FREE``: under memory pressure the kernel
takes its pages back at no cost (the next restore that reuses it then faults in fresh
ones), and until then they stay in place, ready. At most ``MAX_KEPT_BUFFERS`` buffers and a
quarter of the machine's memory (or of the container's limit) are kept;
``ckptlib.release_cached_memory()`` drops them all.

Large buffers are backed by transparent huge pages where the kernel offers them: 2 MiB pages
take a 512th of the faults (1 GiB read on two threads here: 0.10 s instead of 0.15 s).
"""

from __future__ import annotations

import collections
import contextlib
import mmap
import os
import threading
import weakref

import numpy as np

# Buffers at least this large are mapped (and kept for reuse); smaller ones come from malloc,
# which keeps its own.
MIN_MAPPED_BYTES = 4 << 20
MAX_KEPT_BUFFERS = 4
# A kept buffer serves a request of at least this fraction of its size, so that a small
# restore does not tie up a large buffer that a later large restore then lacks.
_MIN_USE = 0.75


class _Owner(np.ndarray):
    """The array every view of one mapped buffer hangs from (numpy stops collapsing a
    view's ``base`` at an array of another type): when the last view dies, this does, and
    its buffer goes back to the pool."""


class _Pool:
    """Kept buffers. ``give_back`` runs wherever the last view of a buffer dies: in any
    thread, or inside ``take`` itself when an allocation there sets off a garbage
    collection. So it never waits for the lock: it queues the buffer (a deque append is
    atomic) and files the queue only if the lock is free; ``take`` files it too."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.kept: list[mmap.mmap] = []  # oldest first; changed only under the lock
        self.returned: collections.deque[mmap.mmap] = collections.deque()
        self.max_bytes = _memory_limit() // 4

    def take(self, nbytes: int) -> mmap.mmap | None:
        with self.lock:
            dropped = self._file_returned()
            fits = [m for m in self.kept if nbytes <= len(m) and nbytes >= _MIN_USE * len(m)]
            best = min(fits, key=len) if fits else None
            if best is not None:
                self.kept.remove(best)
        del dropped  # unmapped outside the lock
        return best

    def give_back(self, memory: mmap.mmap) -> None:
        if len(memory) > self.max_bytes:
            return  # dropped: unmapped once the dying owner lets go of it
        with contextlib.suppress(OSError, AttributeError):  # advice only
            memory.madvise(mmap.MADV_FREE)
        self.returned.append(memory)
        if self.lock.acquire(blocking=False):
            try:
                dropped = self._file_returned()
            finally:
                self.lock.release()
            del dropped

    def _file_returned(self) -> list[mmap.mmap]:
        """Move returned buffers to ``kept``, oldest out first beyond the bounds; returns
        those dropped, for the caller to let go of outside the lock."""
        while self.returned:
            self.kept.append(self.returned.popleft())
        dropped = []
        while len(self.kept) > MAX_KEPT_BUFFERS or sum(map(len, self.kept)) > self.max_bytes:
            dropped.append(self.kept.pop(0))
        return dropped

    def clear(self) -> None:
        with self.lock:
            self.returned.clear()
            dropped, self.kept = self.kept, []
        del dropped


def _memory_limit() -> int:
    """The machine's memory, or this container's limit where that is smaller."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):  # v2, v1
        with contextlib.suppress(OSError, ValueError), open(limit_file) as f:
            total = min(total, int(f.read()))  # "max" (no limit) is a ValueError
    return total


_POOL = _Pool()


def _forget_in_child() -> None:
    # A forked child writing into kept buffers would copy every page it touches from the
    # parent's (copy on write): fresh memory is cheaper there. The parent's pool may have
    # been locked by a thread that does not exist here, so buffers inherited from the
    # parent never go back to it (``_return``), and its kept ones are let go unlocked.
    global _POOL
    inherited, _POOL = _POOL, _Pool()
    inherited.kept = []
    inherited.returned = collections.deque()


os.register_at_fork(after_in_child=_forget_in_child)


def _return(pool: _Pool, memory: mmap.mmap) -> None:
    """The finalizer of a buffer's owner. (The buffer is never closed here, only dropped:
    closing a map still viewed would make its views crash the process.)"""
    if pool is _POOL:
        pool.give_back(memory)


def private_buffer(nbytes: int) -> np.ndarray:
    """``nbytes`` of private, writable memory as a uint8 array (no file behind it); its
    contents are undefined (fresh, or what an earlier restore left)."""
    if nbytes < MIN_MAPPED_BYTES or not hasattr(mmap, "MADV_HUGEPAGE"):
        return np.empty(nbytes, dtype=np.uint8)
    pool = _POOL
    memory = pool.take(nbytes)
    if memory is None:
        memory = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        with contextlib.suppress(OSError):  # advice only: the kernel may have huge pages off
            memory.madvise(mmap.MADV_HUGEPAGE)
    owner = np.ndarray.__new__(_Owner, (nbytes,), np.uint8, buffer=memory)
    weakref.finalize(owner, _return, pool, memory).atexit = False
    return owner.view(np.ndarray)


def release_cached_memory() -> None:
    """Hand back to the system the buffers earlier restores freed and ckptlib kept for the
    next restore (see the module docstring). Arrays still in use are not affected."""
    _POOL.clear()
