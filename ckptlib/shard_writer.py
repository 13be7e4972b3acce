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
from typing import NamedTuple, Protocol, TypeVar

import numpy as np

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


class Buffer(Protocol):
    """Bytes to write: a memoryview, or a C-contiguous ndarray (its buffer is written)."""

    @property
    def nbytes(self) -> int: ...


class _Piece(NamedTuple):
    shard: int
    offset: int
    size: int
    buffers: list[Buffer]


def write_shards(
    final_paths: Sequence[str],
    contents: Sequence[Sequence[Buffer]],
    sync: bool,
    meanwhile: Callable[[], T],
    sizes: Sequence[np.ndarray] | None = None,
) -> tuple[list[str], T]:
    """Write ``contents[i]`` (byte buffers, back to back) to a temporary file beside
    ``final_paths[i]``, every shard in parallel, and run ``meanwhile()`` on the calling
    thread as they are written.

    Returns the temporary paths (flushed to disk if ``sync``, and closed) and what
    ``meanwhile`` returned. If anything fails, every temporary file is removed and the
    first error is raised. The buffers must not change until this returns. ``sizes``,
    if given, holds each shard's buffer sizes (``nbytes``), saving a pass over them.
    """
    created: list[tuple[str, int]] = []
    closed: list[str] = []
    try:
        for path in final_paths:
            created.append(create_temp(path))
        fds = [fd for _, fd in created]
        pieces = deque(
            _interleave([_pieces(i, buffers, sizes[i] if sizes else None) for i, buffers in enumerate(contents)])
        )
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


def _pieces(shard: int, buffers: Sequence[Buffer], sizes: np.ndarray | None) -> list[_Piece]:
    """One shard's bytes as writes of at most about ``PIECE_BYTES`` and at most
    ``PIECE_BUFFERS`` buffers: runs of small buffers together, large ones cut up."""
    if sizes is None:
        sizes = np.fromiter((buffer.nbytes for buffer in buffers), dtype=np.int64, count=len(buffers))
    ends = np.cumsum(sizes)
    starts = (ends - sizes).tolist()
    large = np.flatnonzero(sizes >= PIECE_BYTES).tolist()
    pieces: list[_Piece] = []
    i, n = 0, len(buffers)
    for stop in [*large, n]:  # the small buffers before each large one, then the large one
        while i < stop:
            # as many as fit in PIECE_BYTES (at least one), at most PIECE_BUFFERS
            j = int(np.searchsorted(ends, starts[i] + PIECE_BYTES, side="right"))
            j = min(max(j, i + 1), i + PIECE_BUFFERS, stop)
            pieces.append(_Piece(shard, starts[i], int(ends[j - 1]) - starts[i], list(buffers[i:j])))
            i = j
        if stop < n:
            flat = np.frombuffer(buffers[stop], dtype=np.uint8)  # type: ignore[call-overload]
            for start in range(0, flat.size, PIECE_BYTES):
                part = flat[start : start + PIECE_BYTES]
                pieces.append(_Piece(shard, starts[stop] + start, part.size, [part]))
            i = stop + 1
    return pieces


def _interleave(queues: list[list[_Piece]]) -> Iterator[_Piece]:
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
