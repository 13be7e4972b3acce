"""Restore buffers kept after their arrays die and handed to the next restore
(``ckptlib.private_memory``): reuse never changes an array still held."""

from __future__ import annotations

import gc
import multiprocessing
import threading
from pathlib import Path

import numpy as np
import pytest

import ckptlib
from ckptlib import private_memory

MIB = 1 << 20


def address(array: np.ndarray) -> int:
    return int(array.__array_interface__["data"][0])


def buffer_start(restored: dict[str, np.ndarray]) -> int:
    return min(address(a) for a in restored.values())


def state(seed: int, mib: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"w{i}": rng.standard_normal(mib * MIB // 8).astype(np.float32) for i in range(2)}  # mib MiB in all


@pytest.fixture(autouse=True)
def empty_pool() -> None:
    ckptlib.release_cached_memory()


@pytest.fixture
def two(tmp_path: Path) -> tuple[str, str, dict[str, np.ndarray], dict[str, np.ndarray]]:
    a, b = state(1), state(2)
    ckptlib.save(a, tmp_path / "a", sync=False)
    ckptlib.save(b, tmp_path / "b", sync=False)
    return str(tmp_path / "a"), str(tmp_path / "b"), a, b


def test_a_freed_restore_buffer_serves_the_next_restore(two) -> None:
    a_path, b_path, _, b = two
    first = ckptlib.restore(a_path)
    start = buffer_start(first)
    del first
    gc.collect()
    second = ckptlib.restore(b_path)
    assert buffer_start(second) == start
    for name, value in b.items():
        np.testing.assert_array_equal(second[name], value)


def test_a_held_array_keeps_its_buffer_and_its_values(two) -> None:
    a_path, b_path, a, b = two
    first = ckptlib.restore(a_path)
    kept = first["w1"]  # one tensor kept: the whole buffer stays the caller's
    del first
    gc.collect()
    second = ckptlib.restore(b_path)
    assert buffer_start(second) != address(kept) - kept.nbytes
    np.testing.assert_array_equal(kept, a["w1"])
    for name, value in b.items():
        np.testing.assert_array_equal(second[name], value)
    del second
    gc.collect()
    third = ckptlib.restore(b_path)  # reuses the second's buffer, never the one still held
    np.testing.assert_array_equal(kept, a["w1"])
    np.testing.assert_array_equal(third["w0"], b["w0"])


def test_a_view_or_framework_tensor_of_a_restored_array_keeps_it(two) -> None:
    a_path, b_path, a, _ = two
    kept = ckptlib.restore(a_path)["w0"][10:20].reshape(2, 5)
    gc.collect()
    ckptlib.restore(b_path)
    np.testing.assert_array_equal(kept.ravel(), a["w0"][10:20])


def test_a_small_restore_does_not_take_a_much_larger_buffer(tmp_path: Path) -> None:
    big, small = state(1, mib=32), state(2, mib=8)
    ckptlib.save(big, tmp_path / "big", sync=False)
    ckptlib.save(small, tmp_path / "small", sync=False)
    start = buffer_start(ckptlib.restore(tmp_path / "big"))
    gc.collect()
    assert buffer_start(ckptlib.restore(tmp_path / "small")) != start
    gc.collect()
    assert buffer_start(ckptlib.restore(tmp_path / "big")) == start


def test_release_cached_memory_drops_the_kept_buffers(two) -> None:
    a_path, _, _, _ = two
    ckptlib.restore(a_path)
    gc.collect()
    assert len(private_memory._POOL.kept) == 1
    ckptlib.release_cached_memory()
    assert private_memory._POOL.kept == []


def test_the_pool_keeps_a_bounded_number_of_buffers(tmp_path: Path) -> None:
    held = []
    for i in range(private_memory.MAX_KEPT_BUFFERS + 2):
        ckptlib.save(state(i), tmp_path / f"m{i}", sync=False)
        held.append(ckptlib.restore(tmp_path / f"m{i}"))
    del held
    gc.collect()
    assert len(private_memory._POOL.kept) == private_memory.MAX_KEPT_BUFFERS


def test_a_damaged_checkpoint_raises_and_its_buffer_is_reused_safely(two, tmp_path: Path) -> None:
    a_path, b_path, _, b = two
    data = Path(a_path + ".data-00000-of-00001")
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(ckptlib.ChecksumMismatchError):
        ckptlib.restore(a_path)
    gc.collect()
    restored = ckptlib.restore(b_path)
    for name, value in b.items():
        np.testing.assert_array_equal(restored[name], value)


def test_concurrent_restores_in_threads_each_get_their_own_values(tmp_path: Path) -> None:
    states = [state(i) for i in range(4)]
    for i, s in enumerate(states):
        ckptlib.save(s, tmp_path / f"m{i}", sync=False)
    failures: list[str] = []

    def loop(i: int) -> None:
        for _ in range(10):
            restored = ckptlib.restore(tmp_path / f"m{i}")
            for name, value in states[i].items():
                if not np.array_equal(restored[name], value):
                    failures.append(f"thread {i}: {name}")

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def _kept_in_child(queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    queue.put(len(private_memory._POOL.kept))


def test_a_forked_child_starts_with_an_empty_pool(two) -> None:
    a_path, _, _, _ = two
    ckptlib.restore(a_path)
    gc.collect()
    assert len(private_memory._POOL.kept) == 1
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_kept_in_child, args=(queue,))
    child.start()
    assert queue.get(timeout=60) == 0
    child.join(60)


def test_a_buffer_freed_while_the_pool_is_busy_is_kept_later(two) -> None:
    # give_back can run inside take (a garbage collection set off there) or in another
    # thread meanwhile: it must neither wait for the lock nor change the list take is using.
    a_path, b_path, _, b = two
    first = ckptlib.restore(a_path)
    start = buffer_start(first)
    pool = private_memory._POOL
    with pool.lock:
        del first
        gc.collect()
        assert pool.kept == [] and len(pool.returned) == 1
    second = ckptlib.restore(b_path)
    assert buffer_start(second) == start
    np.testing.assert_array_equal(second["w0"], b["w0"])


def _free_inherited(queue: multiprocessing.Queue, held: list[dict[str, np.ndarray]], path: str) -> None:  # type: ignore[type-arg]
    held.clear()  # the parent's restore dies here, while the parent's pool is locked
    gc.collect()
    restored = ckptlib.restore(path)
    queue.put(float(restored["w0"][0]))


def test_a_child_forked_while_the_pool_is_locked_frees_inherited_arrays(two) -> None:
    a_path, b_path, _, b = two
    held = [ckptlib.restore(a_path)]
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    locked, done = threading.Event(), threading.Event()

    def hold_the_lock() -> None:  # another thread of the parent, busy in the pool at the fork
        with private_memory._POOL.lock:
            locked.set()
            done.wait(120)

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    locked.wait(60)
    child = context.Process(target=_free_inherited, args=(queue, held, b_path))
    child.start()
    try:
        assert queue.get(timeout=60) == float(b["w0"][0])
    finally:
        done.set()
        holder.join(60)
        child.join(10)
        if child.is_alive():
            child.kill()


def test_a_slightly_smaller_restore_reuses_a_larger_buffer(tmp_path: Path) -> None:
    larger, smaller = state(1, mib=8), state(2, mib=7)
    ckptlib.save(larger, tmp_path / "larger", sync=False)
    ckptlib.save(smaller, tmp_path / "smaller", sync=False)
    start = buffer_start(ckptlib.restore(tmp_path / "larger"))
    gc.collect()
    restored = ckptlib.restore(tmp_path / "smaller")
    assert buffer_start(restored) == start
    for name, value in smaller.items():
        np.testing.assert_array_equal(restored[name], value)
