"""Every store against the store contract (``store_contract.py``): local files, memory, and
``FsspecStore`` over ``memory://`` and over S3 (a moto server, ``s3_server.py``), plus what
only S3 has: conditional updates from several processes, retries and bounded failure under
injected faults, request counts."""

from __future__ import annotations

import multiprocessing
import time
import uuid

import pytest
from store_contract import StoreContract

from ckptlib.errors import CheckpointNotFoundError, StorageError, UnsupportedFeatureError


class FsspecChecks:
    """Beyond the contract: FsspecStore refuses to finish a file whose writes left a gap
    (local stores cannot tell a gap from zeros)."""

    def test_finish_of_incomplete_file_fails(self, store, root):
        path = self.path(root, "short")
        new = store.create(path, 1000)
        new.write_at(0, [bytes(500)], 500)
        with pytest.raises(OSError):
            new.finish(True)
        new.abort()
        assert not store.exists(path)
        assert self.unfinished_writes(store, root) == []


class TestLocalStore(StoreContract):
    @pytest.fixture
    def store(self):
        from ckptlib.store.local import LocalStore

        return LocalStore()

    @pytest.fixture
    def root(self, tmp_path):
        (tmp_path / "run").mkdir()
        return str(tmp_path / "run")


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def store(self):
        from ckptlib.store.memory import MemoryStore

        return MemoryStore()

    @pytest.fixture
    def root(self):
        return "mem://run"


class TestFsspecMemoryStore(FsspecChecks, StoreContract):
    @pytest.fixture
    def store(self):
        fsspec = pytest.importorskip("fsspec", reason="needs fsspec (pip install 'ckptlib[s3]')")
        from ckptlib.store.remote import FsspecStore

        return FsspecStore(fsspec.filesystem("memory"))

    @pytest.fixture
    def root(self, store):
        root = f"memory://contract-{uuid.uuid4().hex}"
        yield root
        if store.fs.exists(root):
            store.fs.rm(root, recursive=True)


class TestS3Store(FsspecChecks, StoreContract):
    @pytest.fixture
    def store(self, s3_endpoint):
        from s3_server import TEST_PART_BYTES, make_store

        store = make_store(s3_endpoint)
        store.part_bytes = TEST_PART_BYTES
        return store

    @pytest.fixture
    def root(self, s3_bucket):
        return f"{s3_bucket}/run"

    @pytest.fixture(autouse=True)
    def _endpoint(self, s3_endpoint):
        self.endpoint = s3_endpoint

    part_bytes = 64 << 10  # s3_server.TEST_PART_BYTES

    def unfinished_writes(self, store, root):
        from s3_server import unfinished_uploads

        bucket = root.removeprefix("s3://").split("/")[0]
        return [f"s3://{bucket}/{key}" for key in unfinished_uploads(self.endpoint, root)]

    def test_s3_attributes(self, store):
        assert store.atomic_rename is False and store.io_threads == 16
        with pytest.raises(UnsupportedFeatureError):
            store.rename("s3://b/x", "s3://b/y")
        assert store.real("s3://bucket/a/./b/../c/") == "s3://bucket/a/c"


# --- S3 only


def test_for_url_reads_the_endpoint_from_the_environment(s3_endpoint, s3_bucket):
    from ckptlib.store.remote import FsspecStore

    store = FsspecStore.for_url(s3_bucket)
    store.write_small(f"{s3_bucket}/x", b"1", sync=True)
    assert store.read_small(f"{s3_bucket}/x", 1) == b"1"


def test_update_from_processes_loses_no_increment(s3_endpoint, s3_bucket):
    from s3_server import increment_counter, make_store

    url = f"{s3_bucket}/counter"
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=increment_counter, args=(s3_endpoint, url, 10)) for _ in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    assert make_store(s3_endpoint).read_small(url, 100) == b"40"


