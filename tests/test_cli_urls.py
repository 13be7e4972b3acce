"""The ``ckptlib`` command on URLs: every command on ``mem://`` checkpoints (a ``MemoryStore``
registered by the ``mem_store`` fixture), called in process through ``ckptlib.cli.main``,
and a smoke test of ``ls``, ``inspect`` and ``verify`` on S3 (a moto server)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import ckptlib
from ckptlib.cli import main
from ckptlib.store.temp_names import temp_path

RUN = "mem://run"


def _tree(scale: float = 1.0) -> dict[str, np.ndarray]:
    return {
        "w": (np.arange(6, dtype=np.float32).reshape(2, 3) * scale).astype(np.float32),
        "b": np.ones(3, dtype=np.float64),
        "step": np.array(7, dtype=np.int64),
    }


@pytest.fixture
def mem_run(mem_store):
    """Two checkpoints saved by a ``Saver`` under ``mem://run`` (the second the latest)."""
    saver = ckptlib.Saver()
    saver.save(_tree(), f"{RUN}/model.ckpt", global_step=1)
    saver.save(_tree(2.0), f"{RUN}/model.ckpt", global_step=2)
    return mem_store


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _damage(store, prefix: str, name: str) -> None:
    """Flip one byte in the middle of tensor ``name``'s stored bytes, through the store."""
    with ckptlib.load_checkpoint(prefix) as reader:
        entry = reader.entry(name)
        (data,) = [f for f in reader.files if ".data-" in f][entry.shard_id : entry.shard_id + 1]
    file = store.open(data)
    try:
        stored = bytearray(file.read_at(0, file.size))
    finally:
        file.close()
    stored[entry.offset + entry.size // 2] ^= 0xFF
    store.write_small(data, bytes(stored), sync=False)


def _stored_size(store, prefix: str) -> int:
    total = 0
    for path in [f"{prefix}.index", f"{prefix}.data-00000-of-00001"]:
        file = store.open(path)
        total += file.size
        file.close()
    return total


# -- ls -------------------------------------------------------------------------------
def test_ls_text(mem_run, capsys):
    rc, out, err = _run(capsys, "ls", RUN)
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["STEP", "TIME", "SIZE", "SHARDS", "STATUS", "NAME"]
    assert lines[1].split()[0] == "1" and lines[1].endswith("complete             model.ckpt-1")
    assert lines[2].startswith("*        2  ") and lines[2].endswith("model.ckpt-2")
    assert lines[-1] == f"2 checkpoint(s); * = latest ({RUN}/model.ckpt-2)"


def test_ls_json_sizes_times_and_an_unlisted_leftover(mem_run, capsys):
    # An index without its data file, which no state file names: what a crash leaves.
    index = mem_run.open(f"{RUN}/model.ckpt-1.index")
    mem_run.write_small(f"{RUN}/model.ckpt-9.index", index.read_at(0, index.size), sync=False)
    rc, out, _ = _run(capsys, "ls", "--json", RUN)
    assert rc == 0
    document = json.loads(out)
    assert document["directory"] == RUN and document["latest"] == f"{RUN}/model.ckpt-2"
    rows = {row["name"]: row for row in document["checkpoints"]}
    assert list(rows) == ["model.ckpt-1", "model.ckpt-2", "model.ckpt-9"]
    first = rows["model.ckpt-1"]
    assert first["prefix"] == f"{RUN}/model.ckpt-1" and first["step"] == 1 and first["shards"] == 1
    assert first["complete"] and first["listed"] and not first["latest"] and first["missing_files"] == []
    assert first["size"] == _stored_size(mem_run, f"{RUN}/model.ckpt-1")
    assert isinstance(first["time"], float)
    assert rows["model.ckpt-2"]["latest"]
    leftover = rows["model.ckpt-9"]
    assert not leftover["complete"] and not leftover["listed"]
    assert leftover["missing_files"] == ["model.ckpt-9.data-00000-of-00001"]
    assert leftover["time"] == mem_run.mtime(f"{RUN}/model.ckpt-9.index")

    rc, out, _ = _run(capsys, "ls", RUN)
    assert "INCOMPLETE (unlisted)  model.ckpt-9" in out


def test_ls_missing_directory(mem_store, capsys):
    rc, out, err = _run(capsys, "ls", "mem://nothing")
    assert rc == 1 and out == ""
    assert "no such directory" in err and "mem://nothing" in err


# -- inspect --------------------------------------------------------------------------
def test_inspect_text(mem_run, capsys):
    rc, out, err = _run(capsys, "inspect", RUN)
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "DTYPE", "SHAPE", "SIZE", "SHARD"]
    rows = {line.split()[0]: line for line in lines[1:-1]}
    assert rows["w"].split()[1:] == ["float32", "[2,", "3]", "24", "B", "0"]
    assert rows["step"].split()[1:3] == ["int64", "[]"]
    assert lines[-1] == f"3 tensor(s), 56 B in 2 file(s): {RUN}/model.ckpt-2"


