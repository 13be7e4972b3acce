"""Reading many tensors into private memory at once (``read_all`` without memory maps).

The spans to read (shard, offset, size) are sorted by place; spans back to back in a shard
form a run, and the runs are laid back to back in one buffer of fresh private memory, so
that a restore makes one allocation and each tensor is a view of its place in it::

    shard 0: [a][b][c] gap [d]      shard 1: [e][f]
    buffer:  [a][b][c][d][e][f]     runs (a b c) (d) (e f)

Runs are read in pieces of at most ``_PIECE_BYTES`` (cut anywhere, even inside a tensor) on
a thread pool, each piece's crc32c computed by the thread that read it while its bytes are
still in cache: a read from the page cache is a copy made by the kernel, and it and the
checksum both release the GIL, so every core copies and checksums. As in ``span_checks``
(the mmap path, which this must agree with: ``tests/test_mmap.py`` and
``tests/test_read_all.py`` compare the two), the pieces' checksums combine into each run's,
which is compared with the run's checksum combined from the tensors' stored ones; only a
run that fails is checked tensor by tensor, to learn which tensors are damaged.

The buffer comes from ``private_memory``: fresh memory, or one an earlier restore freed.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from ckptlib.format.crc_columns import crc32c_fast
from ckptlib.format.crc_combine import combine_runs
from ckptlib.private_memory import private_buffer
from ckptlib.store import ReadFile

T = TypeVar("T")

# Pieces small enough to stay in cache between their read and their checksum, and to spread
# a 64 MiB tensor over several cores; large enough that a piece's Python costs nothing.
_PIECE_BYTES = 8 << 20


def read_spans(
    files: Mapping[int, ReadFile],
    shard_ids: np.ndarray,
    offsets: np.ndarray,
    sizes: np.ndarray,
    expected: np.ndarray | None,
    meanwhile: Callable[[np.ndarray, np.ndarray], T],
    *,
    threads: int,
) -> tuple[np.ndarray, T]:
    """Read the spans ``files[shard_ids[i]]`` at ``offsets[i]`` of ``sizes[i]`` bytes (each
    inside its file, none empty, none overlapping another) into one new buffer.

    ``meanwhile(buffer, places)`` runs on this thread while other threads read (``places[i]``:
    where span ``i`` lies in ``buffer``); its result is returned with whether each span has
    the crc32c ``expected[i]`` (all True when ``expected`` is None: nothing is checked).
    Pieces are read on up to ``threads`` threads (the store's ``io_threads``: cores for a
    local disk, more for a network store, where each ranged read mostly waits).
    Raises what ``ReadFile.readinto`` raises (a file that shrank, say)."""
    if not len(offsets):
        return np.ones(0, dtype=bool), meanwhile(private_buffer(0), np.zeros(0, dtype=np.int64))
    order = np.lexsort((offsets, shard_ids))
    shard, start, size = shard_ids[order], offsets[order], sizes[order]
    at = np.cumsum(size) - size  # place of each span (in sorted order) in the buffer
    places = np.empty(len(order), dtype=np.int64)
    places[order] = at
    first = np.ones(len(order), dtype=bool)  # does a run of back-to-back spans begin here?
    first[1:] = (shard[1:] != shard[:-1]) | (start[1:] != start[:-1] + size[:-1])
    runs = np.flatnonzero(first)
    last = np.append(runs[1:], len(order)) - 1
    run_bytes = start[last] + size[last] - start[runs]
    pieces_per_run = -(-run_bytes // _PIECE_BYTES)
    first_piece = np.cumsum(pieces_per_run) - pieces_per_run
    piece_run = np.repeat(np.arange(len(runs)), pieces_per_run)
    skip = _PIECE_BYTES * (np.arange(len(piece_run)) - first_piece[piece_run])
    piece_bytes = np.minimum(run_bytes[piece_run] - skip, _PIECE_BYTES)
    piece_shard = shard[runs][piece_run].tolist()
    piece_start = (start[runs][piece_run] + skip).tolist()
    piece_at = (at[runs][piece_run] + skip).tolist()
    piece_end = [a + n for a, n in zip(piece_at, piece_bytes.tolist(), strict=True)]
    # Consecutive pieces are grouped into tasks of about _PIECE_BYTES: many small runs
    # (tensors between strings, say) then cost one task, not one each.
    task_of = (np.cumsum(piece_bytes) - 1) // _PIECE_BYTES
    bounds = [*np.flatnonzero(np.diff(task_of, prepend=-1)).tolist(), len(piece_run)]
    buffer = private_buffer(int(at[-1] + size[-1]))
    view = buffer.data
    verify = expected is not None

    def task(a: int, b: int) -> list[int]:
        crcs = []
        for s, begin, lo, hi in zip(piece_shard[a:b], piece_start[a:b], piece_at[a:b], piece_end[a:b], strict=True):
            files[s].readinto(begin, view[lo:hi])
            if verify:
                crcs.append(crc32c_fast(view[lo:hi]))
        return crcs

    tasks = list(itertools.pairwise(bounds))
    with ThreadPoolExecutor(max(1, min(len(tasks) - 1, threads))) as pool:
        pending = [pool.submit(task, a, b) for a, b in tasks[1:]]
        result = meanwhile(buffer, places)
        actual = task(*tasks[0])
        for future in pending:
            actual.extend(future.result())
    if expected is None:
        return np.ones(len(order), dtype=bool), result
    wanted = combine_runs(expected[order], size, runs)
    found = combine_runs(np.array(actual, dtype=np.uint32), piece_bytes, first_piece)
    run_ok = found == wanted
    ok = np.repeat(run_ok, last - runs + 1)
    for r in np.flatnonzero(~run_ok).tolist():  # damage somewhere in the run: find where
        for i in range(runs[r], last[r] + 1):
            ok[i] = crc32c_fast(view[int(at[i]) : int(at[i] + size[i])]) == expected[order[i]]
    intact = np.empty(len(order), dtype=bool)
    intact[order] = ok
    return intact, result
