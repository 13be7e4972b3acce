"""Which data shard each tensor of a bundle goes to."""

from __future__ import annotations

import heapq

import numpy as np


def assign_shards(nbytes: np.ndarray, count: int) -> list[list[int]] | None:
    """Spread tensors over shards to balance their bytes; each shard lists its tensors
    (by place in ``nbytes``, each tensor's size) in the order they were added. None: one shard, everything
    in order.

    Large tensors (an eighth of a shard's share or more) go first, largest first onto
    the least-filled shard. The rest, in the order added, top the shards up to one
    common level in consecutive runs: neighbours stay together (a reader checks
    back-to-back tensors in one pass), and no shard is left short by more than about
    one small tensor.
    """
    if count == 1:
        return None
    weights = np.maximum(nbytes, 1)
    share = int(weights.sum()) / count
    owner = np.empty(len(weights), dtype=np.int64)
    is_large = weights * 8 >= share
    large = np.flatnonzero(is_large)
    heap = [(0, shard) for shard in range(count)]  # (load, shard): the least filled on top
    for i in large[np.argsort(-weights[large], kind="stable")].tolist():
        load, shard = heap[0]
        owner[i] = shard
        heapq.heapreplace(heap, (load + int(weights[i]), shard))
    loads = np.zeros(count, dtype=np.float64)
    for load, shard in heap:
        loads[shard] = load
    small = np.flatnonzero(~is_large)
    ends = np.cumsum(weights[small])
    room = np.cumsum(np.maximum(_fill_level(loads, float(ends[-1]) if len(ends) else 0.0) - loads, 0))
    middles = ends - weights[small] / 2
    owner[small] = np.minimum(np.searchsorted(room, middles, side="right"), count - 1)
    order = np.argsort(owner, kind="stable")
    return [part.tolist() for part in np.split(order, np.cumsum(np.bincount(owner, minlength=count))[:-1])]


def _fill_level(loads: np.ndarray, amount: float) -> float:
    """The level to which ``amount`` more tops up every load below it (water filling)."""
    ordered = np.sort(loads)
    below = np.cumsum(ordered)
    for k in range(1, len(ordered) + 1):  # fill the k least loaded shards
        level = (amount + below[k - 1]) / k
        if k == len(ordered) or level <= ordered[k]:
            return float(level)
    return 0.0  # no shards
