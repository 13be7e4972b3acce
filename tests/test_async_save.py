"""Asynchronous saves: ``save()`` returns once the state is copied; the background writes and
commits in order; errors surface at the next ``save()`` or ``wait()``; exit finishes them."""

from __future__ import annotations

import errno
import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ckptlib
from ckptlib.store import register
from ckptlib.tree import STRUCTURE_KEY

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
from conftest import FaultyStore  # noqa: E402


class GatedStore(FaultyStore):
    """A memory store whose data writes wait at a gate: a save can be held mid-write."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.writing = threading.Event()

    def check(self, operation: str, path: str) -> None:
        if operation == "write_at" and ".data-" in path:
            self.writing.set()
            assert self.gate.wait(timeout=60), "the gate was never opened"
        super().check(operation, path)


@pytest.fixture
def gated():
    store = GatedStore()
    register("gated", store)
    yield store
    store.gate.set()
    register("gated", None)


def _state(value: float) -> dict[str, Any]:
    return {"w": np.full((256, 256), value, np.float32), "b": np.arange(10, dtype=np.int64) + int(value), "n": 3}


def _values(prefix: str) -> dict[str, Any]:
    return ckptlib.restore(prefix)


def _in_thread(fn: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as e:
            out.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


# -- the snapshot -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["saver", "manager", "save_async"])
def test_changes_after_save_returns_never_reach_the_file(tmp_path: Path, gated: GatedStore, kind: str) -> None:
    state = _state(1.0)
    view = state["w"][10:20]  # a view the loop writes through
    gated.gate.clear()  # hold the write until the state has changed everywhere
    if kind == "saver":
        saver = ckptlib.Saver(async_save=True)
        prefix = saver.save(state, "gated://run/model.ckpt", global_step=1)
    elif kind == "manager":
        manager = ckptlib.CheckpointManager("gated://run", max_to_keep=2, async_save=True)
        prefix = manager.save(state)
    else:
        future = ckptlib.save_async(state, "gated://run/model.ckpt-1")
        prefix = "gated://run/model.ckpt-1"
    state["w"] += 5.0  # in place, as an optimizer step
    view[:] = -1.0
    state["b"][0] = 99
    state["n"] = 4
    gated.gate.set()
    if kind == "saver":
        saver.wait()
    elif kind == "manager":
        manager.wait()
    else:
        assert future.result(timeout=60) == prefix
    if kind != "manager":
        back = _values(prefix)
        np.testing.assert_array_equal(back["w"], np.full((256, 256), 1.0, np.float32))
        np.testing.assert_array_equal(back["b"], np.arange(10) + 1)
        assert back["n"] == 3
    else:
        restored = _state(0.0)
        ckptlib.restore(prefix, into=restored)
        np.testing.assert_array_equal(restored["w"], np.full((256, 256), 1.0, np.float32))
        np.testing.assert_array_equal(restored["b"], np.arange(10) + 1)


def test_torch_tensors_changed_in_place_after_save_are_not_saved(tmp_path: Path, gated: GatedStore) -> None:
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(32, 8)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    saver = ckptlib.Saver(async_save=True)
    gated.gate.clear()
    prefix = saver.save(
        {"model": model.state_dict(), "bf16": torch.ones(4, dtype=torch.bfloat16)},
        "gated://t/model.ckpt",
        global_step=0,
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    gated.gate.set()
    saver.wait()
    back = ckptlib.restore(prefix)
    for name, value in before.items():
        np.testing.assert_array_equal(back["model"][name], value.numpy())
    assert back["bf16"].dtype.name == "bfloat16"


def test_snapshot_buffers_are_reused_from_save_to_save(tmp_path: Path) -> None:
    state = {f"t{i}": np.random.default_rng(i).standard_normal(1 << 18).astype(np.float32) for i in range(8)}
    size = sum(a.nbytes for a in state.values())  # 8 MiB
    saver = ckptlib.Saver(max_to_keep=2, async_save=True, sync=False)
    saver.save(state, str(tmp_path / "model.ckpt"), global_step=0)
    saver.wait()
    tracemalloc.start()
    try:
        for step in range(1, 4):
            tracemalloc.reset_peak()
            saver.save(state, str(tmp_path / "model.ckpt"), global_step=step)
            saver.wait()
            _, peak = tracemalloc.get_traced_memory()
            assert peak < size / 4, f"save {step} allocated {peak} bytes for a {size}-byte state"
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(ckptlib.restore(str(tmp_path / "model.ckpt-3"))["t5"], state["t5"])


def test_background_saves_leave_the_process_settings_alone(tmp_path: Path, gated: GatedStore) -> None:
    interval = sys.getswitchinterval()
    assert gc.isenabled()
    saver = ckptlib.Saver(async_save=True)
    gated.gate.clear()
    saver.save(_state(1.0), "gated://s/model.ckpt", global_step=1)
    assert gated.writing.wait(10)
    assert gc.isenabled() and sys.getswitchinterval() == interval  # mid-write
    gated.gate.set()
    saver.wait()
    assert gc.isenabled() and sys.getswitchinterval() == interval


def test_a_snapshot_too_large_for_the_cap_is_written_synchronously(tmp_path: Path, caplog: Any) -> None:
    state = _state(2.0)
    saver = ckptlib.Saver(async_save=True, max_snapshot_bytes=1024)
    prefix = saver.save(state, str(tmp_path / "model.ckpt"), global_step=1)
    assert "synchronously" in caplog.text
    assert ckptlib.latest_checkpoint(str(tmp_path)) == prefix  # already committed
    state["w"] += 1
    np.testing.assert_array_equal(_values(prefix)["w"], np.full((256, 256), 2.0, np.float32))


def test_the_snapshot_cap_holds_back_a_second_pending_save(gated: GatedStore) -> None:
    nbytes = 256 * 256 * 4 + 10 * 8
    saver = ckptlib.Saver(async_save=True, max_pending_saves=4, max_snapshot_bytes=int(nbytes * 1.5))
    gated.gate.clear()
    saver.save(_state(1.0), "gated://c/model.ckpt", global_step=1)
    second, out = _in_thread(lambda: saver.save(_state(2.0), "gated://c/model.ckpt", global_step=2))
    second.join(0.5)
    assert second.is_alive(), "a second snapshot passed the memory cap"
    gated.gate.set()
    second.join(30)
    saver.wait()
    assert out == ["gated://c/model.ckpt-2"]
    assert ckptlib.latest_checkpoint("gated://c") == "gated://c/model.ckpt-2"


# -- order, one in flight, visibility ---------------------------------------------


def test_a_second_save_waits_until_the_first_is_committed(gated: GatedStore) -> None:
    saver = ckptlib.Saver(async_save=True)
    gated.gate.clear()
    first = saver.save(_state(1.0), "gated://o/model.ckpt", global_step=1)
    assert gated.writing.wait(10)
    assert ckptlib.latest_checkpoint("gated://o") is None  # never a checkpoint still being written
    second, out = _in_thread(lambda: saver.save(_state(2.0), "gated://o/model.ckpt", global_step=2))
    second.join(0.5)
    assert second.is_alive(), "the second save did not wait for the first"
    gated.gate.set()
    second.join(30)
    assert out == ["gated://o/model.ckpt-2"]
    assert ckptlib.latest_checkpoint("gated://o") == first  # committed before the second snapshot
    saver.wait()
    assert ckptlib.latest_checkpoint("gated://o") == "gated://o/model.ckpt-2"


def test_queued_saves_commit_in_the_order_they_were_made(gated: GatedStore) -> None:
    manager = ckptlib.CheckpointManager("gated://q", max_to_keep=None, async_save=True, max_pending_saves=5)
    gated.gate.clear()
    prefixes = [manager.save(_state(float(i))) for i in range(5)]
    assert manager.checkpoints == [] and manager.latest_checkpoint is None
    gated.gate.set()
    manager.wait()
    assert manager.checkpoints == prefixes
    assert ckptlib.get_checkpoint_state("gated://q").all_model_checkpoint_paths == tuple(prefixes)
    # each one holds its own state
    for i, prefix in enumerate(prefixes):
        restored = _state(-1.0)
        ckptlib.restore(prefix, into=restored)
        assert restored["w"][0, 0] == float(i)


def test_a_reader_polling_the_directory_never_sees_an_unfinished_checkpoint(tmp_path: Path) -> None:
    directory = str(tmp_path / "run")
    stop = threading.Event()
    seen: list[str] = []
    problems: list[Any] = []

    def poll() -> None:
        while not stop.is_set():
            latest = ckptlib.latest_checkpoint(directory)
            if latest is not None:
                try:
                    with ckptlib.load_checkpoint(latest) as reader:
                        problems.extend(reader.verify())
                except ckptlib.CheckpointNotFoundError:
                    pass  # rotated away between the two calls
                seen.append(latest)

    reader = threading.Thread(target=poll, daemon=True)
    reader.start()
    state = {"w": np.zeros((512, 512), np.float32)}
    saver = ckptlib.Saver(max_to_keep=2, async_save=True)
    for step in range(12):
        state["w"][:] = step
        saver.save(state, directory + "/model.ckpt", global_step=step)
    saver.wait()
    stop.set()
    reader.join(30)
    assert problems == []
    assert seen, "the reader never saw a checkpoint"
    assert ckptlib.latest_checkpoint(directory).endswith("-11")


# -- errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [OSError(errno.ENOSPC, "No space left on device"), PermissionError(errno.EACCES, "Permission denied")],
    ids=["disk-full", "permission"],
)
def test_a_background_error_surfaces_at_wait_and_keeps_the_previous_latest(mem_store: FaultyStore, error: Any) -> None:
    saver = ckptlib.Saver(max_to_keep=2, async_save=True)
    good = saver.save(_state(1.0), "mem://e/model.ckpt", global_step=1)
    saver.wait()
    mem_store.fail("write_at", error=error)
    saver.save(_state(2.0), "mem://e/model.ckpt", global_step=2)  # returns: the failure is ahead
    with pytest.raises(OSError) as raised:
        saver.wait()
    assert raised.value.errno == error.errno
    assert ckptlib.latest_checkpoint("mem://e") == good
    assert _values(good)["w"][0, 0] == 1.0
    saver.wait()  # raised once, then forgotten
    mem_store.faults.clear()
    assert saver.save(_state(3.0), "mem://e/model.ckpt", global_step=3).endswith("-3")
    saver.wait()
    assert ckptlib.latest_checkpoint("mem://e") == "mem://e/model.ckpt-3"


def test_a_background_error_surfaces_at_the_next_save_which_saves_nothing(mem_store: FaultyStore) -> None:
    manager = ckptlib.CheckpointManager("mem://n", max_to_keep=3, async_save=True)
    mem_store.fail("finish", error=OSError(errno.ENOSPC, "No space left on device"))
    manager.save(_state(1.0))
    deadline = time.monotonic() + 30
    while manager._background is not None and manager._background.pending and time.monotonic() < deadline:
        time.sleep(0.01)
    mem_store.faults.clear()
    with pytest.raises(OSError, match="No space left"):
        manager.save(_state(2.0))
    manager.wait()
    assert manager.latest_checkpoint is None and manager.checkpoints == []
    # the failed save keeps its number; the one that raised took none
    assert manager.save(_state(3.0)) == "mem://n/ckpt-2"
    manager.wait()
    assert manager.checkpoints == ["mem://n/ckpt-2"]


def test_save_async_future_carries_its_own_error(mem_store: FaultyStore) -> None:
    mem_store.fail("create", error=OSError(errno.EIO, "injected"))
    future = ckptlib.save_async(_state(1.0), "mem://f/model.ckpt")
    with pytest.raises(OSError, match="injected"):
        future.result(timeout=30)
    mem_store.faults.clear()
    assert ckptlib.save_async(_state(1.0), "mem://f/model.ckpt").result(timeout=30) == "mem://f/model.ckpt"


def test_bad_values_raise_in_save_before_anything_is_queued(tmp_path: Path) -> None:
    saver = ckptlib.Saver(async_save=True)
    with pytest.raises(ckptlib.InvalidTensorError):
        saver.save({"x": object()}, str(tmp_path / "model.ckpt"), global_step=1)
    saver.wait()
    assert ckptlib.latest_checkpoint(str(tmp_path)) is None
    with pytest.raises(ckptlib.InvalidTensorError):
        ckptlib.save_async({"x": object()}, str(tmp_path / "other"))


def test_an_interrupt_while_waiting_for_a_slot_leaves_the_queue_working(gated: GatedStore) -> None:
    saver = ckptlib.Saver(async_save=True)
    gated.gate.clear()
    saver.save(_state(1.0), "gated://i/model.ckpt", global_step=1)
    threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        saver.save(_state(2.0), "gated://i/model.ckpt", global_step=2)  # waits for a slot
    gated.gate.set()
    saver.wait()
    assert ckptlib.latest_checkpoint("gated://i") == "gated://i/model.ckpt-1"


def test_async_saves_on_s3(s3_bucket: str) -> None:
    directory = f"{s3_bucket}/run"
    manager = ckptlib.CheckpointManager(directory, max_to_keep=2, async_save=True)
    state = _state(0.0)
    for step in range(4):
        state["w"][:] = step
        manager.save(state)
    manager.wait()
    assert manager.checkpoints == [f"{directory}/ckpt-3", f"{directory}/ckpt-4"]
    restored = _state(-1.0)
    ckptlib.restore(ckptlib.latest_checkpoint(directory), into=restored)
    assert restored["w"][0, 0] == 3.0


# -- interpreter exit and Ctrl-C -------------------------------------------------------

# Data writes sleep first, so that the save is surely pending when the script ends.
_CHILD_PRELUDE = """
import os, sys, time, numpy as np, ckptlib
from ckptlib.store.local import LocalStore
_create = LocalStore.create
def _slow_create(self, final_path, size=None, *, sync=True):
    new = _create(self, final_path, size, sync=sync)
    if ".data-" in final_path:
        write_at = new.write_at
        def slow(*args):
            time.sleep(float(os.environ.get("SLOW_S", "0.5")))
            return write_at(*args)
        new.write_at = slow
    return new
