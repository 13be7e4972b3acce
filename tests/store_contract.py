"""What every ``Store`` must do: a kit of tests (after zarr's ``StoreTests``), not a test module.

A backend's test module subclasses ``StoreContract`` and provides two fixtures::

    class TestMyStore(StoreContract):
        @pytest.fixture
        def store(self):          # a Store
            return MyStore()

        @pytest.fixture
        def root(self, store):    # an empty directory (path or URL) inside it
            return "..."

Optional hooks: ``part_bytes`` (sizes are chosen to span several of a store's multipart
parts; set the store's own part size to it) and ``unfinished_writes`` (where a store keeps
writes in progress out of sight, e.g. S3's incomplete multipart uploads).
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from ckptlib.errors import CheckpointNotFoundError, CorruptCheckpointError


def _bytes(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)


class StoreContract:
    """Test methods run against ``store`` and ``root`` (fixtures of the subclass)."""

    # Sizes below span several parts of this many bytes.
    part_bytes = 64 << 10

    def unfinished_writes(self, store, root) -> list[str]:
        """Final paths of writes begun in ``root`` and neither finished nor aborted, where the
        store keeps such writes out of sight; [] where it cannot tell."""
        return []

    # --- helpers

    @staticmethod
    def names(store, directory: str) -> list[str]:
        """``store.listdir``, sorted."""
        return sorted(store.listdir(directory))

    @staticmethod
    def path(root: str, name: str) -> str:
        return f"{root.rstrip('/')}/{name}"

    def write(self, store, path: str, data: np.ndarray, *, known_size: bool = True, threads: int = 4, piece=None):
        """Create ``path`` from ``data``, written out of order by ``threads`` threads, finished
        (and, on a store with rename, installed as the commit protocol would)."""
        new = self.start(store, path, data, known_size=known_size, threads=threads, piece=piece)
        self.finish(store, new)

    @staticmethod
    def finish(store, new) -> None:
        new.finish(True)
        if new.path != new.final_path:
            store.rename(new.path, new.final_path)

    def start(self, store, path: str, data: np.ndarray, *, known_size: bool = True, threads: int = 4, piece=None):
        """Create ``path`` and write all of ``data`` to it, without finishing."""
        new = store.create(path, data.nbytes if known_size else None)
        piece = piece or max(1, self.part_bytes // 3 + 7)  # pieces straddle part boundaries
        offsets = list(range(0, data.nbytes, piece))
        random.Random(data.nbytes).shuffle(offsets)

        def write(offset: int) -> None:
            chunk = data[offset : offset + piece]
            half = chunk.nbytes // 2  # two buffers per write, as shard_writer gives them
            new.write_at(offset, [chunk[:half], memoryview(chunk[half:])], chunk.nbytes)

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(write, offsets))
        return new

    # --- reading and writing files

    def test_open_missing(self, store, root):
        with pytest.raises(CheckpointNotFoundError) as caught:
            store.open(self.path(root, "missing.index"))
        assert "missing.index" in str(caught.value)

    @pytest.mark.parametrize("known_size", [True, False])
    @pytest.mark.parametrize("parts", [0, 0.1, 1, 3.5])
    def test_write_then_read(self, store, root, parts, known_size):
        data = _bytes(int(parts * self.part_bytes) + (0 if parts in (0, 1) else 123))
        path = self.path(root, "model.ckpt-1.data-00000-of-00001")
        self.write(store, path, data, known_size=known_size)
        file = store.open(path)
        try:
            assert file.size == data.nbytes
            assert file.read_at(0, data.nbytes) == data.tobytes()
            rng = random.Random(1)
            for _ in range(10):
                start = rng.randrange(0, data.nbytes + 1)
                length = rng.randrange(0, data.nbytes - start + 1)
                assert file.read_at(start, length) == data[start : start + length].tobytes()
                out = bytearray(length)
                file.readinto(start, memoryview(out))
                assert out == data[start : start + length].tobytes()
        finally:
            file.close()

    def test_parallel_readinto(self, store, root):
        data = _bytes(3 * self.part_bytes + 5)
        path = self.path(root, "f")
        self.write(store, path, data)
        out = np.zeros_like(data)
        file = store.open(path)
        piece = self.part_bytes // 2 + 1

        def read(offset: int) -> None:
            file.readinto(offset, memoryview(out[offset : offset + piece]))

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(read, range(0, data.nbytes, piece)))
        file.close()
        assert np.array_equal(out, data)

    def test_read_past_end(self, store, root):
        path = self.path(root, "f")
        self.write(store, path, _bytes(100))
        file = store.open(path)
        try:
            for offset, length in [(99, 2), (100, 1), (1000, 1), (0, 101)]:
                with pytest.raises(CorruptCheckpointError) as caught:
                    file.read_at(offset, length)
                assert path in str(caught.value)
                with pytest.raises(CorruptCheckpointError):
                    file.readinto(offset, memoryview(bytearray(length)))
            assert file.read_at(100, 0) == b""
        finally:
            file.close()

    def test_unfinished_file_is_invisible_and_abort_leaves_nothing(self, store, root):
        path = self.path(root, "new.index")
        new = self.start(store, path, _bytes(2 * self.part_bytes + 9))
        assert "new.index" not in self.names(store, root)
        if new.path == new.final_path:
            with pytest.raises(CheckpointNotFoundError):
                store.open(path)
        new.abort()
        new.abort()  # twice is harmless
        assert self.names(store, root) == []
        assert not store.exists(path)
        assert self.unfinished_writes(store, root) == []

    def test_abort_after_finish_drops_the_file(self, store, root):
        path = self.path(root, "dropped")
        new = self.start(store, path, _bytes(self.part_bytes + 1))
        new.finish(True)
        assert store.exists(new.path)
        new.abort()
        assert not store.exists(new.path) and not store.exists(path)
        assert self.names(store, root) == []

    def test_discard_unfinished(self, store, root):
        mine, theirs = self.path(root, "mine.data"), self.path(root, "theirs.data")
        data = _bytes(2 * self.part_bytes + 1)
        new_mine = self.start(store, mine, data)
        new_theirs = self.start(store, theirs, data)
        owned = store.real(mine)
        dropped = store.discard_unfinished(root, lambda p: store.real(p) == owned)
        assert [store.real(p) for p in dropped] in ([], [owned])
        assert store.real(mine) not in [store.real(p) for p in self.unfinished_writes(store, root)]
        new_mine.abort()
        self.finish(store, new_theirs)  # not owned: untouched
        with _closing(store.open(theirs)) as f:
            assert f.read_at(0, data.nbytes) == data.tobytes()
        assert self.names(store, root) == ["theirs.data"]
        assert self.unfinished_writes(store, root) == []

    # --- names

    def test_names(self, store, root):
        assert self.names(store, root) == []
        assert self.names(store, self.path(root, "nowhere")) == []
        assert not store.exists(self.path(root, "a"))
        assert store.mtime(self.path(root, "a")) is None
        store.makedirs(self.path(root, "sub"))
        for name in ["a", "b.index", "sub/c"]:
            store.write_small(self.path(root, name), b"x", sync=True)
        assert [n for n in self.names(store, root) if n != "sub"] == ["a", "b.index"]
        assert self.names(store, self.path(root, "sub")) == ["c"]
        assert store.exists(self.path(root, "a")) and store.exists(self.path(root, "sub"))
        assert store.is_dir(self.path(root, "sub"))
        assert not store.is_dir(self.path(root, "a"))
        assert not store.is_dir(self.path(root, "nowhere"))
        mtime = store.mtime(self.path(root, "a"))
        assert mtime is not None and abs(mtime - time.time()) < 3600
        store.delete(self.path(root, "a"))
        store.delete(self.path(root, "a"))  # missing is fine
        assert not store.exists(self.path(root, "a"))
        assert [n for n in self.names(store, root) if n != "sub"] == ["b.index"]

    def test_real(self, store, root):
        path = self.path(root, "x.index")
        assert store.real(path) == store.real(self.path(root, "sub/../x.index"))
        assert store.real(path) == store.real(store.real(path))
        assert not store.real(root + "/").endswith("/")

    # --- small files

    def test_read_small(self, store, root):
        path = self.path(root, "checkpoint")
        assert store.read_small(path, 100) is None
        store.write_small(path, b"0123456789", sync=True)
        assert store.read_small(path, 10) == b"0123456789"
        with pytest.raises(CorruptCheckpointError) as caught:
            store.read_small(path, 9)
        assert "checkpoint" in str(caught.value)

    def test_write_small_replaces(self, store, root):
        path = self.path(root, "checkpoint")
        store.write_small(path, b"first, longer", sync=False)
        store.write_small(path, b"second", sync=True)
        assert store.read_small(path, 100) == b"second"
        store.write_small(path, b"", sync=True)
        assert store.read_small(path, 100) == b""
        with _closing(store.open(path)) as file:
            assert file.size == 0

    def test_update_loses_no_increment(self, store, root):
        path = self.path(root, "counter")
        store.update(path, lambda old: None, sync=False)  # None: nothing written
        assert store.read_small(path, 100) is None

        def increment(_: int) -> None:
            for _ in range(10):
                store.update(path, lambda old: str(int(old or b"0") + 1).encode(), sync=False)

        threads = [threading.Thread(target=increment, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert store.read_small(path, 100) == b"80"

    def test_rename(self, store, root):
        if not store.atomic_rename:
            pytest.skip("this store has no atomic rename (atomic_rename is False)")
        source, target = self.path(root, "tmp"), self.path(root, "final")
        store.write_small(source, b"new", sync=True)
        store.write_small(target, b"old", sync=True)
        store.rename(source, target)
        assert store.read_small(target, 10) == b"new"
        assert not store.exists(source)


class _closing:
    """``with`` for a ReadFile (the protocol has ``close`` but no context manager)."""

    def __init__(self, file) -> None:
        self.file = file

    def __enter__(self):
        return self.file

    def __exit__(self, *exc) -> None:
        self.file.close()
