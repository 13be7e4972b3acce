"""Hostile files: crafted indexes and state files that lie about sizes, shapes and structure.

Every case must end in a ckptlib error (or, where the lie is harmless, correct values),
quickly, and without allocating memory the file does not justify. The cases run in a
child process whose address space is capped a little above its own size after imports,
so any allocation driven by an unchecked size field fails loudly instead of succeeding.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ckptlib.format import dtypes
from ckptlib.format.block import BlockBuilder
from ckptlib.format.bundle import Entry, encode_entry, encode_header
from ckptlib.format.coding import encode_fixed32, encode_varint
from ckptlib.format.crc import crc32c, mask
from ckptlib.format.footer import BlockHandle, Footer, block_trailer
from ckptlib.format.proto.tensor_bundle_pb2 import BundleEntryProto, BundleHeaderProto
from ckptlib.format.slices import TensorSlice, slice_key
from ckptlib.format.table import build_table

HEADER = encode_header(1)
MIB = 1 << 20


def raw_table(entries: list[tuple[bytes, bytes]]) -> bytes:
    """A table with the entries in the given order, unchecked (for unsorted/duplicate keys)."""
    block = BlockBuilder()
    for key, value in entries:
        block.add(key, value)
    contents = block.finish()
    data = contents + block_trailer(contents)
    meta = BlockBuilder().finish()
    meta_handle = BlockHandle(len(data), len(meta))
    data += meta + block_trailer(meta)
    index = BlockBuilder(1)
    index.add(b"\xff" * 8, BlockHandle(0, len(contents)).encode())
    index_contents = index.finish()
    index_handle = BlockHandle(len(data), len(index_contents))
    data += index_contents + block_trailer(index_contents)
    return data + Footer(meta_handle, index_handle).encode()


def raw_block_table(contents: bytes) -> bytes:
    """A table whose single data block has exactly ``contents`` (checksummed correctly)."""
    data = contents + block_trailer(contents)
    meta = BlockBuilder().finish()
    meta_handle = BlockHandle(len(data), len(meta))
    data += meta + block_trailer(meta)
    index = BlockBuilder(1)
    index.add(b"\xff" * 8, BlockHandle(0, len(contents)).encode())
    index_contents = index.finish()
    index_handle = BlockHandle(len(data), len(index_contents))
    data += index_contents + block_trailer(index_contents)
    return data + Footer(meta_handle, index_handle).encode()


def entry_bytes(dtype: int, dims: list[int], *, offset: int = 0, size: int = 0, shard: int = 0, crc: int = 0) -> bytes:
    proto = BundleEntryProto(dtype=dtype, offset=offset, size=size, shard_id=shard, crc32c=crc)
    proto.shape.SetInParent()
    for d in dims:
        proto.shape.dim.add(size=d)
    return proto.SerializeToString()


def write_bundle(prefix: Path, items: list[tuple[bytes, bytes]], data: bytes = b"", num_shards: int = 1) -> None:
    items = sorted([(b"", encode_header(num_shards)), *items])
    prefix.with_name(prefix.name + ".index").write_bytes(build_table(items))
    prefix.with_name(f"{prefix.name}.data-00000-of-{num_shards:05d}").write_bytes(data)


def numeric_entry(values: np.ndarray, offset: int = 0) -> bytes:
    return encode_entry(
        Entry(
            dtypes.enum_for_numpy(values.dtype),
            values.shape,
            offset=offset,
            size=values.nbytes,
            crc32c=mask(crc32c(values.tobytes())),
        )
    )


# Each builder writes a hostile checkpoint at ``prefix`` (a state file case writes a directory).
def huge_shape(p: Path) -> None:
    write_bundle(p, [(b"w", entry_bytes(1, [1 << 40, 1 << 20], size=(1 << 62)))], b"x" * 16)


def size_past_end(p: Path) -> None:
    write_bundle(p, [(b"w", entry_bytes(1, [10], offset=1000, size=40))], b"x" * 50)


def offset_overflow(p: Path) -> None:
    write_bundle(p, [(b"w", entry_bytes(1, [10], offset=(1 << 63) - 8, size=40))], b"x" * 50)


def negative_dim(p: Path) -> None:
    write_bundle(p, [(b"w", entry_bytes(1, [-1], size=0))])


def overflowing_dims(p: Path) -> None:
    write_bundle(p, [(b"w", entry_bytes(1, [1 << 62, 1 << 62], size=0))])


def rank_255(p: Path) -> None:
    write_bundle(p, [(b"w", entry_bytes(1, [1] * 255, size=4))], b"\0" * 4)


def huge_string_lengths(p: Path) -> None:
    data = encode_varint(1 << 60) + encode_varint(3) + encode_fixed32(0) + b"abc"
    write_bundle(p, [(b"s", entry_bytes(dtypes.DT_STRING, [2], size=len(data)))], data)


def huge_string_count(p: Path) -> None:
    write_bundle(p, [(b"s", entry_bytes(dtypes.DT_STRING, [1 << 40], size=100))], b"\0" * 100)


def _sliced(p: Path, shape: list[int], specs: list[str]) -> None:
    full = BundleEntryProto(dtype=dtypes.DT_FLOAT)
    full.shape.SetInParent()
    for d in shape:
        full.shape.dim.add(size=d)
    items, data = [], b""
    for spec in specs:
        s = TensorSlice.parse(spec)
        full.slices.append(s.to_proto())
        values = np.ones(s.shape(shape), np.float32)
        items.append((slice_key("w", s), numeric_entry(values, offset=len(data))))
        data += values.tobytes()
    items.append((b"w", full.SerializeToString()))
    write_bundle(p, items, data)


def overlapping_slices(p: Path) -> None:
    _sliced(p, [10, 4], ["0,6:-", "4,6:-"])  # rows 4-5 twice, 48 elements for a 40-element tensor


def overlapping_slices_same_count(p: Path) -> None:
    _sliced(p, [10, 4], ["0,6:-", "4,4:-"])  # 40 elements in all, rows 4-5 twice, 8-9 missing


def uncovered_slices(p: Path) -> None:
    _sliced(p, [10, 4], ["0,3:-", "5,5:-"])


def many_overlapping_slices(p: Path) -> None:
    # 2,999 pieces adding up to 3,000 elements: 2996-2997 twice, 2998-2999 never.
    _sliced(p, [3000], [f"{i},1" for i in range(2998)] + ["2996,2"])


def slice_outside_shape(p: Path) -> None:
    full = BundleEntryProto(dtype=dtypes.DT_FLOAT)
    full.shape.dim.add(size=4)
    full.slices.append(TensorSlice.parse("2,5").to_proto())
    write_bundle(p, [(b"w", full.SerializeToString())])


def shard_count_lies(p: Path) -> None:
    values = np.arange(4, dtype=np.float32)
    write_bundle(p, [(b"w", numeric_entry(values))], values.tobytes(), num_shards=1)
    index = p.with_name(p.name + ".index")
    items = [(b"", encode_header(2)), (b"w", numeric_entry(values))]
    index.write_bytes(build_table(items))


def shard_id_out_of_range(p: Path) -> None:
    write_bundle(p, [(b"w", entry_bytes(1, [1], size=4, shard=7))], b"\0" * 4)


def duplicate_keys(p: Path) -> None:
    value = entry_bytes(1, [1], size=4, crc=mask(crc32c(b"\0" * 4)))
    p.with_name(p.name + ".index").write_bytes(raw_table([(b"", HEADER), (b"w", value), (b"w", value)]))
    p.with_name(p.name + ".data-00000-of-00001").write_bytes(b"\0" * 4)


def unsorted_keys(p: Path) -> None:
    value = entry_bytes(1, [1], size=4, crc=mask(crc32c(b"\0" * 4)))
    p.with_name(p.name + ".index").write_bytes(raw_table([(b"", HEADER), (b"z", value), (b"a", value)]))
    p.with_name(p.name + ".data-00000-of-00001").write_bytes(b"\0" * 4)


def header_not_first(p: Path) -> None:
    value = entry_bytes(1, [1], size=4, crc=mask(crc32c(b"\0" * 4)))
    p.with_name(p.name + ".index").write_bytes(raw_table([(b"a", value), (b"b", HEADER)]))
    p.with_name(p.name + ".data-00000-of-00001").write_bytes(b"\0" * 4)


def huge_restart_count(p: Path) -> None:
    contents = b"\x00\x00\x00" + encode_fixed32(0) + encode_fixed32(0x7FFFFFFF)
    p.with_name(p.name + ".index").write_bytes(raw_block_table(contents))


def quadratic_keys(p: Path) -> None:
    # Each entry shares the whole previous key and adds one byte: 200,000 entries in ~800 KB
    # would spell 20 GB of keys if decoded naively.
    parts = [b"\x00\x00\x06" + HEADER]
    parts += [encode_varint(i) + b"\x01\x00" + b"k" for i in range(200_000)]
    contents = b"".join(parts) + encode_fixed32(0) + encode_fixed32(1)
    p.with_name(p.name + ".index").write_bytes(raw_block_table(contents))


def index_handle_past_end(p: Path) -> None:
    footer = Footer(BlockHandle(0, 8), BlockHandle(1 << 40, 1 << 30)).encode()
    p.with_name(p.name + ".index").write_bytes(b"\0" * 100 + footer)


def future_version(p: Path) -> None:
    header = BundleHeaderProto(num_shards=1)
    header.version.producer = 5
    header.version.min_consumer = 3
    p.with_name(p.name + ".index").write_bytes(build_table([(b"", header.SerializeToString())]))


def partitioned_variant(p: Path) -> None:
    # DT_VARIANT has no item size, so its slices are not bounded by real bytes: 100 slices
    # claiming a 2**35-element tensor must be refused before any allocation.
    full = BundleEntryProto(dtype=dtypes.DT_VARIANT)
    full.shape.dim.add(size=1 << 35)
    items = []
    step = (1 << 35) // 100
    for i in range(100):
        s = TensorSlice(((i * step, step if i < 99 else (1 << 35) - 99 * step),))
        full.slices.append(s.to_proto())
        items.append((slice_key("w", s), entry_bytes(dtypes.DT_VARIANT, [s.extents[0][1] or 0], size=1)))
    items.append((b"w", full.SerializeToString()))
    write_bundle(p, items, b"\0")


def empty_but_huge_dims(p: Path) -> None:
    write_bundle(p, [(b"w", entry_bytes(1, [0, 1 << 62, 1 << 62], size=0))])


def absurd_shard_count(p: Path) -> None:
    index = p.with_name(p.name + ".index")
    index.write_bytes(build_table([(b"", encode_header((1 << 31) - 1))]))


def unknown_dtype(p: Path) -> None:
    write_bundle(p, [(b"v", entry_bytes(999, [1], size=4)), (b"w", numeric_entry(np.ones(1, np.float32)))], b"\0" * 4)


def variant_dtype(p: Path) -> None:
    write_bundle(p, [(b"v", entry_bytes(dtypes.DT_VARIANT, [1], size=4))], b"\0" * 4)


CASES: dict[str, Callable[[Path], None]] = {
    f.__name__: f
    for f in [
        huge_shape,
        size_past_end,
        offset_overflow,
        negative_dim,
        overflowing_dims,
        rank_255,
        huge_string_lengths,
        huge_string_count,
        overlapping_slices,
        overlapping_slices_same_count,
        uncovered_slices,
        many_overlapping_slices,
        slice_outside_shape,
        shard_count_lies,
        shard_id_out_of_range,
        duplicate_keys,
        unsorted_keys,
        header_not_first,
        huge_restart_count,
        quadratic_keys,
        index_handle_past_end,
        future_version,
        unknown_dtype,
        variant_dtype,
        partitioned_variant,
        empty_but_huge_dims,
        absurd_shard_count,
    ]
}

STATE_FILES: dict[str, bytes] = {
    "binary_garbage": bytes(range(256)) * 40,
    "unparseable_text": b'model_checkpoint_path: "a"\nall_model_checkpoint_paths: {{{\n',
    "no_model_path": b'all_model_checkpoint_paths: "x"\n',
    "points_outside": b'model_checkpoint_path: "../../../../etc/passwd"\nall_model_checkpoint_paths: "/etc/passwd"\n',
    "points_at_itself": b'model_checkpoint_path: "checkpoint"\nall_model_checkpoint_paths: "."\n',
    "oversized": b'all_model_checkpoint_paths: "' + b"x" * (17 * MIB) + b'"\n',
}

# Runs in the child: open each checkpoint, read and verify everything, report what came out.
CHILD = textwrap.dedent(
    """
    import json, os, resource, sys, time, traceback
    import ckptlib

    def vm_bytes():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024

    cap = vm_bytes() + 256 * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    results = {}
    for name, target in json.loads(sys.argv[1]).items():
        t0 = time.monotonic()
        outcome = "values"
        try:
            if name.startswith("state:"):
                ckptlib.latest_checkpoint(target)
                ckptlib.get_checkpoint_state(target)
            else:
                with ckptlib.load_checkpoint(target) as reader:
                    for key in reader.keys_list():
                        reader.get_tensor(key)
                    if reader.verify():
                        outcome = "verify-reported"
        except ckptlib.CheckpointError as e:
            outcome = "ckptlib:" + type(e).__name__ + ":" + str(e)[:300]
        except BaseException as e:
            outcome = "FOREIGN:" + type(e).__name__ + ":" + traceback.format_exc()[-1500:]
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        results[name] = {"outcome": outcome, "seconds": time.monotonic() - t0, "maxrss_kib": rss - base_rss}
    print(json.dumps(results))
    """
)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, object]]:
    root = tmp_path_factory.mktemp("hostile")
    targets: dict[str, str] = {}
    sizes: dict[str, int] = {}
    for name, build in CASES.items():
        prefix = root / name / "model.ckpt"
        prefix.parent.mkdir()
        build(prefix)
        targets[name] = str(prefix)
        sizes[name] = sum(f.stat().st_size for f in prefix.parent.iterdir())
    for name, content in STATE_FILES.items():
        directory = root / f"state_{name}"
        directory.mkdir()
        (directory / "checkpoint").write_bytes(content)
        targets[f"state:{name}"] = str(directory)
    loop = root / "state_loop"
    loop.mkdir()
    os.symlink("checkpoint", loop / "checkpoint")
    targets["state:symlink_loop"] = str(loop)
    as_dir = root / "state_dir"
    (as_dir / "checkpoint").mkdir(parents=True)
    targets["state:is_a_directory"] = str(as_dir)
    result = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(targets)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found: dict[str, dict[str, object]] = json.loads(result.stdout.strip().splitlines()[-1])
    for name, size in sizes.items():
        found[name]["file_bytes"] = size
    return found


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_index_gives_a_ckptlib_error_quickly_and_cheaply(
    outcomes: dict[str, dict[str, object]], case: str
) -> None:
    result = outcomes[case]
    outcome = str(result["outcome"])
    assert outcome.startswith("ckptlib:"), outcome
    assert "model.ckpt" in outcome, f"the message must name the file: {outcome}"
    assert float(result["seconds"]) < 10, result  # type: ignore[arg-type]
    # Peak memory grows by no more than a small multiple of the checkpoint's own size.
    assert int(result["maxrss_kib"]) * 1024 < 16 * MIB + 64 * int(result["file_bytes"]), result  # type: ignore[call-overload]


@pytest.mark.parametrize("case", [*sorted(STATE_FILES), "symlink_loop", "is_a_directory"])
def test_hostile_state_file_never_escapes_ckptlib(outcomes: dict[str, dict[str, object]], case: str) -> None:
    outcome = str(outcomes[f"state:{case}"]["outcome"])
    assert outcome == "values" or outcome.startswith("ckptlib:"), outcome


def test_expected_error_kinds(outcomes: dict[str, dict[str, object]]) -> None:
    kinds = {case: str(outcomes[case]["outcome"]).split(":")[1] for case in CASES}
    assert kinds["future_version"] == "UnsupportedFeatureError"
    assert kinds["variant_dtype"] == "UnsupportedFeatureError"
    assert kinds["unknown_dtype"] == "UnsupportedFeatureError"
    assert kinds["partitioned_variant"] == "UnsupportedFeatureError"
    assert kinds["shard_count_lies"] == "CheckpointNotFoundError"
    corrupt = set(CASES) - {
        "future_version",
        "variant_dtype",
        "unknown_dtype",
        "shard_count_lies",
        "partitioned_variant",
    }
    assert {kinds[c] for c in corrupt} <= {"CorruptCheckpointError", "ChecksumMismatchError"}, kinds