LocalStore.create = _slow_create
directory = sys.argv[1]
saver = ckptlib.Saver(max_to_keep=2, async_save=True)
state = {"w": np.zeros((256, 1024), np.float32)}
saver.save(state, directory + "/model.ckpt", global_step=1)
saver.wait()
state["w"][:] = 2
saver.save(state, directory + "/model.ckpt", global_step=2)
state["w"][:] = 3
"""


def _run_child(body: str, directory: Path, *, interrupt_on: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    script = _CHILD_PRELUDE + textwrap.dedent(body)
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(directory)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    if interrupt_on is not None:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert interrupt_on in line, line + proc.stderr.read()  # type: ignore[union-attr]
        proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _assert_latest_is_step_2(directory: Path) -> None:
    latest = ckptlib.latest_checkpoint(str(directory))
    assert latest is not None and latest.endswith("model.ckpt-2"), latest
    with ckptlib.load_checkpoint(latest) as reader:
        assert reader.verify() == []
        np.testing.assert_array_equal(reader.get_tensor("w"), np.full((256, 1024), 2, np.float32))


def test_exit_without_wait_finishes_the_pending_save(tmp_path: Path) -> None:
    result = _run_child("print('done', saver._background.pending)\n", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "done 1" in result.stdout  # it was still pending when the script ended
    assert "finishing 1 pending asynchronous checkpoint save(s) before exit" in result.stderr
    _assert_latest_is_step_2(tmp_path)


def test_ctrl_c_in_the_loop_still_finishes_the_pending_save(tmp_path: Path) -> None:
    body = """
    print('training', flush=True)
    while True:
        time.sleep(0.01)  # the training loop, interrupted here
    """
    result = _run_child(body, tmp_path, interrupt_on="training")
    assert result.returncode != 0 and "KeyboardInterrupt" in result.stderr
    assert "finishing 1 pending" in result.stderr
    _assert_latest_is_step_2(tmp_path)


def test_ctrl_c_during_wait_still_finishes_the_pending_save(tmp_path: Path) -> None:
    body = """
    import signal, threading
    try:
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
        saver.wait()
    except KeyboardInterrupt:
        print('interrupted with', saver._background.pending, 'pending', flush=True)
        raise
    """
    result = _run_child(body, tmp_path)
    assert "interrupted with 1 pending" in result.stdout, result.stdout + result.stderr
    assert "finishing 1 pending" in result.stderr
    _assert_latest_is_step_2(tmp_path)


def test_structure_record_and_types_come_back_from_async_saves(tmp_path: Path) -> None:
    state = {"params": {"w": np.ones(3)}, "betas": (0.9, 0.99), "step": 7, "name": "run", "none": None}
    future = ckptlib.save_async(state, str(tmp_path / "model.ckpt-7"))
    prefix = future.result(timeout=30)
    back = ckptlib.restore(prefix)
    assert back["betas"] == (0.9, 0.99) and back["step"] == 7 and back["name"] == "run" and back["none"] is None
    assert STRUCTURE_KEY in dict(ckptlib.list_variables(prefix))


# -- found in review ----------------------------------------------------------------------


def test_a_child_forked_during_a_pending_save_exits_at_once(gated: GatedStore) -> None:
    import multiprocessing

    saver = ckptlib.Saver(async_save=True)
    gated.gate.clear()
    saver.save(_state(1.0), "gated://k/model.ckpt", global_step=1)
    assert gated.writing.wait(10)
    child = multiprocessing.get_context("fork").Process(target=int)
    child.start()
    child.join(20)
    alive = child.is_alive()
    if alive:
        child.kill()
    gated.gate.set()
    saver.wait()
    assert not alive, "the forked child waited for its parent's pending save at exit"
    assert child.exitcode == 0


def test_a_failed_save_nobody_waits_for_is_logged(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    script = textwrap.dedent(
        f"""
        import time, numpy as np, ckptlib
        saver = ckptlib.Saver(async_save=True)
        saver.save({{"w": np.ones(3)}}, {str(blocker / "model.ckpt")!r}, global_step=1)
        time.sleep(1)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert "the asynchronous save of" in result.stderr and "failed" in result.stderr, result.stderr


