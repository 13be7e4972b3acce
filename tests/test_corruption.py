"""Corruption sweep: truncate every file at every length and flip its bytes, then read everything.

After each mutation the only acceptable outcomes are

(a) a ``ckptlib.CheckpointError`` whose message names the damaged file (and the tensor, when
    it came from ``get_tensor``), or
(b) exactly the original values, bit for bit.

Anything else (another exception type, different values, a hang) fails. On top of that,
``reader.verify()`` must report a problem for every mutation of a checksummed byte: index data
blocks, the index block and every byte of the data files are covered by crc32c. Bytes nobody
reads (the metaindex block, the footer's padding) may be harmless.
"""

from __future__ import annotations

import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import ckptlib
from ckptlib.format.footer import BLOCK_TRAILER_SIZE, FOOTER_SIZE, Footer
from ckptlib.format.table import BytesSource, TableBuilder, TableReader

FLIP_PATTERNS = (0xFF, 0x01, 0x80)  # the index gets all three; data files the first two
DATA_FLIP_PATTERNS = (0xFF, 0x01)
FULL_SWEEP_LIMIT = 2048  # files smaller than this get every byte flipped
PER_MUTATION_TIMEOUT_S = 5.0

MUTATIONS: Counter[str] = Counter()

# The hang guard is a SIGALRM timer: POSIX only, main thread only.
pytestmark = pytest.mark.skipif(
    not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread(),
    reason="the per-mutation hang guard needs SIGALRM in the main thread",
)


# -- the checkpoints -------------------------------------------------------------------


@dataclass
class Checkpoint:
    prefix: str
    values: dict[str, np.ndarray]

    @property
    def index(self) -> Path:
        return Path(self.prefix + ".index")

    def data_files(self) -> list[Path]:
        return sorted(Path(self.prefix).parent.glob(Path(self.prefix).name + ".data-*"))


def _values() -> dict[str, np.ndarray]:
    return {
        "f32": np.array([1.5, -2.0, 3.25], np.float32),
        "i64": np.array(-7, np.int64),
        "bf16": np.arange(4, dtype=np.float32).astype(ml_dtypes.bfloat16).reshape(2, 2),
        "flags": np.array([True, False, True]),
        "c64": np.array([1 + 2j], np.complex64),
        "empty": np.zeros((0, 3), np.float32),
        "u4": np.array([1, 2, 15], ml_dtypes.uint4),
        "s": np.array([b"ab", b"", b"xyz"], dtype=object),
    }


PART = np.arange(8, dtype=np.int32).reshape(4, 2)


def _write(prefix: Path, num_shards: int) -> Checkpoint:
    values = _values()
    writer = ckptlib.BundleWriter(prefix, num_shards=num_shards, sync=False)
    for name, value in values.items():
        writer.add(name, value)
    writer.add_slice("part", PART.shape, "0,1:-", PART[:1])
    writer.add_slice("part", PART.shape, "1,3:0,2", PART[1:])
    writer.finish()
    values["part"] = PART
    return Checkpoint(str(prefix), values)


def _rebuild_index_with_small_blocks(checkpoint: Checkpoint, block_size: int = 64) -> None:
    """Same entries, but spread over many data blocks (exercises the index block and separators)."""
    items = list(TableReader(BytesSource(checkpoint.index.read_bytes())).items())
    chunks: list[bytes] = []
    builder = TableBuilder(chunks.append, block_size=block_size)
    for key, value in items:
        builder.add(key, value)
    builder.finish()
    checkpoint.index.write_bytes(b"".join(chunks))


def make_checkpoint(kind: str, directory: Path) -> Checkpoint:
    directory.mkdir(parents=True, exist_ok=True)
    if kind == "single":
        return _write(directory / "single", 1)
    if kind == "sharded":
        return _write(directory / "sharded", 3)
    if kind == "multiblock":
        checkpoint = _write(directory / "multiblock", 1)
        _rebuild_index_with_small_blocks(checkpoint)
        return checkpoint
    raise AssertionError(kind)


KINDS = ["single", "sharded", "multiblock"]


# -- checking one mutation -------------------------------------------------------------


