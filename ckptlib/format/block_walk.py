"""A block's entries parsed on every restart group at once, with numpy: the fast twin of
``block.parse_block_columns``'s entry loop.

::

    restart 0                 restart 1                 restart 2
    |e0 e1 e2 ... e15         |e16 e17 ... e31          |e32 ...          restart[]  n
     step k reads entry k of every group (3 one-byte varints: shared, non_shared, value_length),
     then keys are rebuilt in a matrix, one row per entry, each row copying its shared prefix
     from the row above: 15 numpy steps for groups of 16, however many groups there are.

It takes only the blocks every writer produces (restart offsets strictly increasing from 0,
one-byte varints, entries ending inside their group, at most ``_MAX_GROUP`` entries a group,
keys strictly increasing) and returns None for anything else, which ``block.py``'s loop then
parses and names the problem of. ``block.parse_block_columns`` decides when to try it.

The reference it must equal: the entry loop of ``block.parse_block_columns`` (the same keys
and value offsets for every block it accepts; for the rest, the loop's verdict). The tests
that prove they agree, on random intact and damaged blocks, and that real blocks take it:

    tests/format/test_format_block.py::test_the_numpy_walk_parses_blocks_exactly_as_the_loop_does
    tests/format/test_format_block.py::test_the_numpy_walk_takes_real_blocks
"""

from __future__ import annotations

import operator

import numpy as np

# A restart group of more entries than this (TensorFlow's hold 16) costs the walk a numpy
# step per entry, more than the loop would.
_MAX_GROUP = 64


def parse_common_block(
    data: bytes, restarts: np.ndarray, key_budget: int, matrix_budget: int
) -> tuple[list[bytes], np.ndarray, np.ndarray] | None:
    """``parse_block_columns`` for the blocks every writer produces, with the entry walk done on all
    restart groups at once: restart offsets strictly increasing from 0, every varint one
    byte, every entry ending inside its group, keys strictly increasing. Anything else
    returns None and goes through the one-entry-at-a-time loop, which names the problem.

    ``data`` is the block without its restart array, ``restarts`` that array; the keys may
    total at most ``key_budget`` bytes and their padded matrix ``matrix_budget`` (see
    ``_rebuild_keys``). Returns the keys, and where each value starts and ends in ``data``."""
    limit = len(data)
    if restarts[0] != 0 or restarts[-1] >= limit or np.any(np.diff(restarts) <= 0):
        return None
    buf = np.frombuffer(data, dtype=np.uint8)
    group_end = np.append(restarts[1:], limit)
    cursor = restarts.copy()
    active = np.arange(len(restarts))
    starts, headers = [], []
    while len(active):
        at = cursor[active]
        if np.any(at + 3 > group_end[active]):
            return None
        header = buf[at[:, None] + np.arange(3)].astype(np.int64)
        if np.any(header >= 0x80):
            return None
        after = at + 3 + header[:, 1] + header[:, 2]
        if np.any(after > group_end[active]):
            return None
        starts.append(at)
        headers.append(header)
        cursor[active] = after
        active = active[after < group_end[active]]
    order = np.argsort(np.concatenate(starts), kind="stable")
    start = np.concatenate(starts)[order]
    shared, non_shared, value_len = np.concatenate(headers)[order].T
    if int(shared.sum() + non_shared.sum()) > key_budget:
        return None
    keys = _rebuild_keys(buf, restarts, start, shared, non_shared, matrix_budget)
    if keys is None or any(map(operator.ge, keys, keys[1:])):
        return None
    value_start = start + 3 + non_shared
    return keys, value_start, value_start + value_len


def _rebuild_keys(
    buf: np.ndarray,
    restarts: np.ndarray,
    start: np.ndarray,
    shared: np.ndarray,
    non_shared: np.ndarray,
    matrix_budget: int,
) -> list[bytes] | None:
    """Undo prefix compression for every entry at once: each key's own bytes are placed in a
    matrix row, then the shared prefixes are copied down the rows one restart-group step at
    a time (a group of 16 entries takes 15 steps, whatever the number of groups). None when
    a restart entry shares a prefix or an entry claims more than its predecessor's key."""
    n = len(start)
    group = np.searchsorted(restarts, start, side="right") - 1
    first = np.searchsorted(group, np.arange(len(restarts)))  # each group's first entry
    position = np.arange(n) - first[group]
    key_len = shared + non_shared
    if np.any(shared[position == 0] != 0) or np.any(shared[1:] > key_len[:-1]):
        return None
    if n and position.max() > _MAX_GROUP:  # a step per entry of the longest group would cost more than the loop
        return None
    width = int(key_len.max()) if n else 0
    if n * width > matrix_budget:  # one long key among many short
        return None
    matrix = np.zeros((n, width), dtype=np.uint8)
    total = int(non_shared.sum())
    rows = np.repeat(np.arange(n), non_shared)
    offset = np.arange(total) - np.repeat(np.cumsum(non_shared) - non_shared, non_shared)
    matrix[rows, shared[rows] + offset] = buf[start[rows] + 3 + offset]
    columns = np.arange(width)
    for step in range(1, int(position.max()) + 1 if n else 0):
        at = np.flatnonzero(position == step)
        inherited = columns < shared[at, None]
        matrix[at] = np.where(inherited, matrix[at - 1], matrix[at])
    joined = matrix[columns < key_len[:, None]].tobytes()
    ends = np.cumsum(key_len)
    return list(map(joined.__getitem__, map(slice, (ends - key_len).tolist(), ends.tolist())))
