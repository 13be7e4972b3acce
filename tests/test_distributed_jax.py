"""Coordinated saves from a real JAX multi-process job (``jax.distributed`` on 127.0.0.1, CPU,
2 processes, see ``distributed_jax_worker.py``) through ``JaxCoordinator``, each run
bounded in time; the checkpoints are read back here by a plain single-process restore."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from distributed_launch import ROOT, explain, run_ranks

import ckptlib
from ckptlib.errors import CoordinationError
from ckptlib.format.filenames import index_filename

pytest.importorskip("jax", reason="the JAX coordinator tests need jax")

WORKER = Path(__file__).with_name("distributed_jax_worker.py")
ROWS_PER_RANK, COLS = 8, 6  # as in distributed_jax_worker.py


def _run(scenario: str, directory: Path, *args: str, timeout: float = 120) -> list:
    return run_ranks(scenario, 2, directory, *args, timeout=timeout, worker=WORKER)


def _data_files(directory: Path, name: str) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(name + ".data-"))


def test_data_parallel_state_of_two_jax_processes_restores_in_one(tmp_path: Path) -> None:
    directory = tmp_path / "run"
    results = _run("data_parallel", directory)
    assert all(r.ok for r in results), explain(results)
    values = [r.value for r in results]
    latest = values[0]["latest"]
    assert latest.endswith("model.ckpt-3") and values[1]["latest"] == latest
    # max_to_keep=2 rotated once, on rank 0; each kept checkpoint is one bundle from both ranks
    assert sorted(p.name for p in directory.glob("*.index")) == ["model.ckpt-2.index", "model.ckpt-3.index"]
    assert _data_files(directory, "model.ckpt-3") == [f"model.ckpt-3.data-0000{i}-of-00002" for i in range(2)]
    tree = ckptlib.restore(latest)
    assert tree["step"] == 3
    total = sum(float(np.asarray(v, dtype=np.float64).sum()) for v in tree["params"].values())
    assert total == pytest.approx(values[0]["digest"], rel=1e-6)
    assert values[1]["digest"] == values[0]["digest"]  # the replicas were equal
    np.testing.assert_array_equal(tree["table"], np.arange(12.0).reshape(4, 3))  # a global replicated jax array
    for rank, value in enumerate(values):  # each process's own array
        np.testing.assert_array_equal(tree[f"own{rank}"], value["own"])


def test_rows_sliced_across_jax_processes_restore_whole(tmp_path: Path) -> None:
    directory = tmp_path / "run"
    results = _run("sharded", directory)
    assert all(r.ok for r in results), explain(results)
    latest = results[0].value["latest"]
    assert latest.endswith("ckpt-2") and results[1].value["latest"] == latest
    tree = ckptlib.restore(latest)
    rows = 2 * ROWS_PER_RANK
    full = (np.arange(rows)[:, None] * 100 + np.arange(COLS)[None, :]).astype(np.float32) + 2
    np.testing.assert_array_equal(tree["W"], full)
    np.testing.assert_array_equal(tree["bias"], np.arange(COLS, dtype=np.float32) * 2)
    assert tree["step"] == 2


@pytest.mark.parametrize("how", ["raise", "stall", "kill"])
def test_a_jax_process_that_fails_fails_the_save_everywhere_in_bounded_time(
    tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "run"
    monkeypatch.setenv("COORD_TIMEOUT_S", "5")
    results = _run("failing", directory, how)
    survivors = results[:1] if how == "kill" else results
    if how == "kill":
        assert results[1].returncode != 0
    for r in survivors:
        assert r.ok, explain(results)
        value = r.value
        assert value["latest"].endswith("model.ckpt-1"), value
        if how == "raise" and r.rank == 1:
            assert value["error"] == "InvalidTensorError", value
        else:
            assert value["error"] == "CoordinationError", value
            if how == "raise":
                assert "rank 1: InvalidTensorError" in value["message"]
        assert value["seconds"] < 30  # the timeout is 5 s; a stalled rank waits one more round
    assert not os.path.exists(index_filename(str(directory / "model.ckpt-2")))
    assert ckptlib.latest_checkpoint(str(directory)).endswith("model.ckpt-1")
    with ckptlib.load_checkpoint(str(directory)) as reader:
        assert reader.verify() == []
    if how != "kill":  # every live process took its own file of the failed save away
        assert _data_files(directory, "model.ckpt-2") == []


def test_importing_ckptlib_distributed_does_not_import_jax() -> None:
    code = "import sys, ckptlib.distributed as d; d.JaxCoordinator; print('jax' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(ROOT),
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=True,
    )
    assert out.stdout.strip() == "False"


def test_without_jax_distributed_the_coordinator_refuses() -> None:
    import jax

    if jax.distributed.is_initialized():
        pytest.skip("this process is part of a JAX job")
    from ckptlib.distributed import JaxCoordinator

    with pytest.raises(CoordinationError, match=r"jax\.distributed\.initialize"):
        JaxCoordinator()