class _Hang(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise _Hang(f"a read took longer than {PER_MUTATION_TIMEOUT_S} s")


def _same(got: object, want: np.ndarray) -> bool:
    if not isinstance(got, np.ndarray) or got.shape != want.shape or got.dtype != want.dtype:
        return False
    if want.dtype == object:
        return [type(x) for x in got.reshape(-1)] == [bytes] * want.size and list(got.reshape(-1)) == list(
            want.reshape(-1)
        )
    return np.ascontiguousarray(got).reshape(-1).view(np.uint8).tobytes() == want.reshape(-1).view(np.uint8).tobytes()


def names_ok(reader: ckptlib.CheckpointReader) -> bool:
    try:
        reader.keys_list()
    except ckptlib.CheckpointError:
        return False
    return True


def check(checkpoint: Checkpoint, damaged: Path, what: str, must_detect: bool) -> str:
    """Open the checkpoint, read every tensor, verify; returns the outcome's name."""
    base = damaged.name
    context = f"{what} of {base}"

    def named(e: BaseException, tensor: str | None = None) -> None:
        assert isinstance(e, ckptlib.CheckpointError), f"{context}: {type(e).__name__}: {e}"
        assert base in str(e), f"{context}: error does not name {base}: {e}"
        if tensor is not None:
            assert tensor in str(e), f"{context}: error does not name tensor {tensor!r}: {e}"

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, PER_MUTATION_TIMEOUT_S)
    try:
        try:
            reader = ckptlib.load_checkpoint(checkpoint.prefix)
        except _Hang:
            raise
        except Exception as e:
            named(e)
            return "error at open"
        with reader:
            try:
                names = reader.keys_list()
            except _Hang:
                raise
            except Exception as e:
                named(e)
            else:
                assert sorted(names) == sorted(checkpoint.values), f"{context}: listed {sorted(names)}"
            failed = []
            for name, want in checkpoint.values.items():
                try:
                    got = reader.get_tensor(name)
                except _Hang:
                    raise
                except Exception as e:
                    named(e, name)
                    failed.append(name)
                else:
                    assert _same(got, want), f"{context}: {name} read back as {got!r}, stored {want!r}"
            for mapped in (True, False):  # read_all maps, or copies out of pieces read whole
                try:
                    with ckptlib.load_checkpoint(checkpoint.prefix, mmap=mapped) as whole:
                        everything = whole.read_all()
                except _Hang:
                    raise
                except Exception as e:
                    named(e)
                    assert failed or not names_ok(reader), f"{context}: read_all raised {e}, get_tensor read all"
                else:
                    assert not failed, f"{context}: read_all returned tensors get_tensor refused: {failed}"
                    got = sorted(everything)
                    assert got == sorted(checkpoint.values), f"{context}: read_all(mmap={mapped}) gave {got}"
                    for name, want in checkpoint.values.items():
                        assert _same(everything[name], want), f"{context}: read_all gave {name} as {everything[name]!r}"
            try:
                problems = reader.verify()
            except _Hang:
                raise
            except Exception as e:
                pytest.fail(f"{context}: verify() raised {type(e).__name__}: {e}")
            for problem in problems:
                named(problem)
            if failed:
                assert problems, f"{context}: get_tensor failed for {failed} but verify() found nothing"
            if must_detect:
                assert problems, f"{context}: damage to checksummed bytes went unnoticed by verify()"
            return "error on read" if failed else ("verify only" if problems else "identical")
    except _Hang as e:
        pytest.fail(f"{context}: {e}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def sweep(
    checkpoint: Checkpoint,
    path: Path,
    mutations: Iterator[tuple[str, bytes, bool]],
) -> Counter[str]:
    """Apply each ``(description, new contents, must_detect)`` to ``path`` in turn."""
    original = path.read_bytes()
    outcomes: Counter[str] = Counter()
    try:
        for what, contents, must_detect in mutations:
            path.write_bytes(contents)
            outcomes[check(checkpoint, path, what, must_detect)] += 1
    finally:
        path.write_bytes(original)
    # the checkpoint is whole again
    assert check(checkpoint, path, "restored original", False) == "identical"
    MUTATIONS[path.name] += sum(outcomes.values())
    return outcomes


def truncations(data: bytes) -> Iterator[tuple[str, bytes, bool]]:
    for n in range(len(data)):
        yield f"truncation to {n} bytes", data[:n], True


