"""Asynchronous saves: snapshot in the caller's thread, write and commit in a background one.

::

    caller   save() -> [wait for a free slot] -> snapshot (copy) -> queue -> return prefix
    worker              ... write the bundle, durable -> state file -> rotation -> next queued

One worker thread per ``BackgroundSaves`` takes the queued saves one at a time, so they
commit in the order they were made, and each is complete and durable before the state file
names it. A failed save's error is kept and raised by the next ``save()`` or ``wait()``,
never only logged. The worker is a daemon thread that lives only while saves are queued;
at interpreter exit pending saves are finished first (logged), before ``concurrent.futures``
stops taking work (the writers need it), so a script that returns without ``wait()`` still
leaves its last checkpoint complete.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, thread
from typing import Any

from ckptlib.io_policy import DEFAULT, IOPolicy
from ckptlib.snapshot import Arena, Arenas, copy_to_device_host, snapshot, snapshot_bytes
from ckptlib.tree import tensors_of
from ckptlib.writer import BundleWriter

logger = logging.getLogger("ckptlib")


def background_policy(io: IOPolicy) -> IOPolicy:
    """``io`` without its process-wide settings: a save beside a training loop must not
    pause the loop's garbage collector or change its GIL switch interval."""
    return dataclasses.replace(io, pause_gc=False, switch_interval=None)


@dataclasses.dataclass(eq=False)
class _Job:
    label: str  # the prefix, for messages
    run: Callable[[], str]
    future: Future[str]
    arenas: list[Arena]


class BackgroundSaves:
    """The queue of one saver's asynchronous saves.

    At most ``max_pending`` saves are snapshotted and not yet committed; ``submit`` waits
    for a slot first. ``max_snapshot_bytes`` caps the memory the snapshots hold (None: no
    cap beyond ``max_pending`` states); a save too large for the cap alone is written
    synchronously, from the caller's arrays, once earlier saves are done. With
    ``keep_errors`` a failed save's error is also raised by the next ``submit`` or ``wait``
    (the savers' contract); without it, only its future carries it (``save_async``). Every
    failure is logged as it happens too, so that one nobody waits for is not lost.
    ``keep_buffers``: keep the snapshot buffers for the next save (freed with this object).
    """

    def __init__(
        self,
        max_pending: int = 1,
        max_snapshot_bytes: int | None = None,
        *,
        keep_errors: bool = True,
        keep_buffers: bool = True,
    ):
        if max_pending < 1:
            raise ValueError(f"max_pending_saves must be at least 1, got {max_pending}")
        if max_snapshot_bytes is not None and max_snapshot_bytes < 0:
            raise ValueError(f"max_snapshot_bytes must be None or >= 0, got {max_snapshot_bytes}")
        self._max_pending = max_pending
        self._arenas = Arenas(max_snapshot_bytes, keep=keep_buffers)
        self._keep_errors = keep_errors
        self._reset()
        _ALL.add(self)

    def _reset(self) -> None:
        """No save pending (a new saver, or a child process that forked from one: the
        parent's pending saves, and its worker thread, are not the child's)."""
        self._queue: deque[_Job] = deque()
        self._running: _Job | None = None
        self._worker: threading.Thread | None = None
        self._changed = threading.Condition()
        self._errors: list[BaseException] = []
        self._arenas.forget_in_use()

    @property
    def pending(self) -> int:
        """Saves snapshotted and not yet committed (or failed)."""
        with self._changed:
            return len(self._queue) + (self._running is not None)

    def raise_error(self) -> None:
        """Raise the first error of a failed background save, once (later ones are logged)."""
        with self._changed:
            if not self._errors:
                return
            first, *later = self._errors
            self._errors.clear()
        for error in later:
            logger.error("ckptlib: a later background save failed too: %s", error)
        raise first

    def submit(self, writer: BundleWriter, tensors: dict[str, Any], commit: Callable[[], str]) -> Future[str]:
        """Snapshot ``tensors`` into ``writer`` (it must not have been given them yet),
        then queue ``commit`` (which writes the writer's bundle and commits it). Raises a
        pending error first, before anything of this save is done."""
        self.raise_error()
        self._wait_until(lambda: self._pending_locked() < self._max_pending)
        arenas: list[Arena] = []
        try:
            device_copies_done = copy_to_device_host(tensors, self._arenas, arenas)
            writer.add_all(tensors)
            device_copies_done()
            needed = snapshot_bytes(writer.pending, arenas)
            if self._arenas.limit is not None and needed > self._arenas.limit:
                try:
                    return self._write_now(writer.prefix, commit, needed)
                finally:
                    for used in arenas:
                        self._arenas.give_back(used)
                    arenas.clear()
            if needed:
                self._wait_until(lambda: self._arenas.fits(needed) or self._pending_locked() == 0)
                arenas.append(self._arenas.take(needed))
                snapshot(writer.pending, arenas[-1], arenas[:-1])
        except BaseException:
            for used in arenas:
                self._arenas.give_back(used)
            raise
        job = _Job(writer.prefix, commit, Future(), arenas)
        job.future.set_running_or_notify_cancel()
        with self._changed:
            self._queue.append(job)
            self._start_worker_locked()
        return job.future

    def wait(self) -> None:
        """Block until every queued save is committed (durable); raise the first error."""
        self.drain()
        self.raise_error()

    def drain(self) -> None:
        """Block until every queued save is committed or failed (errors are kept)."""
        with self._changed:
            if self._queue:
                self._start_worker_locked()  # in case an interrupt came between queue and start
        self._wait_until(lambda: self._pending_locked() == 0)

    def _write_now(self, label: str, commit: Callable[[], str], needed: int) -> Future[str]:
        logger.warning(
            "writing %s synchronously: its snapshot (%d bytes) exceeds max_snapshot_bytes=%d",
            label,
            needed,
            self._arenas.limit,
        )
        self._wait_until(lambda: self._pending_locked() == 0)
        self.raise_error()
        future: Future[str] = Future()
        future.set_result(commit())
        return future

    def _wait_until(self, ready: Callable[[], bool]) -> None:
        with self._changed:
            self._changed.wait_for(ready)

    def _pending_locked(self) -> int:
        return len(self._queue) + (self._running is not None)

    def _start_worker_locked(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name="ckptlib-async-save", daemon=True)
            self._worker.start()

    def _work(self) -> None:
        while True:
            with self._changed:
                if not self._queue:
                    self._worker = None
                    self._changed.notify_all()
                    return
                job = self._running = self._queue.popleft()
            try:
                job.future.set_result(job.run())
            except BaseException as e:  # kept for the caller, who decides what is fatal
                logger.error("ckptlib: the asynchronous save of %s failed: %s", job.label, e)
                job.future.set_exception(e)
                if self._keep_errors:
                    with self._changed:
                        self._errors.append(e)
            finally:
                job.run = _done  # the commit closure holds the writer: let it and its views go
                for arena in job.arenas:
                    self._arenas.give_back(arena)
                with self._changed:
                    self._running = None
                    self._changed.notify_all()


