"""The parallel shard writer and positioned writes: exact bytes, and nothing left behind on failure."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ckptlib
from ckptlib import shard_writer
from ckptlib.format.crc import crc32c, mask
from ckptlib.format.filenames import data_filename
from ckptlib.format.strings import encode_strings
from ckptlib.store import local as local_store
from ckptlib.store import local_io as storage
from ckptlib.store.local import LocalStore
from ckptlib.store.local_io import pwrite_all
from ckptlib.store.temp_names import TEMP_MARKER


def views(*chunks: bytes) -> list[memoryview]:
    return [memoryview(c) for c in chunks]


def read(path: str | Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def pwrite_file(path: Path, chunks: list[bytes], offset: int, size_known: bool = False) -> Path:
    """``pwrite_all`` of ``chunks`` at ``offset`` into a new file at ``path``; with
    ``size_known``, telling it their total size (its path without a pass over them)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        pwrite_all(fd, views(*chunks), offset, sum(map(len, chunks)) if size_known else None)
    finally:
        os.close(fd)
    return path


@pytest.mark.parametrize("size_known", [False, True])
def test_pwrite_all_resumes_short_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size_known: bool) -> None:
    real_pwritev, real_pwrite = os.pwritev, os.pwrite

    def stingy_pwritev(fd: int, buffers: list[Any], offset: int) -> int:
        return real_pwrite(fd, bytes(buffers[0])[:3], offset)  # at most 3 bytes per call

    def stingy_pwrite(fd: int, data: Any, offset: int) -> int:
        return real_pwrite(fd, bytes(data)[:3], offset)

    monkeypatch.setattr(os, "pwritev", stingy_pwritev)
    monkeypatch.setattr(os, "pwrite", stingy_pwrite)
    chunks = [b"hello", b"", b"w", b"orld!" * 3]
    path = pwrite_file(tmp_path / "f", chunks, 2, size_known)
    monkeypatch.setattr(os, "pwritev", real_pwritev)
    assert read(path) == b"\0\0" + b"".join(chunks)


@pytest.mark.parametrize("size_known", [False, True])
def test_pwrite_all_splits_more_buffers_than_iov_max(tmp_path: Path, size_known: bool) -> None:
    chunks = [bytes([i % 251]) * (i % 7) for i in range(5000)]
    path = pwrite_file(tmp_path / "f", chunks, 0, size_known)
    assert read(path) == b"".join(chunks)


def test_pwrite_all_with_a_known_size_makes_one_call_and_resumes_a_short_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_pwritev = os.pwritev
    calls: list[int] = []

    def short_first(fd: int, buffers: list[Any], offset: int) -> int:
        calls.append(len(buffers))
        if len(calls) == 1:  # the first call stops 2 bytes into the third buffer
            return real_pwritev(fd, [buffers[0], buffers[1], bytes(buffers[2])[:2]], offset)
        return real_pwritev(fd, buffers, offset)

    monkeypatch.setattr(os, "pwritev", short_first)
    chunks = [b"abc", b"", b"defgh", b"ij", b"klmnop"]
    path = pwrite_file(tmp_path / "f", chunks, 3, size_known=True)
    assert read(path) == b"\0\0\0" + b"".join(chunks)
    assert calls[0] == len(chunks)  # handed over as given, empty buffer included
    assert len(calls) == 2


def test_pwrite_all_refuses_a_call_that_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "pwritev", lambda fd, buffers, offset: 0)
    with pytest.raises(OSError, match="no progress"):
        pwrite_file(tmp_path / "f", [b"abc", b"def"], 0, size_known=True)


def test_pwrite_all_splits_writes_larger_than_one_call_may_be(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage, "_MAX_IO", 5)
    chunks = [b"0123456789abc", b"de", b"fghijklmnopq"]
    path = pwrite_file(tmp_path / "f", chunks, 0)
    assert read(path) == b"".join(chunks)