def flips(data: bytes, positions: list[int], patterns: tuple[int, ...], detect: Callable[[int], bool]):
    for i in positions:
        for pattern in patterns:
            damaged = bytearray(data)
            damaged[i] ^= pattern
            yield f"byte {i} ^ {pattern:#04x}", bytes(damaged), detect(i)


def checksummed_index_bytes(index: bytes) -> Callable[[int], bool]:
    """Positions covered by a crc the reader checks: data blocks and the index block, trailers included."""
    footer = Footer.decode(index[-FOOTER_SIZE:])
    meta_start = footer.metaindex.offset
    meta_end = meta_start + footer.metaindex.size + BLOCK_TRAILER_SIZE
    index_start = footer.index.offset
    index_end = index_start + footer.index.size + BLOCK_TRAILER_SIZE
    assert meta_start < meta_end <= index_start < index_end <= len(index) - FOOTER_SIZE

    def covered(i: int) -> bool:
        return i < meta_start or index_start <= i < index_end

    return covered


# -- the sweeps ------------------------------------------------------------------------


def test_checkpoints_are_small_and_intact(tmp_path: Path) -> None:
    for kind in KINDS:
        checkpoint = make_checkpoint(kind, tmp_path / kind)
        size = checkpoint.index.stat().st_size
        assert size < 1024, f"{kind} index is {size} bytes: keep the sweep fast"
        assert len(checkpoint.data_files()) == (3 if kind == "sharded" else 1)
        assert check(checkpoint, checkpoint.index, "no mutation", False) == "identical"
    # the multi-block variant really has several blocks
    index = (tmp_path / "multiblock" / "multiblock.index").read_bytes()
    assert TableReader(BytesSource(index)).num_blocks > 3


@pytest.mark.parametrize("kind", KINDS)
def test_index_sweep(tmp_path: Path, kind: str) -> None:
    checkpoint = make_checkpoint(kind, tmp_path)
    index = checkpoint.index.read_bytes()
    covered = checksummed_index_bytes(index)

    def mutations() -> Iterator[tuple[str, bytes, bool]]:
        yield from truncations(index)
        yield from flips(index, list(range(len(index))), FLIP_PATTERNS, covered)

    outcomes = sweep(checkpoint, checkpoint.index, mutations())
    assert sum(outcomes.values()) == len(index) * (1 + len(FLIP_PATTERNS))
    # sanity: flips in the metaindex block or the footer padding are harmless; nothing else is
    assert outcomes["identical"] > 0
    assert outcomes["error at open"] > 0


def _data_cases() -> list[tuple[str, int]]:
    return [("single", 0), ("multiblock", 0), ("sharded", 0), ("sharded", 1), ("sharded", 2)]


@pytest.mark.parametrize(("kind", "shard"), _data_cases())
def test_data_sweep(tmp_path: Path, kind: str, shard: int) -> None:
    checkpoint = make_checkpoint(kind, tmp_path)
    path = checkpoint.data_files()[shard]
    data = path.read_bytes()
    if len(data) < FULL_SWEEP_LIMIT:
        positions = list(range(len(data)))
    else:
        step = max(1, len(data) // 512)
        positions = sorted({*range(0, len(data), step), *range(64), *range(len(data) - 64, len(data))})

    def mutations() -> Iterator[tuple[str, bytes, bool]]:
        yield from truncations(data)
        # every byte of a data file belongs to some tensor's checksummed bytes
        yield from flips(data, positions, DATA_FLIP_PATTERNS, lambda i: True)

    outcomes = sweep(checkpoint, path, mutations())
    # damage to data is never found at open (only the index is read), always on read
    assert set(outcomes) <= {"error on read"}, outcomes


def test_missing_data_file(tmp_path: Path) -> None:
    checkpoint = make_checkpoint("sharded", tmp_path)
    for path in checkpoint.data_files():
        original = path.read_bytes()
        path.unlink()
        try:
            assert check(checkpoint, path, "deletion", True) in {"error on read", "error at open"}
        finally:
            path.write_bytes(original)
        MUTATIONS[path.name] += 1


def test_report_mutation_count() -> None:
    """Runs last in this module: prints how many mutations the sweep tried (visible with -s or -rA)."""
    total = sum(MUTATIONS.values())
    print(f"\ncorruption sweep: {total} mutations", dict(sorted(MUTATIONS.items())))
    if MUTATIONS:
        assert total > 1000