def test_a_failed_synchronous_fallback_gives_its_buffers_back_once(mem_store: FaultyStore) -> None:
    saver = ckptlib.Saver(async_save=True, max_snapshot_bytes=1024)
    mem_store.fail("create", error=OSError(errno.EIO, "injected"))
    with pytest.raises(OSError, match="injected"):
        saver.save(_state(1.0), "mem://w/model.ckpt", global_step=1)
    assert saver._background is not None and saver._background._arenas._in_use == 0


def test_a_large_state_copied_on_several_threads_is_copied_exactly(gated: GatedStore) -> None:
    import ml_dtypes

    rng = np.random.default_rng(3)
    state = {
        "a": rng.standard_normal(5_000_003).astype(np.float32),  # 20 MB, not a multiple of a piece
        "b": rng.integers(0, 2**62, (1_234, 2_049), dtype=np.int64),  # 20 MB, 2-d
        "c": rng.standard_normal(3_000_001).astype(ml_dtypes.bfloat16),
        "d": np.arange(7, dtype=np.uint8),
        "e": np.float64(2.5),
    }
    want = {k: np.array(v, copy=True) for k, v in state.items()}
    saver = ckptlib.Saver(async_save=True)
    gated.gate.clear()
    prefix = saver.save(state, "gated://big/model.ckpt", global_step=1)
    for value in state.values():
        if isinstance(value, np.ndarray):
            value.fill(0)
    gated.gate.set()
    saver.wait()
    back = ckptlib.restore(prefix)
    for name, value in want.items():
        np.testing.assert_array_equal(back[name], value)
        assert back[name].dtype == value.dtype