def test_open_small_object_costs_one_request(s3_proxy, s3_bucket):
    from s3_server import make_store

    store = make_store(s3_proxy.endpoint)
    path = f"{s3_bucket}/model.ckpt-1.index"
    store.write_small(path, bytes(range(256)) * 40, sync=True)
    s3_proxy.reset()
    file = store.open(path)
    assert file.read_at(0, 10_240) == bytes(range(256)) * 40
    out = bytearray(100)
    file.readinto(5000, memoryview(out))
    assert s3_proxy.counts() == (1, 10_240)


def test_large_object_reads_fetch_exactly_the_bytes_asked(s3_proxy, s3_bucket):
    from s3_server import make_store

    store = make_store(s3_proxy.endpoint)
    path = f"{s3_bucket}/big"
    store.write_small(path, bytes(1 << 20), sync=True)
    s3_proxy.reset()
    file = store.open(path)
    file.read_at(1000, 5000)
    file.read_at(file.size - 10, 10)  # the tail: no request
    assert s3_proxy.counts() == (2, 65536 + 5000)


def test_a_few_503s_are_retried(s3_proxy, s3_bucket):
    from s3_server import TEST_PART_BYTES, make_store

    store = make_store(s3_proxy.endpoint)
    store.part_bytes = TEST_PART_BYTES
    path = f"{s3_bucket}/f"
    s3_proxy.fail_next(2, method="PUT")
    store.write_small(path, b"abc", sync=True)
    s3_proxy.fail_next(2, method="GET")
    assert store.open(path).read_at(0, 3) == b"abc"
    s3_proxy.fail_next(1, path="partNumber=2")
    s3_proxy.fail_next(1, kind="drop", path="partNumber=1")
    new = store.create(f"{s3_bucket}/multi", 3 * TEST_PART_BYTES)
    new.write_at(0, [bytes(3 * TEST_PART_BYTES)], 3 * TEST_PART_BYTES)
    new.finish(True)
    assert store.open(f"{s3_bucket}/multi").size == 3 * TEST_PART_BYTES
    assert [status for _, _, status in s3_proxy.log].count(503) == 5
    assert [status for _, _, status in s3_proxy.log].count(0) == 1


@pytest.mark.parametrize("kind", ["503", "drop"])
def test_a_failing_server_ends_in_storage_error_in_bounded_time(s3_proxy, s3_bucket, kind):
    from s3_server import make_store

    # The production limits for 503s (each try waits out a backoff); a dropped connection takes
    # the same retry path, shown with fewer tries to keep the test short.
    options = {} if kind == "503" else {"config_kwargs": {"retries": {"mode": "standard", "total_max_attempts": 2}}}
    store = make_store(s3_proxy.endpoint, **options)
    path = f"{s3_bucket}/f"
    store.write_small(path, b"abc", sync=True)
    s3_proxy.fail_next(1000, kind=kind)
    started = time.monotonic()
    with pytest.raises(StorageError) as caught:
        store.open(path)
    assert time.monotonic() - started < 60
    assert path in str(caught.value)
    assert caught.value.__cause__ is not None


def test_missing_bucket_or_key_is_not_found(s3_endpoint, s3_bucket):
    from s3_server import make_store

    store = make_store(s3_endpoint)
    with pytest.raises(CheckpointNotFoundError):
        store.open("s3://no-such-bucket-here/x")
    with pytest.raises(CheckpointNotFoundError):
        store.open(f"{s3_bucket}/x")
    assert store.read_small(f"{s3_bucket}/x", 10) is None
    assert store.listdir("s3://no-such-bucket-here/x") == []


def test_upload_staging_memory_stays_bounded(s3_endpoint, s3_bucket):
    from s3_server import TEST_PART_BYTES, make_store

    store = make_store(s3_endpoint)
    store.part_bytes = TEST_PART_BYTES
    size = 10 * TEST_PART_BYTES + 5
    new = store.create(f"{s3_bucket}/f", size)
    piece = TEST_PART_BYTES // 3
    most = 0
    for offset in range(0, size, piece):
        count = min(piece, size - offset)
        new.write_at(offset, [bytes(count)], count)
        most = max(most, len(new._staged))
    new.finish(True)
    assert most == 1  # written in order: one part staged at a time, never the file


