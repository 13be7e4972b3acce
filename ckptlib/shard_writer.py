"""Write a bundle's data shards side by side, straight from the tensors' own buffers.

::

    shard 0   [run of small tensors][ 16 MiB of a large one ][ 16 MiB ... ]   <- worker threads
    shard 1   [ 16 MiB ][ 16 MiB ][run of small tensors] ...                     pwritev each piece
    caller    crc32c of every tensor, index entries, the index table          <- meanwhile

Each shard's contents are given as consecutive buffers, so every byte's offset is known
before anything is written and the pieces need no order: workers take them from one queue
(the shards interleaved, so that every file fills at once; the kernel serialises buffered
writes to one file) while the calling thread does its own work, typically checksums and
the index. ``pwritev`` and the crc32c extension both release the GIL. With ``sync``, the
kernel is asked to start writing each piece to disk as soon as it lands, so the closing
``fsync`` has little left to wait for.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import NamedTuple, TypeVar

from ckptlib.storage import create_temp, pwrite_all, remove_quietly, start_writeback

# One write covers at most this many bytes: large enough for sequential throughput, small
# enough that a large tensor spreads over several workers and writeback starts early.
PIECE_BYTES = 16 << 20
# Buffers per write (Linux's IOV_MAX).
PIECE_BUFFERS = 1024
# The GIL switch interval while the calling thread works beside the writers (seconds).
SWITCH_INTERVAL = 0.0002
# More writer threads than this gain nothing on any disk we have measured.
MAX_WRITERS = 8

T = TypeVar("T")


class _Piece(NamedTuple):
    shard: int
    offset: int
    size: int
    buffers: list[memoryview]


def write_shards(
    final_paths: Sequence[str],
    contents: Sequence[Sequence[memoryview]],
    sync: bool,
    meanwhile: Callable[[], T],
) -> tuple[list[str], T]:
    """Write ``contents[i]`` (byte buffers, back to back) to a temporary file beside
    ``final_paths[i]``, every shard in parallel, and run ``meanwhile()`` on the calling
    thread as they are written.

    Returns the temporary paths (flushed to disk if ``sync``, and closed) and what
    ``meanwhile`` returned. If anything fails, every temporary file is removed and the
    first error is raised. The buffers must not change until this returns.
    """
    created: list[tuple[str, int]] = []
    closed: list[str] = []
    try:
        for path in final_paths:
            created.append(create_temp(path))
        fds = [fd for _, fd in created]
        pieces = deque(_interleave([_pieces(i, buffers) for i, buffers in enumerate(contents)]))
        stop = threading.Event()
        workers = max(1, min(len(fds), os.cpu_count() or 1, MAX_WRITERS))
        with ThreadPoolExecutor(workers, thread_name_prefix="ckptlib-write") as pool:
            futures = [pool.submit(_write_pieces, pieces, fds, sync, stop) for _ in range(workers)]
            try:
                with _quick_handoffs():
                    result = meanwhile()
                wait(futures)
            except BaseException:
                stop.set()  # the writers stop at their next piece; the pool's exit waits for them
                raise
            for future in futures:
                future.result()
            if sync:
                list(pool.map(os.fsync, fds))
        while created:  # an fd leaves ``created`` before its close: a failed close is not retried
            path, fd = created.pop(0)
            closed.append(path)
            os.close(fd)  # network file systems may report a failed write only here
    except BaseException:
        for _, fd in created:
            with contextlib.suppress(OSError):
                os.close(fd)
        for path in [*closed, *(path for path, _ in created)]:
            remove_quietly(path)
        raise
    return closed, result


@contextlib.contextmanager
def _quick_handoffs() -> Iterator[None]:
    """Let a writer whose system call has returned take the GIL back within a fraction of a
    millisecond, rather than the default 5 ms, while the calling thread runs Python: with
    dozens of writes per shard, waiting out full switch intervals can cost more than the
    writes themselves. Nested and concurrent saves share one setting; the last to leave
    puts the user's interval back."""
    global _handoff_users, _interval_before
    with _handoff_lock:
        if _handoff_users == 0:
            _interval_before = sys.getswitchinterval()
            sys.setswitchinterval(min(_interval_before, SWITCH_INTERVAL))
        _handoff_users += 1
    try:
        yield
    finally:
        with _handoff_lock:
            _handoff_users -= 1
            if _handoff_users == 0:
                sys.setswitchinterval(_interval_before)


_handoff_lock = threading.Lock()
_handoff_users = 0
_interval_before = 0.005


def _pieces(shard: int, buffers: Sequence[memoryview]) -> Iterator[_Piece]:
    """One shard's bytes as writes of at most ``PIECE_BYTES`` and ``PIECE_BUFFERS``."""
    offset = 0
    batch: list[memoryview] = []
    size = 0
    for buffer in buffers:
        nbytes = buffer.nbytes
        if nbytes >= PIECE_BYTES:
            if batch:
                yield _Piece(shard, offset, size, batch)
                offset, batch, size = offset + size, [], 0
            for start in range(0, nbytes, PIECE_BYTES):
                part = buffer[start : start + PIECE_BYTES]
                yield _Piece(shard, offset, part.nbytes, [part])
                offset += part.nbytes
            continue
        if size + nbytes > PIECE_BYTES or len(batch) == PIECE_BUFFERS:
            yield _Piece(shard, offset, size, batch)
            offset, batch, size = offset + size, [], 0
        batch.append(buffer)
        size += nbytes
    if size:
        yield _Piece(shard, offset, size, batch)


def _interleave(queues: list[Iterator[_Piece]]) -> Iterator[_Piece]:
    """Round-robin over the shards' pieces."""
    for group in itertools.zip_longest(*queues):
        yield from (piece for piece in group if piece is not None)


def _write_pieces(pieces: deque[_Piece], fds: list[int], sync: bool, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            piece = pieces.popleft()
        except IndexError:
            return
        try:
            pwrite_all(fds[piece.shard], piece.buffers, piece.offset)
            if sync:
                start_writeback(fds[piece.shard], piece.offset, piece.size)
        except BaseException:
            stop.set()
            raise