def test_inspect_json_with_values_and_stats(mem_run, capsys):
    rc, out, _ = _run(capsys, "inspect", "--json", "--all", "--stats", f"{RUN}/model.ckpt-2.index")
    assert rc == 0
    document = json.loads(out)
    assert document["prefix"] == f"{RUN}/model.ckpt-2"
    assert document["files"] == [f"{RUN}/model.ckpt-2.index", f"{RUN}/model.ckpt-2.data-00000-of-00001"]
    assert document["total_bytes"] == 56
    rows = {row["name"]: row for row in document["tensors"]}
    assert rows["w"]["dtype"] == "float32" and rows["w"]["shape"] == [2, 3] and rows["w"]["nbytes"] == 24
    assert rows["w"]["value"] == [[0.0, 2.0, 4.0], [6.0, 8.0, 10.0]]
    assert rows["w"]["stats"]["max"] == 10.0 and rows["w"]["stats"]["nan"] == 0
    assert rows["step"]["value"] == 7


def test_inspect_one_tensor_and_a_missing_one(mem_run, capsys):
    rc, out, _ = _run(capsys, "inspect", "--tensor", "w", f"{RUN}/model.ckpt-1")
    assert rc == 0
    assert out.splitlines()[2:4] == ["    [[0. 1. 2.]", "     [3. 4. 5.]]"]
    rc, out, err = _run(capsys, "inspect", "--tensor", "nope", RUN)
    assert rc == 1 and out == "" and "no such tensor" in err


# -- verify ---------------------------------------------------------------------------
def test_verify_ok(mem_run, capsys):
    rc, out, _ = _run(capsys, "verify", f"{RUN}/model.ckpt-1")
    assert (rc, out) == (0, f"{RUN}/model.ckpt-1: OK, 3 tensor(s) verified\n")
    rc, out, _ = _run(capsys, "verify", RUN)
    assert rc == 0
    assert out.splitlines() == [
        f"{RUN}/model.ckpt-1: OK, 3 tensor(s) verified",
        f"{RUN}/model.ckpt-2: OK, 3 tensor(s) verified",
        f"{RUN}: OK, 2 checkpoint(s) verified",
    ]


def test_verify_damaged_tensor(mem_run, capsys):
    _damage(mem_run, f"{RUN}/model.ckpt-1", "w")
    rc, out, _ = _run(capsys, "verify", f"{RUN}/model.ckpt-1")
    assert rc == 1
    lines = out.splitlines()
    assert lines[0].startswith(f"DAMAGED  {RUN}/model.ckpt-1.data-00000-of-00001: tensor 'w': checksum does not match")
    assert lines[-1] == f"{RUN}/model.ckpt-1: 1 problem(s) found"

    rc, out, _ = _run(capsys, "verify", "--json", RUN)
    assert rc == 1
    document = json.loads(out)
    assert document["directory"] == RUN and not document["ok"] and document["problems"] == []
    verdicts = {row["prefix"]: row for row in document["checkpoints"]}
    assert not verdicts[f"{RUN}/model.ckpt-1"]["ok"] and len(verdicts[f"{RUN}/model.ckpt-1"]["problems"]) == 1
    assert verdicts[f"{RUN}/model.ckpt-2"]["ok"] and verdicts[f"{RUN}/model.ckpt-2"]["listed"]

    rc, out, _ = _run(capsys, "verify", RUN)
    assert out.splitlines()[-1] == f"{RUN}: 1 of 2 checkpoint(s) with problems"


def test_verify_missing_checkpoint(mem_store, capsys):
    rc, out, err = _run(capsys, "verify", "mem://run/model.ckpt-5")
    assert rc == 1 and out == "" and "no checkpoint found" in err


# -- diff -----------------------------------------------------------------------------
def test_diff_url_against_local(mem_run, tmp_path, capsys):
    local = {**_tree(), "extra": np.zeros(2, np.float32)}
    local["w"] = local["w"] + np.float32(0.5)
    ckptlib.save(local, str(tmp_path / "local"))
    ckptlib.save(_tree(), f"{RUN}/plain")
    rc, out, _ = _run(capsys, "diff", f"{RUN}/plain", str(tmp_path / "local"))
    assert rc == 0
    lines = out.splitlines()
    assert "+ extra  (only in B)" in lines
    assert "! w  values differ  max |a-b| = 0.5" in lines
    assert lines[-1].startswith("2 equal, 1 different, 0 changed dtype/shape, 0 only in A, 1 only in B")

    rc, out, _ = _run(capsys, "diff", "--json", str(tmp_path / "local"), f"{RUN}/plain")
    document = json.loads(out)
    assert document["only_in_a"] == ["extra"] and document["different"] == [{"name": "w", "max_abs_diff": 0.5}]


