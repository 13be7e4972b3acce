"""Write a bundle's data shards side by side, straight from the tensors' own buffers.

::

    shard 0   [run of small tensors][ 16 MiB of a large one ][ 16 MiB ... ]   <- writer threads
    shard 1   [ 16 MiB ][ 16 MiB ][run of small tensors] ...                     pwritev each piece
    caller    crc32c of every tensor, index entries, the index table          <- meanwhile,
              then whatever pieces are still queued                              then writes

Each shard's contents are given as consecutive buffers, so every byte's offset follows
from the sizes of the buffers before it and the pieces need no order: the calling thread
cuts the shards into pieces a thousand buffers at a time and queues them (the shards
interleaved, so that every file fills at once; the kernel serialises buffered writes to
one file), and workers start writing the first piece while later ones are still being cut.
Then the calling thread does its own work, typically checksums and the index, and then
helps write what is left: it counts as one of the writers, so the pool has a thread for
each other core a shard can use (always at least one, which writes while the caller
works). The local store's ``pwritev`` and the crc32c extension both release the GIL; on
a local disk, files are written one writer each (the kernel serialises buffered writes to
one file), while a network store takes several pieces of one file at once
(``Store.writers_per_file``).
"""

from __future__ import annotations

import itertools
import operator
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import NamedTuple, TypeVar

import numpy as np

from ckptlib.store import NewFile, Store
from ckptlib.store.base import Buffer

# One write covers at most this many bytes: large enough for sequential throughput, small
# enough that a large tensor spreads over several workers and writeback starts early.
PIECE_BYTES = 16 << 20
# Buffers per write (Linux's IOV_MAX).
PIECE_BUFFERS = 1024
# More writer threads than this gain nothing on any disk we have measured.
MAX_WRITERS = 8

T = TypeVar("T")


class _Piece(NamedTuple):
    shard: int
    offset: int
    size: int
    buffers: list[Buffer]


def write_shards(
    store: Store,
    final_paths: Sequence[str],
    contents: Sequence[Sequence[Buffer]],
    sync: bool,
    meanwhile: Callable[[list[np.ndarray]], T],
    sizes: Sequence[np.ndarray] | None = None,
    *,
    threads: int | None = None,
) -> tuple[list[NewFile], T]:
    """Write ``contents[i]`` (byte buffers, back to back) to a new file of ``store`` that
    will become ``final_paths[i]``, every shard in parallel, and run ``meanwhile`` on the
    calling thread as they are written; it is given each shard's buffer sizes (``nbytes``,
    int64).

    Returns the files, finished (durable if ``sync``; on a store without rename, visible
    under their final paths), and what ``meanwhile`` returned. If anything fails, every
    file is aborted and the error is raised (the calling thread's own, if it failed too).
    The buffers must not change until this returns. ``sizes``, if given, holds each
    shard's buffer sizes, saving a pass over them. ``threads`` caps the writers, this
    thread included (default: the store's ``io_threads``). An ``OSError`` names the shard
    it was writing.
    """
    if sizes is None:
        sizes = [np.fromiter(map(_NBYTES, buffers), dtype=np.int64, count=len(buffers)) for buffers in contents]
    files: list[NewFile] = []
    try:
        for path, shard_sizes in zip(final_paths, sizes, strict=True):
            files.append(store.create(path, int(shard_sizes.sum()), sync=sync))
        queue = _PieceQueue()
        # The calling thread writes too once ``meanwhile`` is done, so it counts as one of
        # the writers: one more thread would only compete with it for a core meanwhile.
        allowed = store.io_threads if threads is None else threads
        workers = max(1, min(len(files) * store.writers_per_file, allowed, MAX_WRITERS) - 1)
        with ThreadPoolExecutor(workers, thread_name_prefix="ckptlib-write") as pool:
            futures: list[Future[None]] = []
            try:
                for _ in range(workers):
                    futures.append(pool.submit(_write_pieces, queue, files))
                _queue_pieces(queue, contents, sizes)
                if not queue.aborted:  # else a writer failed: its error is raised below
                    result = meanwhile(list(sizes))
                _write_pieces(queue, files)
                wait(futures)
            except BaseException:
                queue.abort()  # the writers stop after their current piece; the pool's exit waits for them
                raise
            finally:
                queue.close()
            for future in futures:
                future.result()
            list(pool.map(lambda file: file.finish(sync), files))
    except BaseException:
        for file in files:
            file.abort()
        raise
    return files, result


