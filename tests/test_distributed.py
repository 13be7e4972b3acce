"""Coordinated saves from several processes: real ``torch.distributed`` jobs (gloo on
127.0.0.1, 2 to 4 ranks, see ``distributed_worker.py``), each bounded in time."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from distributed_launch import explain, run_ranks

import ckptlib
from ckptlib.distributed import SingleProcess
from ckptlib.distributed.plan import Held, Manifest, make_plan, merge_structure_records
from ckptlib.format import dtypes
from ckptlib.format.bundle import name_to_key
from ckptlib.format.filenames import index_filename

pytest.importorskip("torch.distributed", reason="coordinated-save tests need torch")

ROWS_PER_RANK, COLS = 8, 6  # as in distributed_worker.py


def _all_ok(results: list) -> None:
    assert all(r.ok for r in results), explain(results)


def _data_files(directory: Path, name: str) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(name + ".data-"))


def _full(rows: int, step: int) -> np.ndarray:
    return (np.arange(rows)[:, None] * 100 + np.arange(COLS)[None, :]).astype(np.float32) + step


# -- real multi-process jobs --------------------------------------------------------


@pytest.mark.parametrize("world", [2, 4])
def test_data_parallel_replicas_are_written_once_as_one_checkpoint(tmp_path: Path, world: int) -> None:
    directory = tmp_path / "run"
    results = run_ranks("data_parallel", world, directory)
    _all_ok(results)
    values = [r.value for r in results]
    latest = values[0]["latest"]
    assert latest.endswith("model.ckpt-3") and all(v["latest"] == latest for v in values)
    # rotation (max_to_keep=2) ran once, on rank 0: two checkpoints, each one bundle
    assert sorted(p.name for p in directory.glob("*.index")) == ["model.ckpt-2.index", "model.ckpt-3.index"]
    shards = _data_files(directory, "model.ckpt-3")
    assert shards == [f"model.ckpt-3.data-{i:05d}-of-{len(shards):05d}" for i in range(len(shards))]
    assert len(shards) > 1  # the replicas' bytes were spread over several processes
    # a single process reads it as any other checkpoint; every replica was written once
    tree = ckptlib.restore(latest)
    assert tree["step"] == 3
    total = sum(np.asarray(v, dtype=np.float64).sum() for v in _leaves(tree))
    assert total == pytest.approx(values[0]["digest"], rel=1e-6)
    ckptlib.save(tree, str(tmp_path / "single"))
    assert sum(os.path.getsize(directory / s) for s in shards) == os.path.getsize(
        str(tmp_path / "single") + ".data-00000-of-00001"
    )


def _leaves(node: object) -> list[np.ndarray]:
    if isinstance(node, dict):
        return [a for v in node.values() for a in _leaves(v)]
    if isinstance(node, (list, tuple)):
        return [a for v in node for a in _leaves(v)]
    if isinstance(node, np.ndarray) and node.dtype != object:
        return [node]
    return []


def test_sharded_state_from_four_ranks_restores_into_three_and_two(tmp_path: Path) -> None:
    directory = tmp_path / "run"
    results = run_ranks("sharded", 4, directory)
    _all_ok(results)
    latest = results[0].value["latest"]
    assert latest.endswith("ckpt-3") and all(r.value["latest"] == latest for r in results)
    assert all(r.value["checkpoints"] == results[0].value["checkpoints"] for r in results)
    assert len(results[0].value["checkpoints"]) == 2
    assert _data_files(directory, "ckpt-3") == [f"ckpt-3.data-{i:05d}-of-00004" for i in range(4)]
    # one process reads the whole tensor, assembled from the four slices, and every rank's own
    whole = ckptlib.restore(latest)
    np.testing.assert_array_equal(whole["W"], _full(4 * ROWS_PER_RANK, 3))
    assert whole["step"] == 3 and {f"own{r}" for r in range(4)} <= set(whole)
    # resume with another number of ranks and another split
    _all_ok(run_ranks("reshard", 3, directory, "4", "0"))
    _all_ok(run_ranks("reshard", 2, directory, "4", "1"))


def test_tensorflow_reads_the_merged_checkpoint(tmp_path: Path) -> None:
    tf = pytest.importorskip("tensorflow", reason="the live interop tests need tensorflow-cpu")
    directory = tmp_path / "run"
    _all_ok(run_ranks("sharded", 2, directory))
    latest = ckptlib.latest_checkpoint(str(directory))
    reader = tf.train.load_checkpoint(latest)
    np.testing.assert_array_equal(reader.get_tensor("W"), _full(2 * ROWS_PER_RANK, 3))
    np.testing.assert_array_equal(reader.get_tensor("bias"), np.arange(COLS, dtype=np.float32) * 3)
    np.testing.assert_array_equal(reader.get_tensor("own1"), np.full(3, 4, np.int32))
    assert tf.train.latest_checkpoint(str(directory)) == latest


def test_async_coordinated_saves(tmp_path: Path) -> None:
    directory = tmp_path / "run"
    results = run_ranks("data_parallel", 2, directory, "async")
    _all_ok(results)
    assert all(r.value["latest"].endswith("model.ckpt-3") for r in results)
    assert ckptlib.restore(str(directory))["step"] == 3


def test_dtensors_are_saved_as_slices_and_restored_into_another_split(tmp_path: Path) -> None:
    pytest.importorskip("torch.distributed.tensor")
    directory = tmp_path / "run"
    results = run_ranks("dtensor", 2, directory)
    _all_ok(results)
    prefix = results[0].value["prefix"]
    np.testing.assert_array_equal(ckptlib.restore(prefix)["W"], _full(2 * ROWS_PER_RANK + 1, 0))


@pytest.mark.parametrize("how", ["raise", "kill", "stall"])
def test_a_rank_that_fails_fails_the_save_everywhere_in_bounded_time(tmp_path: Path, how: str) -> None:
    directory = tmp_path / "run"
    os.environ["COORD_TIMEOUT_S"] = "5"
    try:
        results = run_ranks("failing", 3, directory, how, timeout=120)
    finally:
        del os.environ["COORD_TIMEOUT_S"]
    if how == "kill":
        assert results[1].returncode != 0
    survivors = [r for r in results if how != "kill" or r.rank != 1]
    for r in survivors:
        assert r.ok, explain(results)
        value = r.value
        assert value["error"] is not None, f"rank {r.rank} saw no error"
        assert value["latest"].endswith("model.ckpt-1"), value
        if how == "raise" and r.rank == 1:
            assert value["error"] == "InvalidTensorError"
        else:
            assert value["error"] == "CoordinationError", value
            if how == "raise":
                assert "rank 1: InvalidTensorError" in value["message"]
        assert value["seconds"] < 60
    # no checkpoint of step 2 became visible; step 1 is whole
    assert not os.path.exists(index_filename(str(directory / "model.ckpt-2")))
    assert ckptlib.latest_checkpoint(str(directory)).endswith("model.ckpt-1")
    with ckptlib.load_checkpoint(str(directory)) as reader:
        assert reader.verify() == []
    if how != "kill":  # every live process took its own file of the failed save away
        assert _data_files(directory, "model.ckpt-2") == []


def test_a_killed_rank_fails_the_save_on_s3_too(s3_bucket: str) -> None:
    directory = f"{s3_bucket}/run"
    os.environ["COORD_TIMEOUT_S"] = "5"
    try:
        results = run_ranks("failing", 3, directory, "kill", timeout=120)
    finally:
        del os.environ["COORD_TIMEOUT_S"]
    assert results[1].returncode != 0
    for r in (results[0], results[2]):
        assert r.ok, explain(results)
        assert r.value["error"] == "CoordinationError" and r.value["seconds"] < 60, r.value
        assert r.value["latest"] == f"{directory}/model.ckpt-1"
    assert not ckptlib.checkpoint_exists(f"{directory}/model.ckpt-2")
    with ckptlib.load_checkpoint(directory) as reader:
        assert reader.verify() == []


def test_coordinated_saves_on_s3(tmp_path: Path, s3_bucket: str) -> None:
    directory = f"{s3_bucket}/run"
    results = run_ranks("sharded", 2, directory)
    _all_ok(results)
    latest = ckptlib.latest_checkpoint(directory)
    assert latest == f"{directory}/ckpt-3"
    np.testing.assert_array_equal(ckptlib.restore(latest)["W"], _full(2 * ROWS_PER_RANK, 3))
    _all_ok(run_ranks("reshard", 3, directory, "2", "1"))


# -- the plan, alike on every process -----------------------------------------------


def _manifest(prefix: str = "p", **held: tuple[str, tuple[int, ...], int]) -> Manifest:
    return Manifest(
        prefix,
        {name_to_key(n): Held(dtypes.by_name(d).enum, s, b) for n, (d, s, b) in held.items()},
        {},
    )


def test_plan_writes_each_replica_once_spreading_bytes() -> None:
    shared = {f"t{i}": ("float32", (100,), 400) for i in range(8)}
    plan = make_plan([_manifest(**shared) for _ in range(4)])
    assert sorted(len(o) for o in plan.owned) == [2, 2, 2, 2]
    assert set().union(*plan.owned) == {name_to_key(n) for n in shared}
    assert plan.num_shards == 4 and plan.shard_of == {0: 0, 1: 1, 2: 2, 3: 3}


def test_plan_numbers_only_the_processes_that_write() -> None:
    plan = make_plan([_manifest(a=("float32", (1,), 4)), _manifest(), _manifest(b=("float32", (1,), 4))])
    assert plan.shard_of == {0: 0, 2: 1} and plan.num_shards == 2


def test_plan_refuses_replicas_that_disagree_and_different_prefixes() -> None:
    with pytest.raises(ckptlib.InvalidTensorError, match=r"rank 0 as float32\[2\] and by rank 1 as float32\[3\]"):
        make_plan([_manifest(a=("float32", (2,), 8)), _manifest(a=("float32", (3,), 12))])
    with pytest.raises(ckptlib.InvalidTensorError, match="different prefixes"):
        make_plan([_manifest("p"), _manifest("q")])


def test_structure_records_of_different_parts_of_a_tree_merge() -> None:
    def record(root: object) -> bytes:
        return json.dumps({"format": "ckptlib.structure", "version": 1, "root": root}).encode()

    a = record(["dict", ["model", "step"], [["dict", ["w0"], ["array"]], "int"]])
    b = record(["dict", ["model", "step"], [["dict", ["w1"], ["array"]], "int"]])
    merged = json.loads(merge_structure_records([a, b]))
    assert merged["root"] == ["dict", ["model", "step"], [["dict", ["w0", "w1"], ["array", "array"]], "int"]]
    assert merge_structure_records([record(["list", ["array"]]), record(["list", ["array", "array"]])]) is None


def test_a_single_process_coordinator_saves_an_ordinary_checkpoint(tmp_path: Path) -> None:
    saver = ckptlib.Saver(max_to_keep=2, coordinator=SingleProcess())
    for step in range(3):
        saver.save({"w": np.full(3, step), "n": step}, str(tmp_path / "model.ckpt"), global_step=step)
    assert ckptlib.restore(str(tmp_path))["n"] == 2
    assert sorted(p.name for p in tmp_path.glob("*.index")) == ["model.ckpt-1.index", "model.ckpt-2.index"]


def test_a_coordinated_save_replaces_a_checkpoint_of_its_prefix_as_one_process_does(mem_store) -> None:
    """Rank 0 wrote the index, then its state-file update failed: the next save of that step
    replaces the bundle left behind; and a replacement that fails midway puts the old one back."""
    manager = ckptlib.CheckpointManager("mem://c", max_to_keep=3, coordinator=SingleProcess())
    manager.save({"w": np.zeros(3)}, checkpoint_number=1)
    mem_store.fail("update", error=OSError(13, "Permission denied"))
    with pytest.raises(OSError):
        manager.save({"w": np.ones(3)}, checkpoint_number=2)
    mem_store.faults.clear()
    assert ckptlib.checkpoint_exists("mem://c/ckpt-2")  # whole, but not listed
    assert ckptlib.latest_checkpoint("mem://c") == "mem://c/ckpt-1"
    manager.save({"w": np.full(3, 2.0)}, checkpoint_number=2)  # a restarted job saves step 2 again
    assert ckptlib.latest_checkpoint("mem://c") == "mem://c/ckpt-2"
    np.testing.assert_array_equal(ckptlib.restore("mem://c/ckpt-2")["w"], np.full(3, 2.0))
    mem_store.fail("rename", match="ckpt-2.index")  # the new index never arrives
    with pytest.raises(OSError):
        manager.save({"w": np.full(3, 9.0)}, checkpoint_number=2)
    mem_store.faults.clear()
    np.testing.assert_array_equal(ckptlib.restore("mem://c/ckpt-2")["w"], np.full(3, 2.0))
    assert not [name for name in mem_store.listdir("mem://c") if ".ckptlib-" in name]


def test_a_coordinated_save_does_not_overwrite_a_checkpoint_on_a_store_without_rename(s3_bucket: str) -> None:
    saver = ckptlib.Saver(coordinator=SingleProcess())
    saver.save({"w": np.zeros(3)}, f"{s3_bucket}/run/model.ckpt", global_step=1)
    with pytest.raises(ckptlib.UnsupportedFeatureError, match="cannot replace"):
        saver.save({"w": np.ones(3)}, f"{s3_bucket}/run/model.ckpt", global_step=1)
    np.testing.assert_array_equal(ckptlib.restore(f"{s3_bucket}/run/model.ckpt-1")["w"], np.zeros(3))


def test_every_process_counts_a_failed_coordinated_save(tmp_path: Path) -> None:
    manager = ckptlib.CheckpointManager(str(tmp_path), max_to_keep=3, coordinator=SingleProcess())
    with pytest.raises(ckptlib.InvalidTensorError):
        manager.save({"w": object()})
    assert manager.save({"w": np.ones(3)}) == str(tmp_path / "ckpt-2")


def test_coordinated_savers_refuse_sharding_options() -> None:
    with pytest.raises(ValueError, match="one data file per process"):
        ckptlib.Saver(num_shards=2, coordinator=SingleProcess())
    with pytest.raises(ValueError, match="one data file per process"):
        ckptlib.CheckpointManager("x", max_to_keep=1, num_shards=2, coordinator=SingleProcess())
    with pytest.raises(ValueError, match="max_pending_saves must be 1"):
        ckptlib.Saver(async_save=True, max_pending_saves=2, coordinator=SingleProcess())
