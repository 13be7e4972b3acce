"""``IOPolicy``: how much of the process a save or restore may use, chosen at the public API.

Library layers never decide these for themselves; they are handed a policy:

* ``threads``: how many transfers run at once. None: the store's own choice
  (``Store.io_threads``: cores for a local disk, more for a network store).
* ``pause_gc``: pause Python's cyclic garbage collector during bulk work. Reading or
  writing 100,000 tensors allocates a million short-lived, acyclic objects, and each burst
  can trigger a full collection that walks every object in the process (in a training job
  with a framework loaded, one was seen to cost more than the whole restore). Nothing made
  here needs the collector: reference counting frees it all.
* ``switch_interval``: the interpreter's GIL switch interval while this thread runs Python
  beside threads waiting in system calls (seconds; None leaves it alone). With dozens of
  writes per shard, waiting out the default 5 ms each time can cost more than the writes.

Both settings are process-wide: a save running in the background beside a training loop
should use ``IOPolicy.background()``, which changes neither. Concurrent and nested users
share them: the last to leave puts back what the process had.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

# The switch interval while writers and readers work (seconds).
QUICK_SWITCH_INTERVAL = 0.0002


@dataclass(frozen=True)
class IOPolicy:
    """Threads and process-wide settings for one save or restore (see the module docstring)."""

    threads: int | None = None
    pause_gc: bool = True
    switch_interval: float | None = QUICK_SWITCH_INTERVAL

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be None or at least 1, got {self.threads}")
        if self.switch_interval is not None and not self.switch_interval > 0:
            raise ValueError(f"switch_interval must be None or positive, got {self.switch_interval}")

    @classmethod
    def background(cls, threads: int | None = None) -> IOPolicy:
        """For work beside a running program: no process-wide setting is touched."""
        return cls(threads=threads, pause_gc=False, switch_interval=None)

    def threads_for(self, store_threads: int) -> int:
        """Transfers to run at once on a store that would choose ``store_threads``."""
        return max(1, self.threads if self.threads is not None else store_threads)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Hold this policy's process-wide settings for the duration of the block."""
        with _gc_paused(self.pause_gc), _switch_interval(self.switch_interval):
            yield


DEFAULT = IOPolicy()


class _Shared:
    """A process-wide setting several threads may want at once: the first to enter saves
    what the process had, the last to leave puts it back."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        self.saved: object = None


_GC = _Shared()
_SWITCH = _Shared()


@contextlib.contextmanager
def _gc_paused(wanted: bool) -> Iterator[None]:
    if not wanted:
        yield
        return
    with _GC.lock:
        if _GC.users == 0:
            _GC.saved = gc.isenabled()
            gc.disable()
        _GC.users += 1
    try:
        yield
    finally:
        with _GC.lock:
            _GC.users -= 1
            if _GC.users == 0 and _GC.saved:
                gc.enable()


@contextlib.contextmanager
def _switch_interval(interval: float | None) -> Iterator[None]:
    if interval is None:
        yield
        return
    with _SWITCH.lock:
        if _SWITCH.users == 0:
            _SWITCH.saved = sys.getswitchinterval()
        # the shortest any current user asked for, never longer than the process had
        sys.setswitchinterval(min(sys.getswitchinterval(), interval))
        _SWITCH.users += 1
    try:
        yield
    finally:
        with _SWITCH.lock:
            _SWITCH.users -= 1
            if _SWITCH.users == 0:
                assert isinstance(_SWITCH.saved, float)
                sys.setswitchinterval(_SWITCH.saved)
