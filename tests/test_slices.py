"""``ckptlib.Slice``: saving blocks of tensors in TF's partitioned layout, and restoring any
block of a stored tensor (whole or split any way) into ``Slice`` targets, reading only the
stored pieces the block overlaps."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ckptlib
from ckptlib.format.filenames import data_filename
from ckptlib.format.slices import decode_slice_key
from ckptlib.store import register
from ckptlib.store.memory import MemoryFile, MemoryStore

FULL = np.arange(4 * 6 * 5, dtype=np.float32).reshape(4, 6, 5)


def cuts(n: int, parts: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of ``parts`` near-equal pieces of ``n``."""
    edges = np.linspace(0, n, parts + 1).round().astype(int).tolist()
    return list(zip(edges[:-1], edges[1:], strict=True))


def block(full_shape: tuple[int, ...], axis: int, start: int, stop: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Offsets and shape of rows ``start:stop`` of ``axis``, everything of the other axes."""
    offsets = tuple(start if d == axis else 0 for d in range(len(full_shape)))
    shape = tuple(stop - start if d == axis else n for d, n in enumerate(full_shape))
    return offsets, shape


def index(offsets: tuple[int, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(o, o + n) for o, n in zip(offsets, shape, strict=True))


def write_split(prefix: Path, full: np.ndarray, axis: int, parts: int, name: str = "w") -> str:
    """A bundle holding ``full`` as ``parts`` slices along ``axis`` (as a TF1 partitioner writes it)."""
    writer = ckptlib.BundleWriter(prefix)
    for start, stop in cuts(full.shape[axis], parts):
        offsets, shape = block(full.shape, axis, start, stop)
        spec = ":".join(f"{o},{n}" for o, n in zip(offsets, shape, strict=True))
        writer.add_slice(name, full.shape, spec, full[index(offsets, shape)])
    return writer.finish()


def slice_targets(full: np.ndarray, axis: int, parts: int) -> list[ckptlib.Slice]:
    out = []
    for start, stop in cuts(full.shape[axis], parts):
        offsets, shape = block(full.shape, axis, start, stop)
        out.append(ckptlib.Slice(full.shape, offsets, np.zeros(shape, full.dtype)))
    return out


def piece_places(prefix: str, name: str = "w") -> dict[tuple[tuple[int, int], ...], tuple[int, int, int]]:
    """``{bounds: (shard, offset, size)}`` of every stored slice of ``name``."""
    with ckptlib.load_checkpoint(prefix) as reader:
        full_shape = reader.shape(name)
        places = {}
        for key, entry in reader.raw_entries():
            if key[:1] == b"\0":
                sliced, tensor_slice = decode_slice_key(key)
                if sliced == name:
                    places[tensor_slice.bounds(full_shape)] = (entry.shard_id, entry.offset, entry.size)
        return places


def damage(prefix: str, shard: int, offset: int) -> None:
    path = data_filename(prefix, shard, 1)
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


# --- the value itself


def test_slice_normalises_and_validates() -> None:
    s = ckptlib.Slice([4, 6], np.array([1, 2]), np.zeros((2, 3)))
    assert s.full_shape == (4, 6) and s.offsets == (1, 2) and s.shape == (2, 3)
    assert s.bounds() == ((1, 3), (2, 5))
    with pytest.raises(ckptlib.InvalidTensorError, match="rank"):
        ckptlib.Slice((4, 6), (0,), np.zeros((4, 6)))
    with pytest.raises(ckptlib.InvalidTensorError, match="negative"):
        ckptlib.Slice((4, 6), (-1, 0), np.zeros((1, 6)))
    with pytest.raises(ckptlib.InvalidTensorError, match="ints"):
        ckptlib.Slice((4, "x"), (0, 0), np.zeros((1, 6)))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("offsets", "value", "what"),
    [((3, 0), np.zeros((2, 6)), "does not fit"), ((0, 0), np.zeros((2, 6, 1)), "rank")],
)
def test_save_refuses_a_slice_that_does_not_fit_naming_its_path(
    tmp_path: Path, offsets: tuple[int, ...], value: np.ndarray, what: str
) -> None:
    with pytest.raises(ckptlib.InvalidTensorError, match=what) as caught:
        ckptlib.save({"layer": {"w": ckptlib.Slice((4, 6), offsets, value)}}, tmp_path / "m")
    assert caught.value.tensor == "layer/w"
    assert not list(tmp_path.iterdir())


# --- saving through trees


def test_save_writes_a_slice_in_the_partitioned_layout(tmp_path: Path) -> None:
    tree = {"layer": {"w": ckptlib.Slice((4, 6, 5), (2, 0, 0), FULL[2:]), "b": np.ones(3)}}
    prefix = ckptlib.save(tree, tmp_path / "m")
    with ckptlib.load_checkpoint(prefix) as reader:
        shapes = reader.get_variable_to_shape_map()
        assert shapes["layer/b"] == [3] and shapes["layer/w"] == [4, 6, 5]
        assert reader.tensor_info("layer/w").num_slices == 1
        np.testing.assert_array_equal(reader.get_slice("layer/w", (3, 1, 0), (1, 2, 5)), FULL[3:, 1:3])
    assert list(piece_places(prefix, "layer/w")) == [((2, 4), (0, 6), (0, 5))]


def test_restore_of_a_partial_tensor_says_what_is_missing(tmp_path: Path) -> None:
    """One process's part of a tensor cannot come back whole: the error names the tensor and
    how much of it is stored (TensorFlow refuses it too: 'Does not have sufficient slices')."""
    prefix = ckptlib.save({"w": ckptlib.Slice((4, 6, 5), (0, 0, 0), FULL[:1])}, tmp_path / "m")
    with pytest.raises(ckptlib.CorruptCheckpointError, match="covering 30 of the 120 elements") as caught:
        ckptlib.restore(prefix)
    assert caught.value.tensor == "w"


def test_a_slice_covering_the_whole_tensor_is_an_ordinary_entry(tmp_path: Path) -> None:
    prefix = ckptlib.save({"w": ckptlib.Slice(FULL.shape, (0, 0, 0), FULL)}, tmp_path / "m")
    plain = ckptlib.save({"w": FULL}, tmp_path / "plain")
    assert Path(prefix + ".index").read_bytes() == Path(plain + ".index").read_bytes()


def test_slices_saved_apart_and_merged_restore_whole(tmp_path: Path) -> None:
    """Each process saves its own rows; merged, the bundle holds the whole tensor (and a
    slice restore reads any block of it), as TF's sharded Saver leaves it."""
    parts = []
    for rank, (start, stop) in enumerate(cuts(4, 2)):
        offsets, shape = block(FULL.shape, 0, start, stop)
        state = {"w": ckptlib.Slice(FULL.shape, offsets, FULL[index(offsets, shape)]), "step": 7}
        parts.append(ckptlib.save(state if rank == 0 else {"w": state["w"]}, tmp_path / f"part{rank}"))
    merged = ckptlib.merge_bundles(parts, tmp_path / "merged")
    restored = ckptlib.restore(merged)
    np.testing.assert_array_equal(restored["w"], FULL)
    assert restored["step"] == 7


def test_object_graph_saves_write_slices_too(tmp_path: Path) -> None:
    """CheckpointManager (object graph by default) writes a Slice by its object-graph key, in
    the partitioned layout that TF's ``Checkpoint.restore`` reads once every slice is present."""
    manager = ckptlib.CheckpointManager(tmp_path, max_to_keep=2)
    prefix = manager.save({"model": {"w": ckptlib.Slice(FULL.shape, (0, 3, 0), FULL[:, 3:])}})
    assert prefix is not None
    key = "model/w/.ATTRIBUTES/VARIABLE_VALUE"
    with ckptlib.load_checkpoint(prefix) as reader:
        assert reader.tensor_info(key).num_slices == 1
    target = np.zeros((4, 2, 5), np.float32)
    report = manager.restore({"model": {"w": ckptlib.Slice(FULL.shape, (0, 4, 0), target)}})
    assert report.restored == ["model/w"]
    np.testing.assert_array_equal(target, FULL[:, 4:])


# --- resharding restores


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("parts", [2, 3])
def test_whole_tensor_into_slice_targets(tmp_path: Path, axis: int, parts: int) -> None:
    prefix = ckptlib.save({"w": FULL, "b": np.ones(2)}, tmp_path / "m")
    targets = slice_targets(FULL, axis, parts)
    for target in targets:
        report = ckptlib.restore(prefix, into={"w": target, "b": np.zeros(2)})
        assert report.restored == ["b", "w"] and not report.unexpected
        np.testing.assert_array_equal(target.value, FULL[index(target.offsets, target.shape)])


@pytest.mark.parametrize(("stored_axis", "target_axis"), [(0, 1), (1, 2), (2, 0), (0, 0)])
def test_four_way_split_into_three_way_targets(tmp_path: Path, stored_axis: int, target_axis: int) -> None:
    prefix = write_split(tmp_path / "m", FULL, stored_axis, 4)
    for target in slice_targets(FULL, target_axis, 3):
        ckptlib.restore(prefix, into={"w": target})
        np.testing.assert_array_equal(target.value, FULL[index(target.offsets, target.shape)])


def test_a_slice_target_may_cover_the_whole_tensor(tmp_path: Path) -> None:
    prefix = write_split(tmp_path / "m", FULL, 1, 3)
    target = np.zeros_like(FULL)
    ckptlib.restore(prefix, into={"w": ckptlib.Slice(FULL.shape, (0, 0, 0), target)})
    np.testing.assert_array_equal(target, FULL)


def test_an_empty_block_reads_nothing(tmp_path: Path) -> None:
    prefix = write_split(tmp_path / "m", FULL, 0, 2)
    shard, offset, _ = next(iter(piece_places(prefix).values()))
    damage(prefix, shard, offset)
    target = np.zeros((0, 6, 5), np.float32)
    ckptlib.restore(prefix, into={"w": ckptlib.Slice(FULL.shape, (2, 0, 0), target)})


def test_only_overlapping_pieces_are_read(tmp_path: Path) -> None:
    """A damaged piece the block does not touch is never read (its checksum would fail):
    the slice restore succeeds, a whole restore fails."""
    prefix = write_split(tmp_path / "m", FULL, 0, 4)
    places = piece_places(prefix)
    shard, offset, _ = places[((3, 4), (0, 6), (0, 5))]  # the last row
    damage(prefix, shard, offset)
    target = np.zeros((3, 2, 5), np.float32)
    ckptlib.restore(prefix, into={"w": ckptlib.Slice(FULL.shape, (0, 1, 0), target)})
    np.testing.assert_array_equal(target, FULL[:3, 1:3])
    with pytest.raises(ckptlib.ChecksumMismatchError):
        ckptlib.restore(prefix)
    with pytest.raises(ckptlib.ChecksumMismatchError):
        ckptlib.restore(prefix, into={"w": ckptlib.Slice(FULL.shape, (2, 0, 0), np.zeros((2, 6, 5), np.float32))})


def test_a_damaged_overlapping_piece_leaves_every_target_untouched(tmp_path: Path) -> None:
    writer = ckptlib.BundleWriter(tmp_path / "m")
    writer.add("a", np.arange(3.0))
    for start, stop in cuts(4, 2):
        writer.add_slice("w", FULL.shape, f"{start},{stop - start}:-:-", FULL[start:stop])
    prefix = writer.finish()
    shard, offset, _ = piece_places(prefix)[((2, 4), (0, 6), (0, 5))]
    damage(prefix, shard, offset + 7)
    tree = {"a": np.full(3, -1.0), "w": ckptlib.Slice(FULL.shape, (1, 0, 0), np.full((3, 6, 5), -1, np.float32))}
    with pytest.raises(ckptlib.ChecksumMismatchError) as caught:
        ckptlib.restore(prefix, into=tree)
    assert caught.value.tensor == "w"
    assert (tree["a"] == -1).all() and (tree["w"].value == -1).all()


def test_mismatches_name_the_path_and_write_nothing(tmp_path: Path) -> None:
    prefix = write_split(tmp_path / "m", FULL, 0, 2)
    prefix_b = ckptlib.save({"x": {"w": FULL}}, tmp_path / "b")

    def attempt(path: str, tree: Any) -> ckptlib.RestoreMismatchError:
        with pytest.raises(ckptlib.RestoreMismatchError) as caught:
            ckptlib.restore(path, into=tree)
        return caught.value

    untouched = np.full((2, 6, 5), -1, np.float32)
    shape = attempt(prefix_b, {"x": {"w": ckptlib.Slice((4, 6, 6), (0, 0, 0), untouched)}})
    assert isinstance(shape, ckptlib.ShapeMismatchError) and "x/w: Slice of full shape [4, 6, 6]" in str(shape)
    bounds = attempt(prefix, {"w": ckptlib.Slice(FULL.shape, (3, 0, 0), untouched)})
    assert isinstance(bounds, ckptlib.ShapeMismatchError) and "w: a Slice at offsets [3, 0, 0]" in str(bounds)
    dtype = attempt(prefix, {"w": ckptlib.Slice(FULL.shape, (0, 0, 0), np.zeros((2, 6, 5), np.float64))})
    assert isinstance(dtype, ckptlib.DtypeMismatchError) and "w: target dtype float64" in str(dtype)
    both = attempt(prefix_b, {"x": {"w": ckptlib.Slice(FULL.shape, (3, 0, 0), untouched.astype(np.int32))}})
    assert type(both) is ckptlib.RestoreMismatchError and "x/w" in str(both)
    readonly = untouched.copy()
    readonly.flags.writeable = False
    assert isinstance(
        attempt(prefix, {"w": ckptlib.Slice(FULL.shape, (0, 0, 0), readonly)}), ckptlib.ReadOnlyTargetError
    )
    assert (untouched == -1).all()


def test_strict_restore_counts_a_slice_target_as_taking_its_tensor(tmp_path: Path) -> None:
    prefix = ckptlib.save({"w": FULL, "b": np.ones(2)}, tmp_path / "m")
    with pytest.raises(ckptlib.RestoreMismatchError, match="b: in the checkpoint but not in the restore target"):
        ckptlib.restore(prefix, into={"w": ckptlib.Slice(FULL.shape, (0, 0, 0), np.zeros((1, 6, 5), np.float32))})
    missing = {"w": ckptlib.Slice(FULL.shape, (0, 0, 0), np.zeros((1, 6, 5), np.float32)), "b": np.zeros(2)}
    missing["v"] = ckptlib.Slice((2,), (0,), np.zeros(1))
    report = ckptlib.restore(prefix, into=missing, strict=False)
    assert report.missing == ["v"] and report.restored == ["b", "w"]


def test_reader_get_slice_into_out_and_errors(tmp_path: Path) -> None:
    prefix = write_split(tmp_path / "m", FULL, 2, 2)
    with ckptlib.load_checkpoint(prefix) as reader:
        out = np.zeros((2, 2, 5), np.float32)
        assert reader.get_slice("w", (1, 2, 0), (2, 2, 5), out=out) is out
        np.testing.assert_array_equal(out, FULL[1:3, 2:4])
        with pytest.raises(ckptlib.ShapeMismatchError):
            reader.get_slice("w", (0, 0, 0), (5, 6, 5))
        with pytest.raises(ckptlib.DtypeMismatchError):
            reader.get_slice("w", (0, 0, 0), (1, 1, 1), out=np.zeros((1, 1, 1)))
        with pytest.raises(ckptlib.TensorNotFoundError):
            reader.get_slice("nope", (0,), (1,))


def test_torch_tensor_targets(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    prefix = write_split(tmp_path / "m", FULL, 1, 3)
    targets = [ckptlib.Slice(FULL.shape, (i, 0, 0), torch.zeros(1, 6, 5)) for i in range(4)]
    for target in targets:
        ckptlib.restore(prefix, into={"w": target})
    np.testing.assert_array_equal(torch.cat([t.value for t in targets]).numpy(), FULL)
    saved = ckptlib.save({"w": ckptlib.Slice(FULL.shape, (0, 0, 0), torch.from_numpy(FULL[:2].copy()))}, tmp_path / "t")
    with ckptlib.load_checkpoint(saved) as reader:
        np.testing.assert_array_equal(reader.get_slice("w", (0, 0, 0), (2, 6, 5)), FULL[:2])


def test_jax_targets_are_replaced(tmp_path: Path) -> None:
    jnp = pytest.importorskip("jax.numpy")
    prefix = write_split(tmp_path / "m", FULL, 0, 2)
    report = ckptlib.restore(prefix, into={"w": ckptlib.Slice(FULL.shape, (1, 0, 0), jnp.zeros((2, 6, 5)))})
    restored = report.tree["w"]
    assert isinstance(restored, ckptlib.Slice) and restored.offsets == (1, 0, 0)
    np.testing.assert_array_equal(np.asarray(restored.value), FULL[1:3])


# --- TensorFlow reads what ckptlib wrote


def test_tensorflow_reads_the_sliced_tensor_whole(tmp_path: Path) -> None:
    """``tf.train.load_checkpoint(...).get_tensor`` assembles a ckptlib-written partitioned
    tensor when every slice is present, and refuses one holding only some slices."""
    pytest.importorskip("tensorflow", reason="TensorFlow is not installed: live interop needs tensorflow-cpu")
    whole = write_split(tmp_path / "whole", FULL, 1, 3)
    part = ckptlib.save({"w": ckptlib.Slice(FULL.shape, (0, 0, 0), FULL[:1])}, tmp_path / "part")
    script = textwrap.dedent(
        f"""
        import numpy as np, tensorflow as tf
        print(tf.train.load_checkpoint({whole!r}).get_tensor("w").tobytes().hex())
        try:
            tf.train.load_checkpoint({part!r}).get_tensor("w")
        except Exception as e:
            print(type(e).__name__, e)
        """
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()[-2:]
    assert bytes.fromhex(first) == FULL.tobytes()
    assert second.startswith("ValueError") and "Does not have sufficient slices for partitioned tensor w" in second


# --- remote stores: ranged reads of the overlapping pieces only


class _RecordingStore(MemoryStore):
    """A memory store that records every range read from data files."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[tuple[str, int, int]] = []

    def open(self, path: str) -> MemoryFile:
        found = super().open(path)
        if ".data-" not in path:
            return found
        reads = self.reads

        class Recorded(MemoryFile):
            def read_at(self, offset: int, length: int) -> bytes:
                reads.append((self.path, offset, length))
                return super().read_at(offset, length)

            def readinto(self, offset: int, view: memoryview) -> None:
                reads.append((self.path, offset, view.nbytes))
                super().readinto(offset, view)

        return Recorded(found.path, found.read_at(0, found.size))


def test_remote_slice_restore_reads_only_the_overlapping_pieces() -> None:
    store = _RecordingStore()
    register("recmem", store)
    try:
        writer = ckptlib.BundleWriter("recmem://run/m")
        for start, stop in cuts(4, 4):
            writer.add_slice("w", FULL.shape, f"{start},{stop - start}:-:-", FULL[start:stop])
        prefix = writer.finish()
        with ckptlib.load_checkpoint(prefix) as reader:
            places = {}
            for key, entry in reader.raw_entries():
                if key[:1] == b"\0":
                    places[decode_slice_key(key)[1].bounds(FULL.shape)[0]] = (entry.offset, entry.size)
        store.reads.clear()
        target = np.zeros((2, 6, 5), np.float32)
        ckptlib.restore(prefix, into={"w": ckptlib.Slice(FULL.shape, (1, 0, 0), target)})
        np.testing.assert_array_equal(target, FULL[1:3])
        assert sorted((offset, size) for _, offset, size in store.reads) == sorted([places[(1, 2)], places[(2, 3)]])
    finally:
        register("recmem", None)
