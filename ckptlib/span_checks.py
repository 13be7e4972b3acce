"""Verifying the checksums of many tensors in memory-mapped shards at once.

Tensors that lie back to back in a shard are checked a run at a time: one crc32c pass
over the run's bytes (in pieces on a thread pool, their checksums combined), compared
with the run's checksum combined from the tensors' stored ones
(``format/crc_combine.py``). For 50,000 small tensors that is a few large C calls instead
of 50,000 small ones; a 128 MiB tensor is checksummed on every core. Damage inside a single tensor is caught
exactly as that tensor's own checksum would catch it (the combination is an invertible
map of each part's checksum); only a run that fails is checked tensor by tensor, to learn
which tensors are damaged.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from ckptlib.format.crc_columns import crc32c_fast
from ckptlib.format.crc_combine import combine_runs

T = TypeVar("T")

# Runs are checksummed in pieces of at most this many bytes (cut anywhere, even inside a
# tensor: their checksums combine too), so that the work spreads evenly over the pool's
# threads; pieces of at least _THREADED_BYTES go to the pool.
_PIECE_BYTES = 32 << 20
_THREADED_BYTES = 1 << 20


def check_spans(
    views: dict[int, memoryview],
    shard_ids: np.ndarray,
    offsets: np.ndarray,
    sizes: np.ndarray,
    expected: np.ndarray,
    meanwhile: Callable[[], T],
    *,
    threads: int,
) -> tuple[np.ndarray, T]:
    """Whether each span ``views[shard_ids[i]][offsets[i] : offsets[i] + sizes[i]]`` (each
    inside its view, none empty) has the crc32c ``expected[i]``; ``meanwhile()`` runs on
    this thread while up to ``threads`` other threads checksum, and its result is returned
    alongside."""
    if not len(offsets):
        return np.zeros(0, dtype=bool), meanwhile()
    if np.any(sizes <= 0):  # an empty span would make two runs start at the same place
        raise ValueError("check_spans takes non-empty spans only")
    order = np.lexsort((offsets, shard_ids))
    shard, start, size = shard_ids[order], offsets[order], sizes[order]
    first = np.ones(len(order), dtype=bool)  # does a run of back-to-back spans begin here?
    first[1:] = (shard[1:] != shard[:-1]) | (start[1:] != start[:-1] + size[:-1])
    runs = np.flatnonzero(first)
    last = np.append(runs[1:], len(order)) - 1
    run_begin, run_end = start[runs], start[last] + size[last]
    pieces_per_run = -(-(run_end - run_begin) // _PIECE_BYTES)
    first_piece = np.cumsum(pieces_per_run) - pieces_per_run
    piece_run = np.repeat(np.arange(len(runs)), pieces_per_run)
    piece_in_run = np.arange(len(piece_run)) - first_piece[piece_run]
    piece_begin = run_begin[piece_run] + _PIECE_BYTES * piece_in_run
    piece_end = np.minimum(piece_begin + _PIECE_BYTES, run_end[piece_run])
    piece_shard = shard[runs][piece_run].tolist()
    spans = [views[s][b:e] for s, b, e in zip(piece_shard, piece_begin.tolist(), piece_end.tolist(), strict=True)]
    large = sorted(
        (r for r, span in enumerate(spans) if span.nbytes >= _THREADED_BYTES), key=lambda r: -spans[r].nbytes
    )
    actual = np.zeros(len(spans), dtype=np.uint32)
    with ThreadPoolExecutor(max(1, min(len(large), threads))) as pool:
        pending = pool.map(crc32c_fast, [spans[r] for r in large])
        result = meanwhile()
        for r, span in enumerate(spans):
            if span.nbytes < _THREADED_BYTES:
                actual[r] = crc32c_fast(span)
        wanted = combine_runs(expected[order], size, runs)
        actual[large] = list(pending)
    found = combine_runs(actual, piece_end - piece_begin, first_piece)
    run_ok = found == wanted
    ok = np.repeat(run_ok, last - runs + 1)
    for r in np.flatnonzero(~run_ok).tolist():  # damage somewhere in the run: find where
        for i in range(runs[r], last[r] + 1):
            ok[i] = crc32c_fast(views[int(shard[i])][int(start[i]) : int(start[i] + size[i])]) == expected[order[i]]
    intact = np.empty(len(order), dtype=bool)
    intact[order] = ok
    return intact, result
