"""Pause Python's cyclic garbage collector around bulk work that allocates no cycles.

Reading or writing a checkpoint of 100,000 tensors allocates a million short-lived,
acyclic objects (arrays, keys, buffers). Each allocation burst can trigger a full
collection, which walks every object in the process: in a training job with a framework
loaded, a single one was seen to cost more than the whole restore. Nothing made here
needs the collector (reference counting frees it all), so it is paused and put back as
it was, also when the work raises.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
