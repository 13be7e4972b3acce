"""Verifying the checksums of many tensors in memory-mapped shards at once.

Tensors that lie back to back in a shard are checked a run at a time: one crc32c pass
over the run's bytes, compared with the run's checksum combined from the tensors' stored
ones (``format/crc_combine.py``). For 50,000 small tensors that is a few large C calls,
on a thread pool, instead of 50,000 small ones. Damage inside a single tensor is caught
exactly as that tensor's own checksum would catch it (the combination is an invertible
map of each part's checksum); only a run that fails is checked tensor by tensor, to learn
which tensors are damaged.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from ckptlib.format.crc import crc32c_fast
from ckptlib.format.crc_combine import combine_runs

T = TypeVar("T")

# Runs are cut at about this many bytes, so that one large shard still spreads over the
# pool's threads; runs of at least _THREADED_BYTES go to the pool.
_RUN_BYTES = 32 << 20
_THREADED_BYTES = 1 << 20


def check_spans(
    views: dict[int, memoryview],
    shard_ids: np.ndarray,
    offsets: np.ndarray,
    sizes: np.ndarray,
    expected: np.ndarray,
    meanwhile: Callable[[], T],
) -> tuple[np.ndarray, T]:
    """Whether each span ``views[shard_ids[i]][offsets[i] : offsets[i] + sizes[i]]`` (each
    inside its view, none empty) has the crc32c ``expected[i]``; ``meanwhile()`` runs on
    this thread while other threads checksum, and its result is returned alongside."""
    if not len(offsets):
        return np.zeros(0, dtype=bool), meanwhile()
    order = np.lexsort((offsets, shard_ids))
    shard, start, size = shard_ids[order], offsets[order], sizes[order]
    first = np.ones(len(order), dtype=bool)  # does a run begin at this span?
    first[1:] = (shard[1:] != shard[:-1]) | (start[1:] != start[:-1] + size[:-1])
    run_start = start[np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))]
    piece = (start - run_start) // _RUN_BYTES
    first[1:] |= piece[1:] != piece[:-1]
    runs = np.flatnonzero(first)
    last = np.append(runs[1:], len(order)) - 1
    run_shards, begins, ends = shard[runs].tolist(), start[runs].tolist(), (start[last] + size[last]).tolist()
    spans = [views[s][b:e] for s, b, e in zip(run_shards, begins, ends, strict=True)]
    large = sorted(
        (r for r, span in enumerate(spans) if span.nbytes >= _THREADED_BYTES), key=lambda r: -spans[r].nbytes
    )
    actual = np.zeros(len(spans), dtype=np.uint32)
    with ThreadPoolExecutor(max(1, min(len(large), os.cpu_count() or 1))) as pool:
        pending = pool.map(crc32c_fast, [spans[r] for r in large])
        result = meanwhile()
        for r, span in enumerate(spans):
            if span.nbytes < _THREADED_BYTES:
                actual[r] = crc32c_fast(span)
        wanted = combine_runs(expected[order], size, runs)
        actual[large] = list(pending)
    run_ok = actual == wanted
    ok = np.repeat(run_ok, np.diff(np.append(runs, len(order))))
    for r in np.flatnonzero(~run_ok).tolist():  # damage somewhere in the run: find where
        for i in range(runs[r], last[r] + 1):
            ok[i] = crc32c_fast(views[int(shard[i])][int(start[i]) : int(start[i] + size[i])]) == expected[order[i]]
    intact = np.empty(len(order), dtype=bool)
    intact[order] = ok
    return intact, result
