"""span_checks.check_spans: run-combined verification agrees with one crc32c per span."""

from __future__ import annotations

import threading

import crc32c
import numpy as np
import pytest

from ckptlib import span_checks


def layout(rng: np.random.Generator, count: int) -> tuple[dict[int, memoryview], np.ndarray, np.ndarray, np.ndarray]:
    """Spans over two shards: mostly back to back, some with gaps, some overlapping, in
    shuffled order."""
    shard_ids, offsets, sizes = [], [], []
    ends = {0: 0, 1: 0}
    for _ in range(count):
        shard = int(rng.integers(0, 2))
        size = int(rng.integers(1, 3000))
        gap = int(rng.choice([0, 0, 0, 0, 7, -5])) if ends[shard] > 10 else 0
        offsets.append(ends[shard] + gap)
        shard_ids.append(shard)
        sizes.append(size)
        ends[shard] = ends[shard] + gap + size
    views = {s: memoryview(bytearray(rng.bytes(ends[s]))) for s in (0, 1)}
    order = rng.permutation(count)
    return views, np.array(shard_ids)[order], np.array(offsets)[order], np.array(sizes)[order]


def direct(views: dict[int, memoryview], shard_ids: np.ndarray, offsets: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    return np.array(
        [crc32c.crc32c(views[s][o : o + n]) for s, o, n in zip(shard_ids.tolist(), offsets.tolist(), sizes.tolist())],
        dtype=np.uint32,
    )


@pytest.mark.parametrize("seed", range(12))
def test_verdicts_match_one_checksum_per_span(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    monkeypatch.setattr(span_checks, "_PIECE_BYTES", 1_000)  # several pieces per run and per span
    monkeypatch.setattr(span_checks, "_THREADED_BYTES", 8_000)  # some on the pool, some here
    rng = np.random.default_rng(seed)
    views, shard_ids, offsets, sizes = layout(rng, 200)
    expected = direct(views, shard_ids, offsets, sizes)
    for _ in range(int(rng.integers(0, 4))):  # damage the data after the checksums were taken
        shard = int(rng.integers(0, 2))
        if len(views[shard]):
            views[shard][int(rng.integers(0, len(views[shard])))] ^= 1 << int(rng.integers(0, 8))
    for row in rng.integers(0, 200, int(rng.integers(0, 3))).tolist():  # and some stored checksums
        expected[row] ^= np.uint32(1) << np.uint32(rng.integers(0, 32))
    intact, _ = span_checks.check_spans(views, shard_ids, offsets, sizes, expected, lambda: None, threads=2)
    assert intact.tolist() == (direct(views, shard_ids, offsets, sizes) == expected).tolist()


def test_meanwhile_runs_on_the_calling_thread_and_its_result_comes_back() -> None:
    views = {0: memoryview(bytes(range(256)) * 64)}
    sizes = np.array([4096, 4096, 8192])
    offsets = np.array([0, 4096, 8192])
    expected = direct(views, np.zeros(3, np.int64), offsets, sizes)
    threads = []
    intact, result = span_checks.check_spans(
        views,
        np.zeros(3, np.int64),
        offsets,
        sizes,
        expected,
        lambda: threads.append(threading.current_thread()) or 42,
        threads=2,
    )
    assert intact.tolist() == [True, True, True]
    assert result == 42 and threads == [threading.main_thread()]


def test_no_spans() -> None:
    intact, result = span_checks.check_spans(
        {},
        np.zeros(0, np.int64),
        np.zeros(0, np.int64),
        np.zeros(0, np.int64),
        np.zeros(0, np.uint32),
        lambda: "x",
        threads=2,
    )
    assert intact.shape == (0,) and result == "x"


@pytest.mark.parametrize("damage_at", [None, 0, 2999, 3000, 4999])
def test_one_large_span_is_checked_in_pieces(monkeypatch: pytest.MonkeyPatch, damage_at: int | None) -> None:
    monkeypatch.setattr(span_checks, "_PIECE_BYTES", 1_000)
    monkeypatch.setattr(span_checks, "_THREADED_BYTES", 1_000)
    data = bytearray(np.random.default_rng(1).bytes(5_000))
    expected = np.array([crc32c.crc32c(bytes(data))], dtype=np.uint32)
    if damage_at is not None:
        data[damage_at] ^= 0x10
    one = np.zeros(1, np.int64)
    intact, _ = span_checks.check_spans(
        {0: memoryview(data)}, one, one, np.array([5_000]), expected, lambda: None, threads=2
    )
    assert intact.tolist() == [damage_at is None]
