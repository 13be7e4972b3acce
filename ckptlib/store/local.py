"""``LocalStore``: the local file system, with every fast path ckptlib has (``local_io``).

New files are written under a temporary name beside their final one and renamed into
place by the commit protocol; names are made durable with ``fsync`` on the directory. The
state file is updated under a ``filelock`` beside it; saves hold ``flock`` on the
directory's save lock (``local_lock``), which tells a repair when every leftover is
abandoned.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Sequence

from filelock import FileLock

from ckptlib.errors import CorruptCheckpointError, StorageError
from ckptlib.store.base import Buffer
from ckptlib.store.local_io import (
    LocalFile,
    create_temp,
    fsync_dir,
    name_file,
    open_regular,
    preallocate,
    pwrite_all,
    remove_quietly,
    start_writeback,
    write_temp,
)
from ckptlib.store.local_lock import repair_if_idle, saving

logger = logging.getLogger("ckptlib")


class LocalNewFile:
    """A temporary file beside ``final_path``; see ``NewFile``."""

    def __init__(self, final_path: str, size: int | None, sync: bool):
        self.final_path = final_path
        self.path, self._fd = create_temp(final_path)
        self._writeback = sync
        if size:
            try:
                preallocate(self._fd, size)
            except BaseException as e:
                self.abort()
                if isinstance(e, OSError):
                    name_file(e, final_path)
                raise

    def write_at(self, offset: int, buffers: Sequence[Buffer], size: int) -> None:
        try:
            pwrite_all(self._fd, buffers, offset, size)
            if self._writeback and size:  # a length of 0 would mean "to the end of the file"
                start_writeback(self._fd, offset, size)
        except OSError as e:
            name_file(e, self.final_path)
            raise

    def finish(self, sync: bool) -> None:
        try:
            if sync:
                os.fsync(self._fd)
            fd, self._fd = self._fd, -1
            os.close(fd)  # network file systems may report a failed write only here
        except BaseException as e:
            self.abort()
            if isinstance(e, OSError):
                name_file(e, self.final_path)
            raise

    def abort(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(OSError):
            remove_quietly(self.path)


class LocalStore:
    """Local files (see the module docstring)."""

    atomic_rename = True
    writers_per_file = 1
    can_map = True

    def __init__(self) -> None:
        self.io_threads = os.cpu_count() or 1

    def open(self, path: str) -> LocalFile:
        return LocalFile(path)

    def create(self, final_path: str, size: int | None = None, *, sync: bool = True) -> LocalNewFile:
        return LocalNewFile(final_path, size, sync)

    def rename(self, source: str, target: str) -> None:
        os.replace(source, target)

    def delete(self, path: str) -> None:
        remove_quietly(path)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def is_dir(self, path: str) -> bool:
        return os.path.isdir(path or ".")

    def listdir(self, directory: str) -> list[str]:
        try:
            return os.listdir(directory or ".")
        except (FileNotFoundError, NotADirectoryError):
            return []

    def mtime(self, path: str) -> float | None:
        try:
            return os.path.getmtime(path)
        except OSError:
            return None

    def makedirs(self, directory: str) -> None:
        if directory:
            os.makedirs(directory, exist_ok=True)

    def sync_dir(self, directory: str) -> None:
        fsync_dir(directory)

    def read_small(self, path: str, limit: int) -> bytes | None:
        try:
            with os.fdopen(open_regular(path), "rb") as f:
                # not read(limit + 1): that allocates the limit, 64 MiB, for every state file
                data = f.read(min(os.fstat(f.fileno()).st_size, limit) + 1)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if len(data) > limit:
            raise CorruptCheckpointError(f"larger than {limit} bytes", path=path)
        return data

    def write_small(self, path: str, data: bytes, sync: bool) -> None:
        temp = write_temp(path, [data], sync)
        try:
            os.replace(temp, path)
        except BaseException:
            remove_quietly(temp)
            raise
        if sync:
            fsync_dir(os.path.dirname(path))

    def update(self, path: str, change: Callable[[bytes | None], bytes | None], sync: bool) -> None:
        """Under a ``filelock`` (a hidden ``.<name>.lock`` beside ``path``, which TensorFlow
        ignores), so every updater sees the last one's bytes."""
        with self.update_lock(path):
            try:
                current = self.read_small(path, _UPDATE_LIMIT)
            except CorruptCheckpointError as e:  # not a file, or huge: replaced, as TF would
                logger.warning("replacing an unreadable %s", e)
                current = None
            except OSError as e:
                raise StorageError(f"cannot read it to update it: {e.strerror or e}", path=path) from e
            new = change(current)
            if new is not None:
                self.write_small(path, new, sync)

    @staticmethod
    def update_lock(path: str) -> FileLock:
        directory, name = os.path.split(path)
        return FileLock(os.path.join(directory, f".{name}.lock"))

    def saving(self, directory: str, repair: Callable[[], None] | None) -> contextlib.AbstractContextManager[None]:
        return saving(directory, repair)

    def repair_if_idle(self, directory: str, repair: Callable[[], None]) -> bool:
        return repair_if_idle(directory, repair)

    def real(self, path: str) -> str:
        return os.path.realpath(path or ".")

    def discard_unfinished(self, directory: str, owns: Callable[[str], bool]) -> list[str]:
        return []


# update() is for state files and journals, which callers bound themselves; this only
# keeps a hostile file from being read whole.
_UPDATE_LIMIT = 64 << 20