class _PieceQueue:
    """Pieces handed from the calling thread to the writers as they are cut."""

    def __init__(self) -> None:
        self._pieces: deque[_Piece] = deque()
        self._ready = threading.Condition()
        self._closed = False
        self.aborted = False

    def put(self, pieces: list[_Piece]) -> None:
        with self._ready:
            if not self._closed:
                self._pieces.extend(pieces)
                self._ready.notify(len(pieces))

    def close(self) -> None:
        """No more pieces: writers finish what is queued, then stop."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    def abort(self) -> None:
        """Something failed: drop what is queued, take nothing more, let every writer stop."""
        with self._ready:
            self._closed = self.aborted = True
            self._pieces.clear()
            self._ready.notify_all()

    def get(self) -> _Piece | None:
        """The next piece, waiting for one if none is queued yet; None once closed and empty."""
        with self._ready:
            while not self._pieces and not self._closed:
                self._ready.wait()
            return self._pieces.popleft() if self._pieces else None


def _queue_pieces(queue: _PieceQueue, contents: Sequence[Sequence[Buffer]], sizes: Sequence[np.ndarray]) -> None:
    """Cut every shard into pieces, ``PIECE_BUFFERS`` buffers of each at a time, and queue
    each round as soon as it is cut, its pieces taking turns between the shards; then
    close the queue. ``sizes`` holds each shard's buffer sizes."""
    ends = [0] * len(contents)  # where each shard's next buffer starts
    step = PIECE_BUFFERS
    for first in range(0, max(map(len, contents), default=0), step):
        if queue.aborted:
            break
        this_round: list[list[_Piece]] = []
        for shard, buffers in enumerate(contents):
            batch = buffers[first : first + step]
            if not batch:
                continue
            batch_sizes = sizes[shard][first : first + step]
            this_round.append(_pieces(shard, batch, batch_sizes, ends[shard]))
            ends[shard] += int(batch_sizes.sum())
        queue.put([piece for group in itertools.zip_longest(*this_round) for piece in group if piece is not None])
    queue.close()


_NBYTES = operator.attrgetter("nbytes")


def _pieces(shard: int, buffers: Sequence[Buffer], sizes: np.ndarray | None, base: int = 0) -> list[_Piece]:
    """Buffers that lie back to back from offset ``base`` of a shard, as writes of at most
    about ``PIECE_BYTES`` and at most ``PIECE_BUFFERS`` buffers: runs of small buffers
    together, large ones cut up."""
    if sizes is None:
        sizes = np.fromiter(map(_NBYTES, buffers), dtype=np.int64, count=len(buffers))
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
            pieces.append(_Piece(shard, base + starts[i], int(ends[j - 1]) - starts[i], list(buffers[i:j])))
            i = j
        if stop < n:
            flat = np.frombuffer(buffers[stop], dtype=np.uint8)  # type: ignore[call-overload]
            for start in range(0, flat.size, PIECE_BYTES):
                part = flat[start : start + PIECE_BYTES]
                pieces.append(_Piece(shard, base + starts[stop] + start, part.size, [part]))
            i = stop + 1
    return pieces


def _write_pieces(pieces: _PieceQueue, files: list[NewFile]) -> None:
    while (piece := pieces.get()) is not None:
        try:
            files[piece.shard].write_at(piece.offset, piece.buffers, piece.size)
        except BaseException:
            pieces.abort()
            raise
