"""BundleWriter.add_all: the same bundle, byte for byte, as adding each tensor in turn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

import ckptlib
from ckptlib.format.filenames import data_filename
from ckptlib.shard_plan import assign_shards
from ckptlib.writer import BundleWriter


def files_of(prefix: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(prefix.parent.iterdir())}


def mixed_state() -> dict[str, Any]:
    rng = np.random.default_rng(3)
    state: dict[str, Any] = {f"plain/{i:03d}": rng.standard_normal(int(rng.integers(0, 50))) for i in range(30)}
    state["strided"] = np.arange(20, dtype=np.int32)[::2]  # copied by add, not taken as is
    state["bf16"] = np.ones((3, 2), ml_dtypes.bfloat16)
    state["big_endian"] = np.arange(5, dtype=">f4")
    state["text"] = np.array([b"a", b"bc"], dtype=object)
    state["list"] = [1, 2, 3]
    state["scalar"] = np.float64(2.5)
    state["zero_d"] = np.array(4, np.int16)
    state["caf\u00e9/\u03b8"] = np.zeros((2, 0), np.float32)
    state.update({f"tail/{i}": np.full(i, i, np.uint8) for i in range(10)})
    return state


@pytest.mark.parametrize("num_shards", [1, 3])
def test_add_all_writes_what_adding_one_by_one_writes(tmp_path: Path, num_shards: int) -> None:
    state = mixed_state()
    one, bulk = (
        BundleWriter(tmp_path / "a" / "m", num_shards=num_shards),
        BundleWriter(tmp_path / "b" / "m", num_shards=num_shards),
    )
    for name, value in state.items():
        one.add(name, value)
    bulk.add_all(state)
    one.finish(), bulk.finish()
    assert files_of(tmp_path / "a" / "m") == files_of(tmp_path / "b" / "m")
    restored = ckptlib.restore(tmp_path / "b" / "m")
    assert np.array_equal(restored["strided"], state["strided"]) and restored["text"].tolist() == [b"a", b"bc"]
    assert data_filename("m", 0, num_shards) in files_of(tmp_path / "b" / "m")


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"a": np.ones(2), "": np.ones(2)}, "empty"),
        ({"a": np.ones(2), "b": object()}, "tensor 'b': cannot save a value of type object"),
        ({"x": np.ones(2), "a\udcff\ud800": np.ones(2)}, "UTF-8"),
    ],
)
def test_add_all_refuses_what_add_refuses(tmp_path: Path, state: dict[str, Any], message: str) -> None:
    writer = BundleWriter(tmp_path / "m")
    with pytest.raises(ckptlib.InvalidTensorError, match=message):
        writer.add_all(state)


def test_add_all_refuses_a_name_already_added(tmp_path: Path) -> None:
    writer = BundleWriter(tmp_path / "m")
    writer.add("w", np.ones(2))
    with pytest.raises(ckptlib.InvalidTensorError, match="duplicate"):
        writer.add_all({"v": np.ones(1), "w": np.ones(3)})


def test_names_with_nul_bytes_are_added_one_by_one(tmp_path: Path) -> None:
    writer = BundleWriter(tmp_path / "m")
    writer.add_all({"a\0b": np.ones(2, np.float32), "c": np.zeros(1, np.float32)})
    writer.finish()
    assert sorted(ckptlib.restore(tmp_path / "m")) == ["a\0b", "c"]


def shard_loads(sizes: list[int], num_shards: int, tmp_path: Path) -> list[int]:
    """The bytes in each shard ``BundleWriter`` spreads tensors of ``sizes`` bytes over."""
    writer = BundleWriter(tmp_path / "m", num_shards=num_shards)
    writer.add_all({f"t{i:04d}": np.zeros(n, np.uint8) for i, n in enumerate(sizes)})
    shards = assign_shards(writer._pending.nbytes(), num_shards)
    assert shards is not None and len(shards) == num_shards
    weights = np.maximum(np.array(sizes, dtype=np.int64), 1)
    return [int(weights[shard].sum()) for shard in shards]


@pytest.mark.parametrize(
    ("sizes", "num_shards", "loads"),
    [
        ([], 3, [0, 0, 0]),
        ([10, 10], 4, None),  # more shards than tensors: two stay empty
        ([7] * 7, 7, [7] * 7),
        ([3] * 10, 4, [9, 9, 6, 6]),  # all large: largest first onto the least filled
        ([1000] + [1] * 100, 3, [1000, 50, 50]),  # the small ones share what the large one leaves
        ([1] * 50 + [1000] + [1] * 50, 3, [1000, 50, 50]),
    ],
)
def test_shard_loads_in_plain_cases(tmp_path: Path, sizes: list[int], num_shards: int, loads: list[int] | None) -> None:
    got = shard_loads(sizes, num_shards, tmp_path)
    if loads is None:
        assert sorted(got) == [0, 0, 10, 10]
    else:
        assert got == loads


@pytest.mark.parametrize("seed", range(12))
def test_shards_take_every_tensor_once_in_add_order_small_ones_in_runs(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    count = int(rng.integers(0, 400))
    sizes = rng.integers(0, 3000, count) * (rng.random(count) < 0.9) + rng.integers(0, 2, count) * rng.integers(
        0, 200_000, count
    )
    num_shards = int(rng.integers(2, 6))
    state = {f"t{i:04d}": rng.integers(0, 256, int(n), dtype=np.uint8) for i, n in enumerate(sizes)}
    writer = BundleWriter(tmp_path / "m", num_shards=num_shards)
    writer.add_all(state)
    shards = assign_shards(writer._pending.nbytes(), num_shards)
    assert shards is not None and len(shards) == num_shards
    assert sorted(i for shard in shards for i in shard) == list(range(count))
    assert all(shard == sorted(shard) for shard in shards)
    weights = np.maximum(sizes, 1)
    loads = [int(weights[shard].sum()) for shard in shards]
    assert max(loads) - min(loads) <= (int(weights.max()) if count else 0)
    owner = np.empty(count, dtype=np.int64)
    for number, shard in enumerate(shards):
        owner[shard] = number
    small = weights * 8 * num_shards < weights.sum()
    assert np.all(np.diff(owner[small]) >= 0)  # in add order, shard after shard: runs of neighbours
    writer.finish()
    restored = ckptlib.restore(tmp_path / "m")
    assert restored.keys() == state.keys()
    assert all(np.array_equal(restored[name], value) for name, value in state.items())


def test_large_string_elements_are_written_from_their_own_bytes(tmp_path: Path) -> None:
    from ckptlib.format.strings import encode_strings
    from ckptlib.index_builder import STRING_OWN_BUFFER, _string_buffers

    big = b"\x05" * STRING_OWN_BUFFER
    elements = [b"a", big, b"", b"bc", b"\x06" * (STRING_OWN_BUFFER + 1), b"d"]
    chunks, size, _ = encode_strings(elements)
    buffers = _string_buffers(chunks)
    assert b"".join(bytes(b) for b in buffers) == b"".join(chunks) and sum(b.nbytes for b in buffers) == size
    assert [b.nbytes for b in buffers] == [len(chunks[0]) + 4 + 1, len(big), 2 + 0, STRING_OWN_BUFFER + 1, 1]
    assert buffers[1].obj is big  # not a copy
    state = {"text": np.array(elements, dtype=object), "after": np.arange(5, dtype=np.int32)}
    ckptlib.save(state, tmp_path / "m", num_shards=2)
    ckptlib.save(state, tmp_path / "one" / "m")
    for prefix in (tmp_path / "m", tmp_path / "one" / "m"):
        restored = ckptlib.restore(prefix)
        assert restored["text"].tolist() == elements and restored["after"].tolist() == [0, 1, 2, 3, 4]
    with ckptlib.load_checkpoint(tmp_path / "one" / "m") as reader:
        assert reader.tensor_info("text").nbytes == size
