"""Shared fixtures, and hypothesis kept out of the working directory.

Even with ``database=None`` (set on every test here), hypothesis caches data under
``.hypothesis/`` in the current directory; point it at a private temporary directory instead.
"""

from __future__ import annotations

import atexit
import errno
import os
import shutil
import tempfile
from typing import Any

import pytest

import ckptlib
from ckptlib.store import register
from ckptlib.store.memory import MemoryStore

_HOME = tempfile.mkdtemp(prefix="ckptlib-hypothesis-")
atexit.register(shutil.rmtree, _HOME, True)
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", _HOME)

try:
    from hypothesis import configuration
except ImportError:  # pragma: no cover - hypothesis is a test dependency
    pass
else:
    configuration.set_hypothesis_home_dir(os.environ["HYPOTHESIS_STORAGE_DIRECTORY"])


def _damage_tensor(prefix: str | os.PathLike[str], name: str) -> None:
    """Flip one byte in the middle of tensor ``name``'s stored bytes (its checksum then fails)."""
    with ckptlib.load_checkpoint(prefix) as reader:
        entry = reader.entry(name)
        (data,) = [f for f in reader.files if ".data-" in f][entry.shard_id : entry.shard_id + 1]
    with open(data, "r+b") as file:
        file.seek(entry.offset + entry.size // 2)
        byte = file.read(1)[0]
        file.seek(-1, os.SEEK_CUR)
        file.write(bytes([byte ^ 0xFF]))


@pytest.fixture
def damage_tensor():
    """``damage_tensor(prefix, name)``: flip a byte inside one stored tensor."""
    return _damage_tensor


class FaultyStore(MemoryStore):
    """A memory store whose operations can be told to fail: ``fail("rename", after=1)``
    lets one rename through, then raises ``error`` on every later one. Operations:
    ``create``, ``write_at``, ``finish`` (by final path), ``rename`` (by target),
    ``delete``, ``update``."""

    def __init__(self) -> None:
        super().__init__()
        self.faults: dict[str, tuple[int, BaseException, str, int | None]] = {}
        self.calls: dict[str, int] = {}
        self.small_writes: list[tuple[str, bytes]] = []  # every write_small, in order

    def fail(
        self,
        operation: str,
        *,
        after: int = 0,
        times: int | None = None,
        error: BaseException | None = None,
        match: str = "",
    ) -> None:
        """Fail ``operation`` on paths containing ``match`` after ``after`` such calls, for
        ``times`` calls (None: every one)."""
        error = error or OSError(errno.EIO, f"injected failure of {operation}")
        self.faults[operation] = (after, error, match, times)
        self.calls[operation] = 0

    def check(self, operation: str, path: str) -> None:
        fault = self.faults.get(operation)
        if fault is None or fault[2] not in path:
            return
        self.calls[operation] = self.calls.get(operation, 0) + 1
        after, error, _, times = fault
        if self.calls[operation] > after and (times is None or self.calls[operation] <= after + times):
            raise error

    def write_small(self, path: str, data: bytes, sync: bool) -> None:
        self.small_writes.append((path, bytes(data)))
        super().write_small(path, data, sync)

    def create(self, final_path: str, size: int | None = None, *, sync: bool = True) -> Any:
        self.check("create", final_path)
        new = super().create(final_path, size, sync=sync)
        write_at, finish = new.write_at, new.finish

        def checked_write_at(*args: Any) -> None:
            self.check("write_at", final_path)
            write_at(*args)

        def checked_finish(sync: bool) -> None:
            self.check("finish", final_path)
            finish(sync)

        new.write_at, new.finish = checked_write_at, checked_finish  # type: ignore[method-assign]
        return new

    def rename(self, source: str, target: str) -> None:
        self.check("rename", target)
        super().rename(source, target)

    def delete(self, path: str) -> None:
        self.check("delete", path)
        super().delete(path)

    def update(self, path: str, change: Any, sync: bool) -> None:
        self.check("update", path)
        super().update(path, change, sync)


@pytest.fixture
def mem_store():
    """A fresh ``FaultyStore`` holding every ``mem://`` path for the test."""
    store = FaultyStore()
    register("mem", store)
    yield store
    register("mem", None)


# --- S3: a moto server in a subprocess, buckets, and a fault-injecting proxy (tests/s3_server.py).
# Skipped, with a reason, where s3fs or moto[server] is not installed.


@pytest.fixture(scope="session")
def s3_endpoint():
    """The URL of a moto S3 server for the session. ``AWS_ENDPOINT_URL`` and test
    credentials are set in ``os.environ`` (subprocesses inherit them) and restored after."""
    pytest.importorskip("s3fs", reason="S3 tests need s3fs (pip install 'ckptlib[s3]')")
    pytest.importorskip("moto.server", reason="S3 tests need moto[server]")
    pytest.importorskip("boto3", reason="S3 tests need boto3")
    from s3_server import TEST_ENV, MotoServer

    server = MotoServer()
    wanted = {**TEST_ENV, "AWS_ENDPOINT_URL": server.endpoint}
    saved = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    try:
        yield server.endpoint
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A fresh, empty bucket: ``"s3://<name>"``."""
    from s3_server import new_bucket

    return new_bucket(s3_endpoint)


@pytest.fixture
def s3_proxy(s3_endpoint):
    """A ``FaultProxy`` in front of the moto server (``.endpoint``, counters, ``fail_next``);
    build a store through it with ``s3_server.make_store(proxy.endpoint)``."""
    from s3_server import FaultProxy

    proxy = FaultProxy(s3_endpoint)
    try:
        yield proxy
    finally:
        proxy.close()