@pytest.mark.parametrize("sync", [True, False])
def test_write_shards_writes_every_shard_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sync: bool) -> None:
    monkeypatch.setattr(shard_writer, "PIECE_BYTES", 1000)  # large buffers split, small ones batched
    monkeypatch.setattr(shard_writer, "PIECE_BUFFERS", 3)
    rng = np.random.default_rng(0)
    contents = [[rng.bytes(int(n)) for n in rng.integers(0, 2500, count)] for count in (40, 7, 23)] + [[]]
    finals = [str(tmp_path / f"shard{i}") for i in range(len(contents))]
    files, result = shard_writer.write_shards(
        LocalStore(), finals, [views(*c) for c in contents], sync, lambda sizes: sizes
    )
    assert [r.tolist() for r in result] == [[len(chunk) for chunk in c] for c in contents]
    temps = [f.path for f in files]
    assert [read(t) for t in temps] == [b"".join(c) for c in contents]
    assert all(TEMP_MARKER in t and t.startswith(f) for t, f in zip(temps, finals))


def failing_after(calls: int, real: Any, error: OSError) -> Any:
    count = [0]

    def fail(*args: Any) -> Any:
        count[0] += 1
        if count[0] > calls:
            raise error
        return real(*args)

    return fail


def only_checkpoint_files(directory: Path) -> list[str]:
    names = sorted(os.listdir(directory))
    assert not [n for n in names if TEMP_MARKER in n], names
    return names


def fake_fallocate(monkeypatch: pytest.MonkeyPatch, *errnos: int, file_system: int = storage.EXT4_MAGIC) -> Any:
    """Put a stand-in for libc's ``fallocate`` in place, on a file system of type
    ``file_system``: it fails with each of ``errnos`` in turn (0: succeeds), then
    succeeds; success truncates the file to the size asked for. Its calls are in ``.calls``."""
    import ctypes

    pending = list(errnos)

    def fallocate(fd: int, mode: int, offset: int, length: int) -> int:
        fallocate.calls.append((mode, offset, length))  # type: ignore[attr-defined]
        code = pending.pop(0) if pending else 0
        if code:
            ctypes.set_errno(code)
            return -1
        os.ftruncate(fd, offset + length)
        return 0

    fallocate.calls = []  # type: ignore[attr-defined]
    monkeypatch.setattr(storage, "_fallocate", fallocate)
    monkeypatch.setattr(storage, "_file_system_type", lambda fd: file_system)
    return fallocate


def test_preallocate_reserves_the_whole_file_on_ext4(tmp_path: Path) -> None:
    import subprocess

    kind = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True).stdout.strip()
    if storage._fallocate is None or kind != "ext2/ext3":  # how coreutils names ext4
        pytest.skip(f"preallocation is for ext4 on Linux; {tmp_path} is on {kind or 'an unknown file system'}")
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        assert storage._file_system_type(fd) == storage.EXT4_MAGIC
        storage.preallocate(fd, 3 << 20)
        info = os.fstat(fd)
    finally:
        os.close(fd)
    assert info.st_size == 3 << 20
    assert info.st_blocks * 512 >= 3 << 20  # blocks reserved, not a sparse file


@pytest.mark.parametrize("code", [errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL])
def test_preallocate_is_a_no_op_where_the_file_system_cannot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    fake = fake_fallocate(monkeypatch, code)
    files, _ = shard_writer.write_shards(LocalStore(), [str(tmp_path / "s")], [views(b"abc", b"defg")], False, len)
    assert read(files[0].path) == b"abcdefg"
    assert fake.calls == [(0, 0, 7)]


@pytest.mark.parametrize("file_system", [0x01021994, 0x9123683E, 0])  # tmpfs, btrfs, unknown
def test_preallocate_leaves_other_file_systems_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, file_system: int
) -> None:
    fake = fake_fallocate(monkeypatch, file_system=file_system)
    files, _ = shard_writer.write_shards(LocalStore(), [str(tmp_path / "s")], [views(b"abc", b"defg")], False, len)
    assert read(files[0].path) == b"abcdefg"
    assert fake.calls == []


def test_preallocate_retries_an_interrupted_call_and_reports_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = fake_fallocate(monkeypatch, errno.EINTR)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        storage.preallocate(fd, 10)
        assert os.fstat(fd).st_size == 10
        assert len(fake.calls) == 2
        for code in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            fake_fallocate(monkeypatch, code)
            with pytest.raises(OSError) as caught:
                storage.preallocate(fd, 1 << 40)
            assert caught.value.errno == code
    finally:
        os.close(fd)


