"""CheckpointReader.read_all, the whole-checkpoint read behind ckptlib.restore."""

from __future__ import annotations

import gc
import threading
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import ckptlib
from ckptlib import bulk_read, private_memory, span_checks
from ckptlib import reader as reader_module
from ckptlib.format.filenames import data_filename


def mixed_state() -> dict[str, object]:
    rng = np.random.default_rng(5)
    return {
        "a/kernel": rng.standard_normal((64, 32)).astype(np.float32),
        "a/bias": np.zeros(0, np.float32),  # empty: no bytes, still a checksum
        "b/bf16": rng.standard_normal(1000).astype(ml_dtypes.bfloat16),
        "b/step": np.int64(7),
        "c/text": np.array([b"x", b"yz" * 40], dtype=object),
        "d/big": rng.standard_normal(600_000).astype(np.float32),  # above the threaded-checksum size
        "e/flags": rng.standard_normal(10) > 0,
    }


@pytest.mark.parametrize("mmap", [True, False])
def test_read_all_equals_get_tensor_for_every_kind_of_tensor(tmp_path: Path, mmap: bool) -> None:
    state = mixed_state()
    writer = ckptlib.BundleWriter(tmp_path / "m", num_shards=3)
    for name, value in state.items():
        writer.add(name, value)
    writer.add_slice("p/part", (4, 2), "0,2:-", np.ones((2, 2), np.float32))
    writer.add_slice("p/part", (4, 2), "2,2:-", np.zeros((2, 2), np.float32))
    writer.finish()
    with ckptlib.load_checkpoint(tmp_path / "m", mmap=mmap) as reader:
        everything = reader.read_all()
        assert list(everything) == reader.keys_list()
        for name in reader.keys_list():
            got, want = everything[name], reader.get_tensor(name)
            assert got.dtype == want.dtype and got.shape == want.shape
            assert np.array_equal(got, want)


def test_restored_arrays_outlive_the_reader_and_writes_stay_private(tmp_path: Path) -> None:
    state = {f"t{i}": np.full(1000, i, np.float32) for i in range(50)}
    ckptlib.save(state, tmp_path / "m")
    restored = ckptlib.restore(tmp_path / "m")  # the reader is closed when this returns
    gc.collect()
    assert all(np.array_equal(restored[name], value) for name, value in state.items())
    restored["t3"][:] = -1  # copy-on-write: the file keeps its bytes
    assert np.array_equal(ckptlib.restore(tmp_path / "m")["t3"], state["t3"])


