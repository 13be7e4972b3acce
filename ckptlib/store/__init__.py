"""Which store holds a path: local paths go to the local file system, URLs to the store
registered for their scheme, or else to an fsspec-backed one (``s3://``, ``gs://``, ...).

``register("mem", MemoryStore())`` makes ``mem://...`` paths live in that store (tests do
this); ``register("s3", FsspecStore(my_fs))`` picks the filesystem, credentials and
endpoint that ``s3://`` paths use instead of fsspec's defaults.
"""

from __future__ import annotations

import re
import threading

from ckptlib.store.base import NewFile, ReadFile, Store
from ckptlib.store.local import LocalStore
from ckptlib.store.memory import MemoryStore

__all__ = ["LocalStore", "MemoryStore", "NewFile", "ReadFile", "Store", "is_url", "register", "store_for"]

LOCAL = LocalStore()

_SCHEME = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]+)://")
_registered: dict[str, Store] = {}
_made: dict[str, Store] = {}  # fsspec stores made for a scheme on first use
_lock = threading.Lock()


def is_url(path: str) -> bool:
    """Whether ``path`` names a scheme (``s3://b/k``); local paths do not."""
    return _SCHEME.match(path) is not None


def store_for(path: str) -> Store:
    """The store holding ``path``."""
    match = _SCHEME.match(path)
    if match is None:
        return LOCAL
    scheme = match.group(1).lower()
    with _lock:
        found = _registered.get(scheme) or _made.get(scheme)
        if found is None:
            from ckptlib.store.remote import FsspecStore

            found = _made[scheme] = FsspecStore.for_url(path)
        return found


def register(scheme: str, store: Store | None) -> None:
    """Route ``scheme://`` paths to ``store`` (None: back to the default for that scheme)."""
    scheme = scheme.lower()
    with _lock:
        _made.pop(scheme, None)
        if store is None:
            _registered.pop(scheme, None)
        else:
            _registered[scheme] = store