@pytest.mark.parametrize("where", ["preallocate", "pwrite_all", "fsync", "meanwhile"])
def test_a_failed_save_leaves_the_previous_checkpoint_and_no_temporary_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    prefix = str(tmp_path / "model.ckpt")
    old = {f"t{i}": np.full(70_000, i, np.float32) for i in range(6)}
    ckptlib.save(old, prefix, num_shards=3)
    before = only_checkpoint_files(tmp_path)
    monkeypatch.setattr(shard_writer, "PIECE_BYTES", 4096)
    no_space = OSError(errno.ENOSPC, "No space left on device")
    if where == "preallocate":  # the second shard does not fit: nothing is written at all
        fake_fallocate(monkeypatch, 0, errno.ENOSPC)
        monkeypatch.setattr(local_store, "pwrite_all", failing_after(0, None, AssertionError("wrote")))
    elif where == "pwrite_all":
        monkeypatch.setattr(local_store, "pwrite_all", failing_after(5, storage.pwrite_all, no_space))
    elif where == "fsync":
        monkeypatch.setattr(local_store.os, "fsync", failing_after(1, os.fsync, OSError(errno.EIO, "I/O error")))
    else:
        from ckptlib import index_builder

        monkeypatch.setattr(index_builder, "build_table_from_columns", failing_after(0, None, no_space))
    new = {f"t{i}": np.full(70_000, 10 + i, np.float32) for i in range(6)}
    with pytest.raises(OSError) as caught:
        ckptlib.save(new, prefix, num_shards=3)
    assert caught.value.errno == (errno.EIO if where == "fsync" else errno.ENOSPC)
    assert only_checkpoint_files(tmp_path) == before
    restored = ckptlib.restore(prefix)
    assert all(np.array_equal(restored[name], value) for name, value in old.items())