# -- convert --------------------------------------------------------------------------
def test_convert_url_to_npz_and_back(mem_run, tmp_path, capsys):
    npz = str(tmp_path / "model.npz")
    rc, out, _ = _run(capsys, "convert", f"{RUN}/model.ckpt-2", npz)
    assert (rc, out) == (0, f"wrote 3 tensor(s) to {npz}\n")
    with np.load(npz) as archive:
        np.testing.assert_array_equal(archive["w"], _tree(2.0)["w"])

    rc, out, _ = _run(capsys, "convert", "--json", npz, f"{RUN}/back")
    assert rc == 0
    assert json.loads(out) == {
        "source": npz,
        "destination": f"{RUN}/back",
        "format": "checkpoint",
        "tensors": 3,
        "skipped": [],
    }
    assert mem_run.exists(f"{RUN}/back.index")
    rc, out, _ = _run(capsys, "diff", f"{RUN}/model.ckpt-2", f"{RUN}/back")
    assert out.splitlines()[-1].startswith("3 equal, 0 different")


def test_convert_refuses_array_files_on_urls(mem_run, capsys):
    rc, out, err = _run(capsys, "convert", f"{RUN}/model.ckpt-1", f"{RUN}/model.npz")
    assert rc == 2 and out == ""
    assert "must be local paths" in err and f"{RUN}/model.npz" in err
    assert not mem_run.exists(f"{RUN}/model.npz")


# -- repair ---------------------------------------------------------------------------
def test_repair(mem_run, capsys):
    leftover = temp_path(f"{RUN}/model.ckpt-3.index")
    mem_run.write_small(leftover, b"half written", sync=False)
    rc, out, err = _run(capsys, "repair", RUN)
    assert (rc, out, err) == (0, f"{RUN}: repaired\n", "")
    assert not mem_run.exists(leftover)
    assert ckptlib.checkpoint_exists(f"{RUN}/model.ckpt-2")
    rc, out, _ = _run(capsys, "repair", "--json", RUN)
    assert rc == 0 and json.loads(out) == {"directory": RUN, "repaired": True}


def test_repair_waits_for_a_running_save_unless_told_none_runs(mem_run, capsys):
    leftover = temp_path(f"{RUN}/model.ckpt-3.index")
    mem_run.write_small(leftover, b"half written", sync=False)
    with mem_run.saving(RUN, None):  # a save is running in the directory
        rc, out, err = _run(capsys, "repair", RUN)
        assert rc == 1 and out == "" and "a save is running there" in err
        assert mem_run.exists(leftover)
        rc, out, err = _run(capsys, "repair", "--assume-idle", RUN)
    assert (rc, out, err) == (0, f"{RUN}: repaired\n", "")
    assert not mem_run.exists(leftover)


def test_s3_repair_needs_assume_idle(s3_bucket, capsys):
    from ckptlib.store import store_for

    run = f"{s3_bucket}/run"
    ckptlib.Saver().save(_tree(), f"{run}/model.ckpt", global_step=1)
    orphan = f"{run}/model.ckpt-2.data-00000-of-00001"  # what a save killed before its index leaves
    store_for(run).write_small(orphan, b"x" * 10, sync=False)
    rc, _, err = _run(capsys, "repair", run)
    assert rc == 1 and "--assume-idle" in err and store_for(run).exists(orphan)
    rc, out, _ = _run(capsys, "repair", "--assume-idle", run)
    assert out == f"{run}: repaired\n"
    assert rc == 0 and not store_for(run).exists(orphan)
    assert ckptlib.checkpoint_exists(f"{run}/model.ckpt-1")


def test_repair_missing_directory(mem_store, capsys):
    rc, out, err = _run(capsys, "repair", "mem://nothing")
    assert rc == 1 and out == "" and "no such directory" in err


# -- S3 -------------------------------------------------------------------------------
def test_s3_ls_inspect_verify(s3_bucket, capsys):
    run = f"{s3_bucket}/run"
    prefix = ckptlib.Saver().save(_tree(), f"{run}/model.ckpt", global_step=1)
    assert prefix == f"{run}/model.ckpt-1"

    rc, out, err = _run(capsys, "ls", run)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[1].startswith("*        1  ") and lines[1].endswith("complete             model.ckpt-1")
    assert lines[-1] == f"1 checkpoint(s); * = latest ({prefix})"

    rc, out, err = _run(capsys, "inspect", "--json", run)
    assert rc == 0, err
    document = json.loads(out)
    assert document["prefix"] == prefix and document["total_bytes"] == 56
    assert sorted(row["name"] for row in document["tensors"]) == ["b", "step", "w"]

    rc, out, err = _run(capsys, "verify", run)
    assert rc == 0, err
    assert out.splitlines() == [f"{prefix}: OK, 3 tensor(s) verified", f"{run}: OK, 1 checkpoint(s) verified"]
    rc, out, err = _run(capsys, "verify", prefix)
    assert (rc, out) == (0, f"{prefix}: OK, 3 tensor(s) verified\n"), err
