"""Local files, the fast way: positioned reads into caller buffers, vectored positioned
writes, early writeback and preallocation through the C library, and temporary files that
appear atomically by rename. ``LocalStore`` (``store/local.py``) is the only user.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import stat
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from ckptlib.errors import (
    CheckpointNotFoundError,
    CheckpointTooLargeError,
    CorruptCheckpointError,
    UnsupportedFeatureError,
)
from ckptlib.format.coding import Bytes
from ckptlib.store.temp_names import temp_path

# Linux transfers at most this much per read/write call (0x7ffff000).
_MAX_IO = 0x7FFFF000


class LocalFile:
    """A read-only file with positioned reads; a ``ByteSource`` for the format layer."""

    def __init__(self, path: str):
        self.path = path
        self._fd = open_regular(path)
        try:
            self._size = os.fstat(self._fd).st_size
        except OSError:
            os.close(self._fd)
            raise
        self._map: mmap.mmap | None = None
        self._view: memoryview | None = None

    @property
    def size(self) -> int:
        return self._size

    def mapped(self) -> mmap.mmap:
        """A copy-on-write memory map of the whole file (one per file, made on first use).

        Arrays viewing it share pages with the page cache until written to; writes stay
        private to this process. Checkpoint files are only ever replaced by rename, never
        rewritten in place, so views stay valid even after the file is deleted.
        """
        if self._map is None:
            try:
                self._map = mmap.mmap(self._fd, 0, access=mmap.ACCESS_COPY)
            except OSError as e:
                # A private writable map is charged in full against the memory the kernel
                # will commit, whatever the file's bytes: a (sparse) 64 GiB file fails so.
                if e.errno == errno.ENOMEM:
                    raise CheckpointTooLargeError(
                        f"cannot memory-map {self._size} bytes: too large for this memory (read with mmap=False)",
                        path=self.path,
                    ) from None
                raise UnsupportedFeatureError(
                    f"cannot memory-map this file ({e.strerror or e}); read with mmap=False", path=self.path
                ) from None
        return self._map

    def mapped_view(self) -> memoryview:
        """A memoryview of ``mapped()``, kept so that slicing it per tensor is cheap."""
        if self._view is None:
            self._view = memoryview(self.mapped())
        return self._view

    def read_at(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self._size:
            raise CorruptCheckpointError(
                f"read of {length} bytes at offset {offset} runs past the end of the file ({self._size} bytes)",
                path=self.path,
            )
        data = os.pread(self._fd, length, offset)
        if len(data) == length:
            return data
        buf = bytearray(length)
        self.readinto(offset, memoryview(buf))
        return bytes(buf)

    def readinto(self, offset: int, view: memoryview) -> None:
        """Fill ``view`` (a writable byte buffer) from ``offset``; short files are an error."""
        if offset < 0 or offset + view.nbytes > self._size:
            raise CorruptCheckpointError(
                f"read of {view.nbytes} bytes at offset {offset} runs past the end of the file ({self._size} bytes)",
                path=self.path,
            )
        done = 0
        total = view.nbytes
        while done < total:
            n = os.preadv(self._fd, [view[done : done + _MAX_IO]], offset + done)
            if n <= 0:
                raise CorruptCheckpointError("file shrank while being read", path=self.path)
            done += n

    def close(self) -> None:
        if self._view is not None:
            self._view.release()
            self._view = None
        if self._map is not None:
            with contextlib.suppress(BufferError):  # arrays still view it: it closes with them
                self._map.close()
            self._map = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> LocalFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def open_regular(path: str) -> int:
    """A read-only descriptor of the regular file at ``path``.

    Opened without blocking, since opening a FIFO with no writer would block forever;
    raises ``CheckpointNotFoundError`` if there is no such file and
    ``CorruptCheckpointError`` for a directory, FIFO, socket or device.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise CheckpointNotFoundError("no such file", path=path) from None
    except IsADirectoryError:
        raise CorruptCheckpointError("is a directory, not a regular file", path=path) from None
    except OSError as e:
        if e.errno != errno.ENXIO:  # what opening a socket (or a device with no driver) gives
            raise
        kind = _file_kind(os.stat(path).st_mode)
        raise CorruptCheckpointError(f"is a {kind}, not a regular file", path=path) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise CorruptCheckpointError(f"is a {_file_kind(mode)}, not a regular file", path=path)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _file_kind(mode: int) -> str:
    kinds = [(stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISSOCK, "socket")]
    kinds += [(stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device")]
    return next((name for test, name in kinds if test(mode)), "special file")


# The most buffers one writev/pwritev call takes (POSIX IOV_MAX; 1024 on Linux).
_IOV_MAX = min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024, 1024) or 1024


def pwrite_all(fd: int, buffers: Sequence[Any], offset: int, size: int | None = None) -> None:
    """Write ``buffers`` (memoryviews or C-contiguous arrays) back to back at ``offset``,
    with as few system calls as the kernel allows: short writes are resumed, and more than
    ``IOV_MAX`` buffers or ``_MAX_IO`` bytes per call are split.

    ``size``, the buffers' total ``nbytes`` if the caller knows it, lets a batch that fits
    one call go straight to the kernel with no Python pass over the buffers: with a
    thousand buffers per call, that pass holds the GIL longer than the call itself."""
    written = 0
    if size is not None and 0 < size <= _MAX_IO and 1 < len(buffers) <= _IOV_MAX:
        written = _checked(os.pwritev(fd, buffers, offset))
        if written == size:
            return
    pending = [b for b in buffers if b.nbytes]
    i = 0
    while True:
        offset += written
        while written:  # drop what the last call wrote
            head = pending[i]
            if written >= head.nbytes:
                written -= head.nbytes
                i += 1
            else:
                pending[i] = _bytes_of(head)[written:]
                written = 0
        if i == len(pending):
            return
        batch: list[Any] = []
        total = 0
        for buf in pending[i : i + _IOV_MAX]:
            if total + buf.nbytes > _MAX_IO:
                if not batch:
                    batch.append(_bytes_of(buf)[:_MAX_IO])
                break
            batch.append(buf)
            total += buf.nbytes
        written = _checked(os.pwritev(fd, batch, offset) if len(batch) > 1 else os.pwrite(fd, batch[0], offset))


def _checked(written: int) -> int:
    if written <= 0:
        raise OSError(errno.EIO, "write made no progress")
    return written


def _bytes_of(buffer: Any) -> memoryview:
    """A flat byte view of a buffer (any shape or item type)."""
    return np.frombuffer(buffer, dtype=np.uint8).data


def _libc_function(names: Sequence[str], argtypes: list[Any]) -> Any:
    """The first of ``names`` that Linux's C library has, through ctypes, typed to take
    ``argtypes`` and return an int; None off Linux or where it has none of them."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    for name in names:
        function = getattr(libc, name, None)
        if function is not None:
            function.argtypes = argtypes
            function.restype = ctypes.c_int
            return function
    return None


_sync_file_range = _libc_function(["sync_file_range"], [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint])
_SYNC_FILE_RANGE_WRITE = 2  # queue writeback, do not wait


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``[offset, offset+length)`` of ``fd`` to disk now,
    without waiting: a later ``fsync`` then finds most pages already clean. Best effort
    (a no-op off Linux); durability still comes from ``fsync``."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


# fallocate with 64-bit offsets (plain fallocate takes them only where long is 64-bit).
# Not os.posix_fallocate: where a file system cannot preallocate, glibc emulates that by
# writing to every block.
_fallocate = _libc_function(
    ["fallocate64", *(["fallocate"] if ctypes.sizeof(ctypes.c_long) == 8 else [])],
    [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64],
)
_fstatfs = _libc_function(["fstatfs64", "fstatfs"], [ctypes.c_int, ctypes.c_void_p])
EXT4_MAGIC = 0xEF53  # statfs's f_type for ext2, ext3 and ext4
# File systems on which reserving a new file's blocks before writing it pays. ext4
# otherwise allocates each block as it is written (delayed allocation). Elsewhere it may
# cost: tmpfs fills every page at once, and btrfs stores writes into reserved extents
# uncompressed. Only what was measured is listed.
_PREALLOCATE_ON = {EXT4_MAGIC}
# fallocate's ways of saying that this file system or kernel cannot preallocate.
_CANNOT_PREALLOCATE = {errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.ENODEV, errno.EPERM}


def _file_system_type(fd: int) -> int | None:
    """The ``f_type`` magic number of the file system holding ``fd``; None if unknown."""
    if _fstatfs is None:
        return None
    result = ctypes.create_string_buffer(512)  # a struct statfs, whose first field is f_type
    if _fstatfs(fd, result) != 0:
        return None
    return ctypes.c_ulong.from_buffer(result).value & 0xFFFFFFFF


def preallocate(fd: int, size: int) -> None:
    """Reserve the first ``size`` bytes of the new, empty file ``fd`` on disk (its size
    becomes ``size``) before they are written, on file systems where that pays (ext4):
    writes into reserved blocks skip the per-block allocation (1 GiB wrote in 0.196 s
    instead of 0.258 s here), and a disk too full for the whole file fails here, before
    anything is written. Elsewhere, or where the kernel refuses, a no-op."""
    if _fallocate is None or size <= 0 or _file_system_type(fd) not in _PREALLOCATE_ON:
        return
    while _fallocate(fd, 0, 0, size) != 0:
        code = ctypes.get_errno()
        if code in _CANNOT_PREALLOCATE:
            return
        if code != errno.EINTR:
            raise OSError(code, f"cannot reserve {size} bytes: {os.strerror(code)}")


def write_all(fd: int, data: Bytes) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.write(fd, view[:_MAX_IO])
        view = view[n:]


def create_temp(final_path: str) -> tuple[str, int]:
    """Create a fresh temporary file for ``final_path``; returns ``(path, fd)``."""
    path = temp_path(final_path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
    return path, fd


def name_file(error: OSError, path: str) -> None:
    """Give ``error`` the file name ``path`` if it has none, before it is re-raised: a
    failed ``write`` or ``fsync`` names no file, and "No space left on device" alone does
    not say where. Its type and errno stay, so ``except OSError`` and errno checks work."""
    if error.filename is None and error.errno is not None:
        error.filename = path


@contextlib.contextmanager
def new_temp_file(final_path: str, sync: bool) -> Iterator[tuple[str, int]]:
    """A fresh temporary file beside ``final_path`` as ``(path, fd)``; flushed to disk
    (``sync``) and closed on exit, or closed and removed if the block raises. An
    ``OSError`` names ``final_path`` (see ``name_file``)."""
    path, fd = create_temp(final_path)
    try:
        yield path, fd
        if sync:
            os.fsync(fd)
    except BaseException as e:
        os.close(fd)
        remove_quietly(path)
        if isinstance(e, OSError):
            name_file(e, final_path)
        raise
    try:
        os.close(fd)
    except OSError as e:  # network file systems may report a failed write only here
        remove_quietly(path)
        name_file(e, final_path)
        raise


def write_temp(final_path: str, chunks: Iterable[Bytes], sync: bool) -> str:
    """Write ``chunks`` to a new temporary file beside ``final_path``; returns its path."""
    with new_temp_file(final_path, sync) as (path, fd):
        for chunk in chunks:
            write_all(fd, chunk)
    return path


def fsync_dir(directory: str) -> None:
    """Make renames in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:  # some file systems refuse fsync on directories
        if e.errno not in (errno.EINVAL, errno.EBADF, errno.EROFS):
            raise
    finally:
        os.close(fd)


def remove_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