def test_shards_hold_each_tensor_at_its_offset_in_add_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Written in parallel pieces, each shard is still exactly its tensors back to back."""
    monkeypatch.setattr(shard_writer, "PIECE_BYTES", 1 << 12)
    rng = np.random.default_rng(1)
    state = {f"v{i:02d}": rng.standard_normal(int(rng.integers(0, 9000))).astype(np.float32) for i in range(30)}
    state["text"] = np.array([b"a", b"bc" * 900], dtype=object)
    # string tensors written as several buffers (elements of 64 KiB and more stand alone)
    state = {"large_text": np.array([b"q", b"\x01" * 70_000, b"", b"r" * 66_000], dtype=object), **state}
    state["v15"] = np.array([b"\x02" * 65_536, b"s"] * 2, dtype=object)
    prefix = str(tmp_path / "m")
    ckptlib.save(state, prefix, num_shards=3)
    with ckptlib.load_checkpoint(prefix) as reader:
        layout: dict[int, list[tuple[int, int, str]]] = {}
        for key, entry in reader.raw_entries():
            layout.setdefault(entry.shard_id, []).append((entry.offset, entry.size, key.decode()))
    for shard, tensors in layout.items():
        data = read(data_filename(prefix, shard, 3))
        tensors.sort()
        assert sum(size for _, size, _ in tensors) == len(data)
        position = 0
        for offset, size, name in tensors:
            assert offset == position
            if state[name].dtype == object:
                chunks, _, _ = encode_strings(list(state[name].reshape(-1)))
                assert data[offset : offset + size] == b"".join(chunks)
            else:
                assert data[offset : offset + size] == state[name].tobytes()
                with ckptlib.load_checkpoint(prefix) as reader:
                    assert reader.entry(name).crc32c == (mask(crc32c(state[name].tobytes())) if size else 0xA282EAD8)
            position += size
        order = [name for _, _, name in tensors]
        assert order == [n for n in state if n in order]  # add order within the shard


def test_the_switch_interval_is_put_back_after_concurrent_saves(tmp_path: Path) -> None:
    """Two saves at once share the quick switch interval (and the gc pause); the last to
    finish puts back what the process had, and a background policy touches neither."""
    import gc
    import sys
    import threading

    from ckptlib import IOPolicy
    from ckptlib.io_policy import QUICK_SWITCH_INTERVAL

    before = sys.getswitchinterval()
    seen: list[tuple[float, bool]] = []
    started = threading.Barrier(3)

    def slow_meanwhile(sizes: list[np.ndarray]) -> bytes:
        started.wait()
        seen.append((sys.getswitchinterval(), gc.isenabled()))
        started.wait()
        return b""

    def save(i: int) -> None:
        writer = ckptlib.BundleWriter(tmp_path / f"s{i}")
        writer.add("x", np.zeros(3))
        with IOPolicy().applied():
            shard_writer.write_shards(
                LocalStore(), [str(tmp_path / f"s{i}")], [views(b"x" * 100)], False, slow_meanwhile
            )

    threads = [threading.Thread(target=save, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    started.wait()
    started.wait()
    for thread in threads:
        thread.join()
    quick = pytest.approx(QUICK_SWITCH_INTERVAL, abs=2e-6)  # the interpreter keeps microseconds
    assert seen == [(quick, False)] * 2
    assert sys.getswitchinterval() == before and gc.isenabled()

    seen.clear()

    def background_meanwhile(sizes: list[np.ndarray]) -> bytes:
        seen.append((sys.getswitchinterval(), gc.isenabled()))
        return b""

    with IOPolicy.background().applied():
        shard_writer.write_shards(LocalStore(), [str(tmp_path / "b")], [views(b"x")], False, background_meanwhile)
    assert seen == [(before, True)]


def test_a_save_holds_its_policy_while_it_checksums_and_builds_the_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc
    import sys

    from ckptlib import IOPolicy, index_builder
    from ckptlib.io_policy import QUICK_SWITCH_INTERVAL

    seen: list[tuple[float, bool]] = []
    real = index_builder.index_bytes

    def spy(*args: Any, **kwargs: Any) -> bytes:
        seen.append((sys.getswitchinterval(), gc.isenabled()))
        return real(*args, **kwargs)

    monkeypatch.setattr(ckptlib.writer, "index_bytes", spy)
    before = sys.getswitchinterval()
    ckptlib.save({"x": np.zeros(3)}, tmp_path / "a")
    ckptlib.save({"x": np.zeros(3)}, tmp_path / "b", io=IOPolicy.background())
    assert seen == [(pytest.approx(QUICK_SWITCH_INTERVAL, abs=2e-6), False), (before, True)]


def test_an_interrupt_while_waiting_for_the_writers_is_not_swallowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    real = local_store.pwrite_all

    def slow(fd: int, buffers: list[memoryview], offset: int, size: int | None = None) -> None:
        time.sleep(0.3)
        real(fd, buffers, offset, size)

    def interrupted_wait(futures: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(local_store, "pwrite_all", slow)
    monkeypatch.setattr(shard_writer, "wait", interrupted_wait)
    with pytest.raises(KeyboardInterrupt):
        shard_writer.write_shards(LocalStore(), [str(tmp_path / "x")], [views(b"hello")], False, lambda sizes: None)
    assert os.listdir(tmp_path) == []


def test_a_failed_close_removes_every_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_close = os.close
    closes = [0]

    def flaky_close(fd: int) -> None:
        closes[0] += 1
        real_close(fd)
        if closes[0] == 2:
            raise OSError(errno.EIO, "delayed write error")

    monkeypatch.setattr(local_store.os, "close", flaky_close)
    finals = [str(tmp_path / f"s{i}") for i in range(3)]
    with pytest.raises(OSError, match="delayed write"):
        shard_writer.write_shards(
            LocalStore(), finals, [views(b"a"), views(b"b"), views(b"c")], False, lambda sizes: None
        )
    monkeypatch.setattr(local_store.os, "close", real_close)
    assert os.listdir(tmp_path) == []


def test_pwrite_all_writes_arrays_of_any_shape_and_dtype_and_resumes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ml_dtypes

    arrays = [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.ones((2, 3), ml_dtypes.bfloat16),
        np.array(7, dtype=np.int64),
        np.zeros(0, np.int8),
    ]
    expected = b"".join(a.tobytes() for a in arrays)
    real_pwrite = os.pwrite

    def raw(buffer: Any) -> bytes:  # bytes() cannot take a bfloat16 array; the kernel can
        return np.frombuffer(buffer, np.uint8).tobytes()

    monkeypatch.setattr(os, "pwritev", lambda fd, bufs, off: real_pwrite(fd, raw(bufs[0])[:5], off))
    monkeypatch.setattr(os, "pwrite", lambda fd, data, off: real_pwrite(fd, raw(data)[:5], off))
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        pwrite_all(fd, arrays, 0)
    finally:
        os.close(fd)
    assert read(tmp_path / "f") == expected


@pytest.mark.parametrize("seed", range(8))
def test_pieces_cover_a_shard_once_in_order_within_the_limits(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    monkeypatch.setattr(shard_writer, "PIECE_BYTES", 1000)
    monkeypatch.setattr(shard_writer, "PIECE_BUFFERS", 4)
    rng = np.random.default_rng(seed)
    buffers: list[Any] = []
    for n in rng.integers(0, 3000, 60).tolist():
        kind = int(rng.integers(0, 3))
        if kind == 0:
            buffers.append(memoryview(rng.bytes(n)))
        else:  # arrays, written from their own buffers
            buffers.append(rng.integers(0, 100, (n // 4, 4) if kind == 1 else n, dtype=np.uint8))
    sizes = np.array([b.nbytes for b in buffers], dtype=np.int64) if seed % 2 else None
    pieces = shard_writer._pieces(3, buffers, sizes)

    def raw(buffer: Any) -> bytes:
        return np.frombuffer(buffer, np.uint8).tobytes()

    assert b"".join(raw(b) for p in pieces for b in p.buffers) == b"".join(map(raw, buffers))
    position = 0
    for piece in pieces:
        assert piece.shard == 3 and piece.offset == position
        assert piece.size == sum(b.nbytes for b in piece.buffers)
        assert len(piece.buffers) <= 4
        assert piece.size <= 1000 or len(piece.buffers) == 1
        position += piece.size


def test_writers_start_on_the_first_piece_while_later_ones_are_still_being_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    monkeypatch.setattr(shard_writer, "PIECE_BUFFERS", 2)
    first_written = threading.Event()
    real_write, real_cut = local_store.pwrite_all, shard_writer._pieces
    waited: list[bool] = []

    def write(*args: Any) -> None:
        real_write(*args)
        first_written.set()

    def cut(*args: Any) -> list[Any]:
        if args[3] > 0:  # a later round: the first piece must be on its way to the disk already
            waited.append(first_written.wait(timeout=10))
        return real_cut(*args)

    monkeypatch.setattr(local_store, "pwrite_all", write)
    monkeypatch.setattr(shard_writer, "_pieces", cut)
    chunks = [bytes([i]) * (i + 1) for i in range(7)]
    files, _ = shard_writer.write_shards(
        LocalStore(), [str(tmp_path / "s")], [views(*chunks)], False, lambda sizes: None
    )
    assert waited == [True, True, True]
    assert read(files[0].path) == b"".join(chunks)


def within(seconds: float, call: Any) -> Any:
    """``call()`` on a thread of its own, failing the test if it does not end in time (a
    writer left waiting for pieces would otherwise hang the whole run)."""
    import threading

    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(("returned", call()))
        except BaseException as e:
            outcome.append(("raised", e))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still running after {seconds} s"
    kind, value = outcome[0]
    if kind == "raised":
        raise value
    return value


@pytest.mark.parametrize("where", ["writer", "cutting", "meanwhile", "starting a writer"])
def test_a_failure_while_pieces_are_still_being_cut_stops_everything_and_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    monkeypatch.setattr(shard_writer, "PIECE_BUFFERS", 2)

    def meanwhile(sizes: list[np.ndarray]) -> None:
        if where == "meanwhile":
            raise OSError(errno.EIO, "meanwhile")

    if where == "writer":
        monkeypatch.setattr(local_store, "pwrite_all", failing_after(0, None, OSError(errno.ENOSPC, "full")))
    elif where == "cutting":
        monkeypatch.setattr(shard_writer, "_pieces", failing_after(3, shard_writer._pieces, OSError(errno.EIO, "cut")))
    elif where == "starting a writer":  # the second thread cannot start: the first must not wait forever
        monkeypatch.setattr(os, "cpu_count", lambda: 4)  # two writer threads for three shards
        real_submit = shard_writer.ThreadPoolExecutor.submit
        monkeypatch.setattr(
            shard_writer.ThreadPoolExecutor,
            "submit",
            failing_after(1, real_submit, RuntimeError("can't start new thread")),  # type: ignore[arg-type]
        )
    contents = [views(*[b"x" * 50] * 20) for _ in range(3)]
    finals = [str(tmp_path / f"s{i}") for i in range(3)]
    message = {"writer": "full", "cutting": "cut", "meanwhile": "meanwhile", "starting a writer": "start"}[where]
    with pytest.raises((OSError, RuntimeError), match=message):
        within(10, lambda: shard_writer.write_shards(LocalStore(), finals, contents, False, meanwhile))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("cores", [1, 2, 3, 16])
def test_the_calling_thread_writes_too_and_no_more_threads_than_cores_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cores: int
) -> None:
    import threading

    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    monkeypatch.setattr(shard_writer, "PIECE_BUFFERS", 1)
    callers: list[threading.Thread] = []
    caller_wrote = threading.Event()
    writers: set[threading.Thread] = set()
    real_write = local_store.pwrite_all

    def write(*args: Any) -> None:
        writers.add(threading.current_thread())
        if threading.current_thread() in callers:
            caller_wrote.set()
        else:  # the writer threads hold back until the caller has written a piece itself
            assert caller_wrote.wait(timeout=10), "the calling thread never wrote"
        real_write(*args)

    monkeypatch.setattr(local_store, "pwrite_all", write)
    contents = [[bytes([shard]) * 10 for _ in range(40)] for shard in range(4)]
    finals = [str(tmp_path / f"s{i}") for i in range(4)]

    def save() -> list[str]:
        callers.append(threading.current_thread())
        files = shard_writer.write_shards(LocalStore(), finals, [views(*c) for c in contents], False, len)[0]
        return [f.path for f in files]

    temps = within(20, save)
    assert [read(t) for t in temps] == [b"".join(c) for c in contents]
    assert callers[0] in writers
    assert len(writers) <= max(2, min(cores, 4))  # the caller plus at most one thread per other core


@pytest.mark.parametrize("error", [OSError(errno.EIO, "caller"), KeyboardInterrupt("caller")])
def test_a_failed_write_on_the_calling_thread_stops_the_writers_and_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    import threading
    import time

    monkeypatch.setattr(shard_writer, "PIECE_BUFFERS", 1)
    callers: list[threading.Thread] = []
    written_by_pool = [0]
    real_write = local_store.pwrite_all

    def write(*args: Any) -> None:
        if threading.current_thread() in callers:
            raise error
        time.sleep(0.02)  # slow enough that pieces are left for the caller
        real_write(*args)
        written_by_pool[0] += 1

    monkeypatch.setattr(local_store, "pwrite_all", write)
    contents = [views(*[bytes([shard]) * 10] * 50) for shard in range(2)]

    def save() -> None:
        callers.append(threading.current_thread())
        shard_writer.write_shards(LocalStore(), [str(tmp_path / "a"), str(tmp_path / "b")], contents, False, len)

    with pytest.raises(type(error), match="caller"):
        within(10, save)
    assert written_by_pool[0] < 100  # the writers stopped early
    assert os.listdir(tmp_path) == []


def test_empty_pieces_ask_for_no_writeback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shard_writer, "PIECE_BUFFERS", 2)
    ranges: list[tuple[int, int]] = []
    monkeypatch.setattr(local_store, "start_writeback", lambda fd, offset, length: ranges.append((offset, length)))
    chunks = [b"ab", b"", b"", b"", b"", b"cde"]
    files, _ = shard_writer.write_shards(
        LocalStore(), [str(tmp_path / "s")], [views(*chunks)], True, lambda sizes: None
    )
    assert read(files[0].path) == b"abcde"
    assert sorted(ranges) == [(0, 2), (2, 3)]


def test_pwrite_all_with_a_known_size_splits_what_one_call_may_not_take(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage, "_MAX_IO", 5)
    chunks = [b"0123456789abc", b"de", b"fghijklmnopq"]
    path = pwrite_file(tmp_path / "f", chunks, 0, size_known=True)
    assert read(path) == b"".join(chunks)