def _done() -> str:
    raise AssertionError("ran twice")


_ALL: weakref.WeakSet[BackgroundSaves] = weakref.WeakSet()


def finish_pending_saves() -> None:
    """Wait for every pending asynchronous save of the process (run at interpreter exit)."""
    busy = [saves for saves in list(_ALL) if saves.pending]
    if not busy:
        return
    count = sum(saves.pending for saves in busy)
    logger.warning("ckptlib: finishing %d pending asynchronous checkpoint save(s) before exit", count)
    for saves in busy:
        try:
            saves.wait()
        except KeyboardInterrupt:
            logger.error("ckptlib: interrupted; pending checkpoint saves abandoned (earlier checkpoints are intact)")
            return
        except Exception as e:
            logger.error("ckptlib: a pending asynchronous checkpoint save failed: %s", e)
    logger.warning("ckptlib: pending checkpoint saves finished")


def _forget_parents_saves() -> None:
    global _MODULE_LOCK
    _MODULE_LOCK = threading.Lock()  # another thread of the parent may have held it
    for saves in list(_ALL):
        saves._reset()


os.register_at_fork(after_in_child=_forget_parents_saves)

# At exit the worker still needs thread pools to write: finish before concurrent.futures
# refuses new work. Its hook is registered when ``concurrent.futures.thread`` is imported
# (above); these hooks run last registered first, so ours runs before it. (``atexit`` would
# run too late: after that hook, and after non-daemon threads are joined.)
assert thread is not None
threading._register_atexit(finish_pending_saves)  # type: ignore[attr-defined]


_MODULE_SAVES: BackgroundSaves | None = None
_MODULE_LOCK = threading.Lock()


def save_async(
    tree: Any,
    prefix: str | os.PathLike[str],
    *,
    num_shards: int = 1,
    sync: bool = True,
    object_graph: bool = False,
    io: IOPolicy = DEFAULT,
) -> Future[str]:
    """``ckptlib.save`` in the background: returns once ``tree`` is copied, with a future
    of the prefix (its ``result()`` raises what the save raised). Saves made this way are
    written one at a time, in order; a second one first waits for the first to be written.
    Values the tree cannot hold raise here, before anything is queued."""
    global _MODULE_SAVES
    with _MODULE_LOCK:
        if _MODULE_SAVES is None:
            _MODULE_SAVES = BackgroundSaves(keep_errors=False, keep_buffers=False)
        saves = _MODULE_SAVES
    writer = BundleWriter(prefix, num_shards=num_shards, sync=sync, io=background_policy(io))
    return saves.submit(writer, tensors_of(tree, object_graph=object_graph), writer.finish)