def test_a_failed_part_fails_finish_and_leaves_no_upload(s3_proxy, s3_bucket):
    from s3_server import TEST_PART_BYTES, make_store, unfinished_uploads

    config = {"connect_timeout": 2, "read_timeout": 2, "retries": {"mode": "standard", "total_max_attempts": 2}}
    store = make_store(s3_proxy.endpoint, config_kwargs=config)
    store.part_bytes = TEST_PART_BYTES
    path = f"{s3_bucket}/f"
    new = store.create(path, 3 * TEST_PART_BYTES)
    s3_proxy.fail_next(1000, path="partNumber=2")
    with pytest.raises(StorageError) as caught:
        new.write_at(0, [bytes(3 * TEST_PART_BYTES)], 3 * TEST_PART_BYTES)
    assert path in str(caught.value)
    with pytest.raises(StorageError):
        new.finish(True)
    s3_proxy.reset()
    assert not store.exists(path)
    assert unfinished_uploads(s3_proxy.endpoint, s3_bucket) == []


def test_a_server_that_never_answers_times_out(s3_proxy, s3_bucket):
    from s3_server import make_store

    # The production limits give a bound of about 40 s; shorter ones show the same path.
    config = {"connect_timeout": 1, "read_timeout": 1, "retries": {"mode": "standard", "total_max_attempts": 2}}
    store = make_store(s3_proxy.endpoint, config_kwargs=config)
    path = f"{s3_bucket}/f"
    store.write_small(path, b"abc", sync=True)
    s3_proxy.fail_next(1000, kind="hang")
    started = time.monotonic()
    with pytest.raises(StorageError) as caught:
        store.read_small(path, 10)
    assert time.monotonic() - started < 10
    assert path in str(caught.value)


def test_an_object_replaced_while_open_is_reported(s3_endpoint, s3_bucket):
    from s3_server import make_store

    from ckptlib.errors import CorruptCheckpointError

    store = make_store(s3_endpoint)
    path = f"{s3_bucket}/f"
    store.write_small(path, bytes(200_000), sync=True)
    file = store.open(path)
    store.write_small(path, b"\1" * 200_000, sync=True)
    with pytest.raises(CorruptCheckpointError) as caught:
        file.read_at(0, 10)
    assert path in str(caught.value)


# --- without the optional packages, and other protocols


@pytest.mark.parametrize("missing", ["fsspec", "s3fs"])
def test_missing_packages_give_an_install_hint(monkeypatch, missing):
    import sys

    from ckptlib.store.remote import FsspecStore

    if missing == "s3fs":
        pytest.importorskip("fsspec")
    monkeypatch.setitem(sys.modules, missing, None)  # import now raises ImportError
    with pytest.raises(UnsupportedFeatureError, match=r"pip install 'ckptlib\[s3\]'"):
        FsspecStore.for_url("s3://bucket/run")


def test_updates_off_s3_warn_once_that_other_processes_are_not_excluded(caplog, monkeypatch):
    pytest.importorskip("fsspec")
    from ckptlib.store import remote

    monkeypatch.setattr(remote, "_warned_unprotected_update", False)
    store = remote.FsspecStore.for_url("memory://")
    path = f"memory://warn-{uuid.uuid4().hex}/state"
    with caplog.at_level("WARNING", logger="ckptlib"):
        for _ in range(3):
            store.update(path, lambda old: (old or b"") + b"x", sync=False)
    assert store.read_small(path, 10) == b"xxx"
    assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
    assert "not against other processes" in caplog.records[0].getMessage()
    assert store.io_threads == 4 and store.atomic_rename is False
