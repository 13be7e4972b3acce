"""``MemoryStore``: files in a dict, for tests (the role of LevelDB's ``MemEnv``).

It behaves as a local disk does where the commit protocol can tell: new files are written
under temporary names and renamed atomically, and saves hold a lock that tells a repair
when no other save is running, but only within this process. Subclass it to inject faults
(override ``create``, ``rename``...), which is what it is for.
"""

from __future__ import annotations

import contextlib
import posixpath
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from ckptlib.errors import CheckpointNotFoundError, CorruptCheckpointError
from ckptlib.store.base import Buffer
from ckptlib.store.temp_names import temp_path


class MemoryFile:
    """An immutable snapshot of one file's bytes; see ``ReadFile``."""

    def __init__(self, path: str, data: bytes):
        self.path = path
        self._data = data

    @property
    def size(self) -> int:
        return len(self._data)

    def read_at(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        return self._data[offset : offset + length]

    def readinto(self, offset: int, view: memoryview) -> None:
        self._check(offset, view.nbytes)
        view.cast("B")[:] = self._data[offset : offset + view.nbytes]

    def mapped(self) -> None:
        return None

    def mapped_view(self) -> None:
        return None

    def close(self) -> None:
        pass

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > len(self._data):
            raise CorruptCheckpointError(
                f"read of {length} bytes at offset {offset} runs past the end of the file ({len(self._data)} bytes)",
                path=self.path,
            )


class MemoryNewFile:
    """A file being written into memory under a temporary name; see ``NewFile``."""

    def __init__(self, store: MemoryStore, final_path: str, size: int | None):
        self.final_path = final_path
        self.path = temp_path(final_path)
        self._store = store
        self._data = bytearray(size or 0)
        self._lock = threading.Lock()
        store._put(self.path, b"")  # listed from the start, as a local temporary file is

    def write_at(self, offset: int, buffers: Sequence[Buffer], size: int) -> None:
        joined = b"".join(np.frombuffer(b, dtype=np.uint8).tobytes() for b in buffers)  # type: ignore[call-overload]
        with self._lock:
            if len(self._data) < offset + len(joined):
                self._data.extend(bytes(offset + len(joined) - len(self._data)))
            self._data[offset : offset + len(joined)] = joined

    def finish(self, sync: bool) -> None:
        with self._lock:
            self._store._put(self.path, bytes(self._data))

    def abort(self) -> None:
        self._store.delete(self.path)


class MemoryStore:
    """Files in memory; see the module docstring. Paths are any strings; directories are
    implied by the files in them."""

    atomic_rename = True
    writers_per_file = 1
    can_map = False
    io_threads = 4

    def __init__(self) -> None:
        self._files: dict[str, tuple[bytes, float]] = {}
        self._lock = threading.RLock()
        self._changed = threading.Condition()
        self._saves: dict[str, int] = {}  # saves running, by directory
        self._repairing: set[str] = set()

    def open(self, path: str) -> MemoryFile:
        path = _norm(path)
        with self._lock:
            found = self._files.get(path)
            if found is None:
                if self._is_dir(path):
                    raise CorruptCheckpointError("is a directory, not a regular file", path=path)
                raise CheckpointNotFoundError("no such file", path=path)
        return MemoryFile(path, found[0])

    def create(self, final_path: str, size: int | None = None, *, sync: bool = True) -> MemoryNewFile:
        return MemoryNewFile(self, _norm(final_path), size)

    def rename(self, source: str, target: str) -> None:
        with self._lock:
            found = self._files.pop(_norm(source), None)
            if found is None:
                raise FileNotFoundError(2, "No such file or directory", source)
            self._files[_norm(target)] = found

    def delete(self, path: str) -> None:
        with self._lock:
            self._files.pop(_norm(path), None)

    def exists(self, path: str) -> bool:
        path = _norm(path)
        with self._lock:
            return path in self._files or self._is_dir(path)

    def is_dir(self, path: str) -> bool:
        with self._lock:
            return self._is_dir(_norm(path))

    def listdir(self, directory: str) -> list[str]:
        directory = _norm(directory)
        with self._lock:
            return [p.rpartition("/")[2] for p in self._files if _parent(p) == directory]

    def mtime(self, path: str) -> float | None:
        with self._lock:
            found = self._files.get(_norm(path))
        return None if found is None else found[1]

    def makedirs(self, directory: str) -> None:
        pass

    def sync_dir(self, directory: str) -> None:
        pass

    def read_small(self, path: str, limit: int) -> bytes | None:
        with self._lock:
            found = self._files.get(_norm(path))
        if found is None:
            return None
        if len(found[0]) > limit:
            raise CorruptCheckpointError(f"larger than {limit} bytes", path=path)
        return found[0]

    def write_small(self, path: str, data: bytes, sync: bool) -> None:
        self._put(_norm(path), bytes(data))

    def update(self, path: str, change: Callable[[bytes | None], bytes | None], sync: bool) -> None:
        with self._lock:
            found = self._files.get(_norm(path))
            new = change(None if found is None else found[0])
            if new is not None:
                self._put(_norm(path), bytes(new))

    @contextlib.contextmanager
    def saving(self, directory: str, repair: Callable[[], None] | None) -> Iterator[None]:
        """As ``flock`` does for local files: a repair runs alone, and only when no save is
        running; saves wait for a running repair."""
        directory = _norm(directory)
        with self._changed:
            while directory in self._repairing:
                self._changed.wait()
            idle = not self._saves.get(directory)
            self._saves[directory] = self._saves.get(directory, 0) + 1
            if idle and repair is not None:
                self._repairing.add(directory)
        try:
            if idle and repair is not None:
                try:
                    repair()
                finally:
                    with self._changed:
                        self._repairing.discard(directory)
                        self._changed.notify_all()
            yield
        finally:
            with self._changed:
                self._saves[directory] -= 1

    def repair_if_idle(self, directory: str, repair: Callable[[], None]) -> bool:
        directory = _norm(directory)
        with self._changed:
            if self._saves.get(directory) or directory in self._repairing:
                return False
            self._repairing.add(directory)
        try:
            repair()
        finally:
            with self._changed:
                self._repairing.discard(directory)
                self._changed.notify_all()
        return True

    def real(self, path: str) -> str:
        return _norm(path)

    def discard_unfinished(self, directory: str, owns: Callable[[str], bool]) -> list[str]:
        return []

    def _put(self, path: str, data: bytes) -> None:
        with self._lock:
            self._files[path] = (data, time.time())

    def _is_dir(self, path: str) -> bool:
        prefix = path.rstrip("/") + "/"
        return path in ("", ".") or any(p.startswith(prefix) for p in self._files)


def _norm(path: str) -> str:
    """One spelling per path: ``scheme://`` kept, the rest normalised as a POSIX path."""
    scheme, sep, rest = path.rpartition("://")
    rest = posixpath.normpath(rest) if rest else "."
    return f"{scheme}{sep}{rest}" if sep else rest


def _parent(path: str) -> str:
    scheme, sep, rest = path.rpartition("://")
    return _norm(f"{scheme}{sep}{posixpath.dirname(rest)}")