def flip_byte_of(prefix: Path, name: str, shard_count: int = 1) -> None:
    with ckptlib.load_checkpoint(prefix) as reader:
        entry = reader.entry(name)
    path = data_filename(str(prefix), entry.shard_id, shard_count)
    with open(path, "r+b") as f:
        f.seek(entry.offset + entry.size // 2)
        byte = f.read(1)
        f.seek(entry.offset + entry.size // 2)
        f.write(bytes([byte[0] ^ 0x40]))


@pytest.mark.parametrize("mmap", [True, False])
@pytest.mark.parametrize("damaged", [["t07"], ["t30", "t07"], ["big"]])
def test_the_first_damaged_tensor_in_key_order_is_named(tmp_path: Path, damaged: list[str], mmap: bool) -> None:
    state = {f"t{i:02d}": np.full(3000, i, np.float32) for i in range(40)}
    state["big"] = np.arange(2_000_000, dtype=np.float32)  # checksummed on the thread pool
    ckptlib.save(state, tmp_path / "m")
    for name in damaged:
        flip_byte_of(tmp_path / "m", name)
    with pytest.raises(ckptlib.ChecksumMismatchError, match=sorted(damaged)[0]):
        ckptlib.restore(tmp_path / "m", mmap=mmap)
    unchecked = ckptlib.restore(tmp_path / "m", verify_checksums=False, mmap=mmap)
    assert sorted(unchecked) == sorted(state)


def test_a_truncated_shard_is_reported_not_mapped_past_its_end(tmp_path: Path) -> None:
    state = {f"t{i:02d}": np.full(3000, i, np.float32) for i in range(10)}
    ckptlib.save(state, tmp_path / "m")
    path = data_filename(str(tmp_path / "m"), 0, 1)
    with open(path, "r+b") as f:
        f.truncate(5 * 12000 + 100)
    with pytest.raises(ckptlib.CorruptCheckpointError, match="t05"):
        ckptlib.restore(tmp_path / "m")


def test_runs_of_adjacent_tensors_are_checksummed_in_pieces_on_threads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: list[tuple[int, bool]] = []
    real = span_checks.crc32c_fast

    def spy(data: memoryview) -> int:
        seen.append((memoryview(data).nbytes, threading.current_thread() is threading.main_thread()))
        return int(real(data))

    monkeypatch.setattr(span_checks, "crc32c_fast", spy)
    monkeypatch.setattr(span_checks, "_THREADED_BYTES", 4096)
    state = {"l1": np.ones(5000, np.float32), "l2": np.ones(9000, np.float32), "small": np.ones(10, np.float32)}
    ckptlib.save(state, tmp_path / "m")
    restored = ckptlib.restore(tmp_path / "m", mmap=True)
    assert seen == [(56040, False)]  # three adjacent tensors, one pass
    assert all(np.array_equal(restored[name], value) for name, value in state.items())
    seen.clear()
    monkeypatch.setattr(span_checks, "_PIECE_BYTES", 20000)  # cut every 20000 bytes, inside tensors too
    restored = ckptlib.restore(tmp_path / "m", mmap=True)
    assert sorted(seen) == [(16040, False), (20000, False), (20000, False)]
    assert all(np.array_equal(restored[name], value) for name, value in state.items())


@pytest.mark.parametrize("mmap", [True, False])
def test_a_damaged_run_is_searched_tensor_by_tensor(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mmap: bool
) -> None:
    sizes: list[int] = []
    module = span_checks if mmap else bulk_read
    real = module.crc32c_fast
    monkeypatch.setattr(module, "crc32c_fast", lambda data: sizes.append(len(data)) or real(data))
    state = {f"t{i:02d}": np.full(1000, i, np.float32) for i in range(10)}
    ckptlib.save(state, tmp_path / "m")
    flip_byte_of(tmp_path / "m", "t04")
    with pytest.raises(ckptlib.ChecksumMismatchError, match="t04"):
        ckptlib.restore(tmp_path / "m", mmap=mmap)
    assert sizes == [40000] + [4000] * 10  # the run, then each of its tensors


def test_restore_into_writes_no_target_when_any_tensor_is_damaged(tmp_path: Path) -> None:
    state = {f"t{i:02d}": np.full(3000, i, np.float32) for i in range(20)}
    ckptlib.save(state, tmp_path / "m")
    flip_byte_of(tmp_path / "m", "t15")
    targets = {name: np.zeros_like(value) for name, value in state.items()}
    with pytest.raises(ckptlib.ChecksumMismatchError, match="t15"):
        ckptlib.restore(tmp_path / "m", into=targets)
    assert all(not target.any() for target in targets.values())  # t00..t14 untouched too


def test_restore_into_fills_every_kind_of_target(tmp_path: Path) -> None:
    state = mixed_state()
    ckptlib.save(state, tmp_path / "m", num_shards=2)
    targets: dict[str, object] = {
        name: np.zeros_like(value) if isinstance(value, np.ndarray) and value.dtype != object else None
        for name, value in state.items()
    }
    targets["b/step"] = 0  # a plain value: replaced in its mapping
    report = ckptlib.restore(tmp_path / "m", into=targets)
    assert report.restored == sorted(state)
    for name, value in state.items():
        got = targets[name]
        assert np.array_equal(np.asarray(got), np.asarray(value)), name
    assert targets["b/step"] == 7 and isinstance(targets["b/step"], int)


def hostile_index(prefix: Path, entry: bytes) -> None:
    from ckptlib.format.bundle import encode_header
    from ckptlib.format.table import build_table

    ckptlib.save({"a": np.arange(4, dtype=np.float32)}, prefix, sync=False)
    with open(f"{prefix}.index", "wb") as f:
        f.write(build_table([(b"", encode_header(1)), (b"a", entry)]))


@pytest.mark.parametrize("verify", [True, False])
def test_an_offset_that_wraps_past_2_63_is_refused_not_mapped(tmp_path: Path, verify: bool) -> None:
    from ckptlib.format.bundle import EMPTY_CRC, encode_plain_entry

    hostile_index(tmp_path / "m", encode_plain_entry(1, (4,), 0, (1 << 63) - 8, 16, EMPTY_CRC))
    with pytest.raises(ckptlib.CorruptCheckpointError, match="past the end"):
        ckptlib.restore(tmp_path / "m", verify_checksums=verify)


def test_a_shape_field_running_past_its_entry_is_a_corrupt_checkpoint(tmp_path: Path) -> None:
    hostile_index(tmp_path / "m", bytes.fromhex("08011248"))  # shape length 0x48, no bytes after
    with pytest.raises(ckptlib.CorruptCheckpointError):
        ckptlib.restore(tmp_path / "m")


@pytest.mark.parametrize("enabled", [True, False])
def test_the_garbage_collector_is_put_back_as_it_was(tmp_path: Path, enabled: bool) -> None:
    import gc

    state = {f"t{i}": np.full(10, i, np.float32) for i in range(30)}
    if not enabled:
        gc.disable()
    try:
        ckptlib.save(state, tmp_path / "m")
        assert gc.isenabled() == enabled
        ckptlib.restore(tmp_path / "m")
        assert gc.isenabled() == enabled
        flip_byte_of(tmp_path / "m", "t3")
        with pytest.raises(ckptlib.ChecksumMismatchError):
            ckptlib.restore(tmp_path / "m")
        assert gc.isenabled() == enabled
    finally:
        gc.enable()


def test_a_copying_read_all_reads_in_pieces_on_threads_into_one_private_buffer(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pieces: list[tuple[int, bool]] = []
    real = bulk_read.crc32c_fast

    def spy(data: memoryview) -> int:
        pieces.append((memoryview(data).nbytes, threading.current_thread() is threading.main_thread()))
        return int(real(data))

    monkeypatch.setattr(bulk_read, "crc32c_fast", spy)
    monkeypatch.setattr(bulk_read, "_PIECE_BYTES", 1_000)  # many pieces, cut inside tensors too
    monkeypatch.setattr(private_memory, "MIN_MAPPED_BYTES", 4096)  # the buffer comes from an anonymous map
    rng = np.random.default_rng(2)
    state = {f"t{i:02d}": rng.standard_normal(int(rng.integers(1, 400))).astype(np.float32) for i in range(60)}
    state["big"] = rng.standard_normal(3000).astype(np.float32)
    ckptlib.save(state, tmp_path / "m", num_shards=2)
    restored = ckptlib.restore(tmp_path / "m", mmap=False)
    assert list(restored) == sorted(state)
    assert max(n for n, _ in pieces) == 1_000 and {main for _, main in pieces} == {True, False}
    buffers = {id(np.asarray(a).base) for a in restored.values()}
    assert len(buffers) == 1  # one allocation for every tensor
    for name, value in state.items():
        assert np.array_equal(restored[name], value)
        assert restored[name].flags.writeable
        restored[name][...] = 0  # private memory: neither the file nor another tensor changes
    assert np.array_equal(ckptlib.restore(tmp_path / "m")["big"], state["big"])
    flip_byte_of(tmp_path / "m", "t33", shard_count=2)
    with pytest.raises(ckptlib.ChecksumMismatchError, match="t33"):
        ckptlib.restore(tmp_path / "m", mmap=False)


@pytest.mark.parametrize("mmap", [True, False])
def test_a_rank_numpy_cannot_hold_is_unsupported_not_a_crash(tmp_path: Path, mmap: bool) -> None:
    from ckptlib.format.bundle import encode_plain_entry
    from ckptlib.format.crc import crc32c, mask

    rank = reader_module.NUMPY_MAX_RANK + 1
    data = np.arange(4, dtype=np.float32).tobytes()
    hostile_index(tmp_path / "m", encode_plain_entry(1, (1,) * (rank - 1) + (4,), 0, 0, 16, mask(crc32c(data))))
    with ckptlib.load_checkpoint(tmp_path / "m", mmap=mmap) as reader:
        assert reader.shape("a") == (1,) * (rank - 1) + (4,)  # listed fine
        for read in (reader.read_all, lambda: reader.get_tensor("a"), lambda: reader.read_into("a", np.zeros(4))):
            with pytest.raises(ckptlib.UnsupportedFeatureError, match="at most"):
                read()


def test_entries_aliasing_the_same_bytes_cannot_make_a_copying_read_allocate_more_than_the_files(
    tmp_path: Path,
) -> None:
    from ckptlib.format.bundle import encode_header, encode_plain_entry
    from ckptlib.format.crc import crc32c, mask
    from ckptlib.format.table import build_table

    data = np.zeros(100_000, dtype=np.float32)
    ckptlib.save({"a": data}, tmp_path / "m", sync=False)
    entry = encode_plain_entry(1, (100_000,), 0, 0, 400_000, mask(crc32c(data.tobytes())))
    with open(tmp_path / "m.index", "wb") as f:  # 50 names for the same 400 kB: 20 MB if each were copied
        f.write(build_table([(b"", encode_header(1)), *((f"t{i:02d}".encode(), entry) for i in range(50))]))
    for mmap in (True, False):
        with pytest.raises(ckptlib.CorruptCheckpointError, match="overlap"):
            ckptlib.restore(tmp_path / "m", mmap=mmap)
