"""Memory bounds: reading takes memory in proportion to the files read, never to what an
index claims, and a valid checkpoint that needs more than the process may have raises
``CheckpointTooLargeError`` (also a ``MemoryError``), never a bare ``MemoryError`` nor a
claim that the file is corrupt.

Each case runs in a child process whose address space is capped a little above its size
after imports, and reports what came out, how long it took and how much memory it added.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import ckptlib
from ckptlib.format import dtypes
from ckptlib.format.block import BlockBuilder
from ckptlib.format.bundle import encode_header
from ckptlib.format.coding import encode_fixed32, encode_varint
from ckptlib.format.footer import BlockHandle, Footer, block_trailer
from ckptlib.format.proto.saved_tensor_slice_pb2 import SavedSlice, SavedTensorSlices, TensorProto
from ckptlib.format.slices import TensorSlice, slice_key
from ckptlib.format.table import TableBuilder

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc as on Linux")

MIB = 1 << 20

CHILD = textwrap.dedent(
    """
    import contextlib, io, json, os, resource, sys, time, traceback
    import numpy as np
    import ckptlib, ckptlib.cli

    def status(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))

    kind, target, cap_mib = json.loads(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (status("VmSize") + cap_mib * 2**20,) * 2)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # restart the peak (VmHWM) from the memory in use now
    base = status("VmRSS")
    start = time.monotonic()
    try:
        if kind == "read":
            with ckptlib.load_checkpoint(target) as reader:
                total = 0
                for name in reader.keys_list():
                    total += int(reader.get_tensor(name).sum())
            outcome = f"values:{total}"
        else:
            errors = io.StringIO()
            with open(os.devnull, "w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(errors):
                rc = ckptlib.cli.main(target)
            outcome = f"rc={rc}:{errors.getvalue()}"
    except ckptlib.CheckpointError as e:
        outcome = f"ckptlib:{type(e).__name__}:{e}"
    except BaseException as e:
        outcome = f"FOREIGN:{type(e).__name__}:{traceback.format_exc()[-1500:]}"
    grown = status("VmHWM") - base
    print(json.dumps({"outcome": outcome, "seconds": time.monotonic() - start, "grown": grown}))
    """
)


def run_capped(kind: str, target: object, cap_mib: int) -> tuple[str, float, int]:
    """``(outcome, seconds, bytes of peak memory added)`` of reading ``target`` (kind
    "read": every tensor) or running the CLI (kind "cli": ``target`` is its argv) in a
    child allowed ``cap_mib`` MiB of address space beyond its size after imports."""
    child = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps([kind, target, cap_mib])], capture_output=True, text=True, timeout=120
    )
    assert child.returncode == 0, child.stderr[-3000:]
    found = json.loads(child.stdout.strip().splitlines()[-1])
    return found["outcome"], found["seconds"], found["grown"]


def _table(data_blocks: bytes, index_contents: bytes) -> bytes:
    """A table of already encoded data blocks (with trailers) and index block contents."""
    meta = BlockBuilder().finish()
    out = data_blocks + meta + block_trailer(meta)
    index_at = len(out)
    out += index_contents + block_trailer(index_contents)
    return out + Footer(BlockHandle(len(data_blocks), len(meta)), BlockHandle(index_at, len(index_contents))).encode()


def test_index_of_many_handles_to_one_block(tmp_path: Path) -> None:
    """1.5 million index entries all naming one empty data block (21 MB): refused at open,
    in a small multiple of the file's memory, instead of parsing the block once per handle."""
    n = 1_500_000
    empty = BlockBuilder().finish()
    # Index entries with a restart each: shared 0, 5 key bytes, 2 value bytes, "k" + i as
    # 4 big-endian bytes (increasing), then the handle (offset 0, size 8) as two varints.
    entries = np.zeros((n, 12), dtype=np.uint8)
    entries[:, 1:4] = (5, 2, ord("k"))
    entries[:, 4:8] = np.arange(n, dtype=">u4").view(np.uint8).reshape(n, 4)
    entries[:, 8:10] = (0, len(empty))
    restarts = (np.arange(n, dtype="<u4") * 12).tobytes()
    index = entries[:, :10].tobytes() + restarts + encode_fixed32(n)
    entries = entries[:, :10]
    prefix = tmp_path / "model.ckpt"
    index_path = tmp_path / "model.ckpt.index"
    index_path.write_bytes(_table(empty + block_trailer(empty), index))
    (tmp_path / "model.ckpt.data-00000-of-00001").write_bytes(b"")
    outcome, seconds, grown = run_capped("read", str(prefix), 512)
    assert outcome.startswith("ckptlib:CorruptCheckpointError:") and str(index_path) in outcome, outcome
    assert seconds < 10
    assert grown < 32 * MIB + 8 * index_path.stat().st_size, grown


def test_one_long_key_among_many_short_ones(tmp_path: Path) -> None:
    """A 1.6 MB data block of 300,000 short keys and one of 254 bytes: parsed in memory
    proportional to the keys' bytes, not to their number times the longest key."""
    block = BlockBuilder()
    block.add(b"", encode_header(1))
    for i in range(300_000):
        block.add(b"t%06d" % i, b"")
    block.add(b"z" * 127, b"")
    block.add(b"z" * 254, b"")  # shares 127 bytes, adds 127: every varint still one byte
    contents = block.finish()
    index = BlockBuilder(1)
    index.add(b"\xff", BlockHandle(0, len(contents)).encode())
    prefix = tmp_path / "model.ckpt"
    index_path = tmp_path / "model.ckpt.index"
    index_path.write_bytes(_table(contents + block_trailer(contents), index.finish()))
    (tmp_path / "model.ckpt.data-00000-of-00001").write_bytes(b"")
    outcome, seconds, grown = run_capped("read", str(prefix), 128)
    assert outcome.startswith("ckptlib:") and str(index_path) in outcome, outcome  # the entries are empty
    assert seconds < 10
    # Each 5-byte entry becomes a key and a name object (some 100 bytes): a bounded multiple.
    assert grown < 32 * MIB + 24 * index_path.stat().st_size, grown


def _v1_file(path: Path, count: int) -> None:
    """A valid V1 checkpoint of one int64 tensor of ``count`` ones, each a 1-byte varint: a
    4 MB record that parses into 8 bytes per value."""
    meta = SavedTensorSlices()
    tensor = meta.meta.tensor.add(name="a", type=dtypes.DT_INT64)
    tensor.shape.dim.add(size=count)
    tensor.slice.add().extent.add()
    meta.meta.versions.producer = 1

    def field(number: int, payload: bytes) -> bytes:
        return encode_varint(number << 3 | 2) + encode_varint(len(payload)) + payload

    head = TensorProto(dtype=dtypes.DT_INT64)
    head.tensor_shape.dim.add(size=count)
    saved = SavedSlice(name="a")
    saved.slice.extent.add()
    data = field(3, head.SerializeToString() + field(10, b"\x01" * count))  # int64_val, packed
    record = field(2, saved.SerializeToString() + data)
    with open(path, "wb") as f:
        table = TableBuilder(f.write)
        table.add(b"", meta.SerializeToString())
        table.add(slice_key("a", TensorSlice.full(1)), record)
        table.finish()


@pytest.fixture(scope="module")
def v1_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("v1") / "model.ckpt"
    _v1_file(path, 4_000_000)
    return path


def test_v1_file_of_one_byte_varints(v1_file: Path) -> None:
    """Read whole with room to spare; with too little memory, too large, never corrupt."""
    outcome, _, grown = run_capped("read", str(v1_file), 512)
    assert outcome == "values:4000000", outcome
    assert grown < 32 * MIB + 24 * v1_file.stat().st_size, grown
    outcome, _, _ = run_capped("read", str(v1_file), 32)
    assert outcome == "values:4000000" or (
        outcome.startswith("ckptlib:CheckpointTooLargeError:") and "too large for this memory" in outcome
    ), outcome
    assert str(v1_file) in outcome or outcome.startswith("values")


def test_cli_says_too_large_in_one_line(v1_file: Path, tmp_path: Path) -> None:
    for argv in (["inspect", str(v1_file), "--all", "--stats"], ["convert", str(v1_file), str(tmp_path / "a.npz")]):
        outcome, _, _ = run_capped("cli", argv, 32)
        assert outcome.startswith("rc=1:"), outcome
        message = outcome[len("rc=1:") :]
        assert message.count("\n") == 1 and f"ckptlib {argv[0]}: error:" in message, message
        assert "too large for this memory" in message and str(v1_file) in message, message


@pytest.fixture(scope="module")
def many_tensors(tmp_path_factory: pytest.TempPathFactory) -> Path:
    prefix = tmp_path_factory.mktemp("many") / "model.ckpt"
    ckptlib.save({f"t{i:06d}": np.float32(i) for i in range(30_000)}, str(prefix))
    return prefix


@pytest.mark.parametrize("output", ["text", "json"])
def test_cli_inspect_all_stats_streams(many_tensors: Path, output: str) -> None:
    """``inspect --all --stats`` holds one tensor (and its stats) at a time, not all of them."""
    argv = ["inspect", str(many_tensors), "--all", "--stats", *(["--json"] if output == "json" else [])]
    outcome, _, grown = run_capped("cli", argv, 256)
    assert outcome == "rc=0:", outcome
    index_bytes = many_tensors.with_name("model.ckpt.index").stat().st_size
    assert grown < 16 * MIB + 16 * index_bytes, grown
