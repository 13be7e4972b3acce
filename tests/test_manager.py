"""``ckptlib.CheckpointManager`` (the ``tf.train.CheckpointManager`` shape). No TensorFlow
needed: ``test_scenarios_tf.py`` runs the same sequences against TensorFlow's manager.

Deliberate differences exercised here: numbering continues after a restart (TensorFlow's
restarts at 1 unless its save counter was restored), values come from the ``state`` passed to
``save``, ``latest_checkpoint`` is None once the newest checkpoint's files are gone, and entries
of other savers in the directory are kept in the state file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import ckptlib
import ckptlib.manager
from ckptlib.state import read_state_file


def files(directory: Path | str) -> list[str]:
    return sorted(name for name in os.listdir(directory) if not name.startswith("."))


def ckpt_files(*prefixes: str, shards: int = 1) -> list[str]:
    out = []
    for p in prefixes:
        out.append(f"{p}.index")
        out += [f"{p}.data-{i:05d}-of-{shards:05d}" for i in range(shards)]
    return out


def on_disk(directory: Path | str, name: str = "ckpt") -> list[int]:
    """Checkpoint numbers with an index file, ascending."""
    out = []
    for f in os.listdir(directory):
        if f.startswith(name + "-") and f.endswith(".index"):
            out.append(int(f[len(name) + 1 : -len(".index")]))
    return sorted(out)


def listed(directory: Path | str) -> list[str]:
    st = ckptlib.get_checkpoint_state(directory)
    assert st is not None
    return [os.path.basename(p) for p in st.all_model_checkpoint_paths]


def state(n: int) -> dict:
    return {"v": np.full(3, n, np.float32), "step": np.int64(n)}


class Clock:
    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(ckptlib.manager.time, "time", c)
    return c


# ---------------------------------------------------------------------------------------------
# numbering, max_to_keep, properties
# ---------------------------------------------------------------------------------------------


def test_numbering_and_max_to_keep(tmp_path: Path) -> None:
    manager = ckptlib.CheckpointManager(tmp_path, max_to_keep=2)
    assert manager.directory == str(tmp_path)
    assert manager.latest_checkpoint is None and manager.checkpoints == []
    for n in range(1, 5):
        assert manager.save(state(n)) == str(tmp_path / f"ckpt-{n}")
    assert manager.checkpoints == [str(tmp_path / "ckpt-3"), str(tmp_path / "ckpt-4")]
    assert manager.latest_checkpoint == str(tmp_path / "ckpt-4")
    assert files(tmp_path) == sorted(["checkpoint", *ckpt_files("ckpt-3", "ckpt-4")])
    raw = read_state_file(str(tmp_path / "checkpoint"))
    assert raw is not None
    assert raw.model_checkpoint_path == "ckpt-4"
    assert list(raw.all_model_checkpoint_paths) == ["ckpt-3", "ckpt-4"]  # relative, like TF's manager
    assert len(raw.all_model_checkpoint_timestamps) == 2
    assert raw.last_preserved_timestamp > 0
    assert ckptlib.latest_checkpoint(tmp_path) == str(tmp_path / "ckpt-4")
    assert ckptlib.restore(manager.latest_checkpoint)["step"] == 4


def test_checkpoint_number_and_counter(tmp_path: Path) -> None:
    """Like TF: the counter is incremented even when ``checkpoint_number`` is given."""
    manager = ckptlib.CheckpointManager(tmp_path, max_to_keep=None)
    assert manager.save(state(1)) == str(tmp_path / "ckpt-1")
    assert manager.save(state(2), checkpoint_number=100) == str(tmp_path / "ckpt-100")
    assert manager.save(state(3)) == str(tmp_path / "ckpt-3")
    assert manager.save(state(4), checkpoint_number=np.int64(7)) == str(tmp_path / "ckpt-7")
    assert on_disk(tmp_path) == [1, 3, 7, 100]
    assert listed(tmp_path) == ["ckpt-1", "ckpt-100", "ckpt-3", "ckpt-7"]
    assert manager.latest_checkpoint == str(tmp_path / "ckpt-7")


def test_resaving_a_number_moves_it_to_the_end(tmp_path: Path) -> None:
    manager = ckptlib.CheckpointManager(tmp_path, max_to_keep=3)
    for n in (1, 2, 3):
        manager.save(state(n), checkpoint_number=n)
    manager.save(state(20), checkpoint_number=2)
    assert listed(tmp_path) == ["ckpt-1", "ckpt-3", "ckpt-2"]
    manager.save(state(4), checkpoint_number=4)
    assert on_disk(tmp_path) == [2, 3, 4]
    assert ckptlib.restore(tmp_path / "ckpt-2")["step"] == 20


def test_max_to_keep_none_keeps_everything(tmp_path: Path) -> None:
    manager = ckptlib.CheckpointManager(tmp_path, max_to_keep=None)
    for n in range(6):
        manager.save(state(n))
    assert on_disk(tmp_path) == [1, 2, 3, 4, 5, 6]
    assert listed(tmp_path) == [f"ckpt-{n}" for n in range(1, 7)]
    assert len(manager.checkpoints) == 6


@pytest.mark.parametrize("bad", [0, -1])
def test_max_to_keep_must_be_positive(tmp_path: Path, bad: int) -> None:
    with pytest.raises(ValueError, match="positive integer or `None`"):
        ckptlib.CheckpointManager(tmp_path, max_to_keep=bad)


def test_interval_needs_a_step_counter(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="step_counter"):
        ckptlib.CheckpointManager(tmp_path, max_to_keep=1, checkpoint_interval=5)


@pytest.mark.parametrize("name", ["", "a/b", "../up", "/abs"])
def test_checkpoint_name_must_be_a_plain_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError):
        ckptlib.CheckpointManager(tmp_path, max_to_keep=1, checkpoint_name=name)


def test_custom_checkpoint_name_and_shards(tmp_path: Path) -> None:
    manager = ckptlib.CheckpointManager(tmp_path, max_to_keep=1, checkpoint_name="model", num_shards=2)
    manager.save({"a": np.zeros(4), "b": np.ones(4)})
    manager.save({"a": np.zeros(4), "b": np.ones(4)})
    assert files(tmp_path) == sorted(["checkpoint", *ckpt_files("model-2", shards=2)])


def test_empty_state_saves_a_checkpoint_of_no_tensors(tmp_path: Path) -> None:
    """As ``save({})`` and ``tf.train.CheckpointManager`` do (see test_error_messages)."""
    manager = ckptlib.CheckpointManager(tmp_path, max_to_keep=1)
    prefix = manager.save({})
    assert prefix is not None and ckptlib.latest_checkpoint(tmp_path) == prefix
    assert ckptlib.restore(prefix) == {}


def test_latest_checkpoint_is_none_once_its_files_are_gone(tmp_path: Path) -> None:
    """Deliberate difference: TF's property returns the recorded path regardless."""
    manager = ckptlib.CheckpointManager(tmp_path, max_to_keep=3)
    manager.save(state(1))
    latest = manager.save(state(2))
    assert latest is not None
    os.remove(latest + ".index")
    assert manager.latest_checkpoint is None
    assert ckptlib.latest_checkpoint(tmp_path) == str(tmp_path / "ckpt-1")


# ---------------------------------------------------------------------------------------------
# keep_checkpoint_every_n_hours
# ---------------------------------------------------------------------------------------------


def test_keep_checkpoint_every_n_hours(tmp_path: Path, clock: Clock) -> None:
    t0 = clock.now
    manager = ckptlib.CheckpointManager(tmp_path, max_to_keep=2, keep_checkpoint_every_n_hours=1.0)
    for k in range(1, 9):
        clock.now = t0 + k * 1800
        manager.save(state(k))
    # TF's _sweep: last_preserved starts at t0 - 1; an evicted checkpoint is preserved iff
    # ts - 3600 >= last_preserved (which then becomes ts): 2 (t0+3600), 4 (t0+7200), 6 (t0+10800).
    assert on_disk(tmp_path) == [2, 4, 6, 7, 8]
    assert manager.checkpoints == [str(tmp_path / "ckpt-7"), str(tmp_path / "ckpt-8")]
    assert listed(tmp_path) == ["ckpt-7", "ckpt-8"]
    st = ckptlib.get_checkpoint_state(tmp_path)
    assert st is not None
    assert st.last_preserved_timestamp == t0 + 6 * 1800
    assert list(st.all_model_checkpoint_timestamps) == [t0 + 7 * 1800, t0 + 8 * 1800]

    # restart: the preserved ones stay unmanaged, the managed ones come back
    clock.now = t0 + 9 * 1800
    again = ckptlib.CheckpointManager(tmp_path, max_to_keep=2, keep_checkpoint_every_n_hours=1.0)
    assert again.checkpoints == manager.checkpoints
    again.save(state(9))  # 7 (t0+12600): 12600-3600 < 10800, deleted
    assert on_disk(tmp_path) == [2, 4, 6, 8, 9]


def test_clock_running_backwards_keeps_checkpoints(tmp_path: Path, clock: Clock) -> None:
    """TF clamps recovered timestamps to now, so nothing is deleted by a clock jump back."""
    t0 = clock.now
    manager = ckptlib.CheckpointManager(tmp_path, max_to_keep=3, keep_checkpoint_every_n_hours=1.0)
    for k in range(1, 4):
        clock.now = t0 + k * 100
        manager.save(state(k))
    clock.now = t0 - 10_000
    again = ckptlib.CheckpointManager(tmp_path, max_to_keep=3, keep_checkpoint_every_n_hours=1.0)
    # last_preserved (t0-1) is clamped to now; every timestamp min(ts, now) == now is not > now
    assert again.checkpoints == []
    again.save(state(4))
    assert on_disk(tmp_path) == [1, 2, 3, 4]


def test_state_file_keeps_save_order_when_the_clock_steps_back(tmp_path: Path, clock: Clock) -> None:
    """The managed checkpoints are listed in save order, as TF writes them, even after the
    clock stepped back."""
    manager = ckptlib.CheckpointManager(tmp_path, max_to_keep=3)
    for n, now in [(1, clock.now + 1000), (2, clock.now + 2000), (3, clock.now + 500)]:
        clock.now = now
        manager.save(state(n))
    assert manager.checkpoints == [str(tmp_path / f"ckpt-{n}") for n in (1, 2, 3)]
    assert listed(tmp_path) == ["ckpt-1", "ckpt-2", "ckpt-3"]


# ---------------------------------------------------------------------------------------------
# checkpoint_interval and step_counter
# ---------------------------------------------------------------------------------------------


def test_checkpoint_interval(tmp_path: Path) -> None:
    step = {"n": 0}
    manager = ckptlib.CheckpointManager(
        tmp_path, max_to_keep=None, step_counter=lambda: step["n"], checkpoint_interval=10
    )
    assert manager.checkpoint_interval == 10
    results = []
    for n, check in [(0, True), (5, True), (10, True), (10, True), (15, False), (15, False), (20, True), (25, True)]:
        step["n"] = n
        results.append(manager.save(state(n), check_interval=check))
    saved = [os.path.basename(r) if r else None for r in results]
    assert saved == ["ckpt-1", None, "ckpt-2", None, "ckpt-3", None, None, "ckpt-4"]
    assert on_disk(tmp_path) == [1, 2, 3, 4]


def test_step_counter_may_return_numpy(tmp_path: Path) -> None:
    step = {"n": np.int64(0)}
    manager = ckptlib.CheckpointManager(tmp_path, max_to_keep=2, step_counter=lambda: step["n"], checkpoint_interval=2)
    assert manager.save(state(0)) is not None
    step["n"] = np.int64(1)
    assert manager.save(state(1)) is None
    step["n"] = np.int64(2)
    assert manager.save(state(2)) is not None


def test_restore_or_initialize_records_the_step(tmp_path: Path) -> None:
    """TF's restore_or_initialize sets ``_last_checkpoint_step = step_counter()`` after a restore
    (checkpoint_management.py, ``restore_or_initialize``), so a save at the restored step returns
    None and the next one waits for the interval; so does ckptlib's: the first save after a
    resume writes no duplicate of the restored step."""
    step = {"n": 0}
    manager = ckptlib.CheckpointManager(tmp_path, max_to_keep=5, step_counter=lambda: step["n"], checkpoint_interval=5)
    manager.save(state(0))
    step["n"] = 5
    manager.save(state(5))

    resumed = ckptlib.CheckpointManager(tmp_path, max_to_keep=5, step_counter=lambda: step["n"], checkpoint_interval=5)
    target = state(-1)
    assert resumed.restore_or_initialize(into=target) == str(tmp_path / "ckpt-2")
    assert target["step"] == 5
    assert resumed.save(state(5)) is None, "saved again at the step just restored"
    step["n"] = 7
    assert resumed.save(state(7)) is None
    step["n"] = 10
    assert resumed.save(state(10)) == str(tmp_path / "ckpt-3")


# ---------------------------------------------------------------------------------------------
# restore_or_initialize and restore
# ---------------------------------------------------------------------------------------------


def test_restore_or_initialize_without_checkpoint_calls_init_fn(tmp_path: Path) -> None:
    calls = []
    manager = ckptlib.CheckpointManager(tmp_path, max_to_keep=3)
    target = state(0)
    v = target["v"]
    assert manager.restore_or_initialize(into=target, init_fn=lambda: calls.append("init")) is None
    assert calls == ["init"]
    assert target["v"] is v and not np.any(v)
    assert manager.restore_or_initialize() is None  # init_fn is optional
    with pytest.raises(FileNotFoundError):
        manager.restore(target)


def test_restore_or_initialize_with_checkpoint_restores_in_place(tmp_path: Path) -> None:
    ckptlib.CheckpointManager(tmp_path, max_to_keep=3).save(state(42))
    calls = []
    manager = ckptlib.CheckpointManager(tmp_path, max_to_keep=3)
    target = {"v": np.zeros(3, np.float32), "step": np.zeros((), np.int64)}
    v = target["v"]
    assert manager.restore_or_initialize(into=target, init_fn=lambda: calls.append("init")) == str(tmp_path / "ckpt-1")
    assert calls == []
    assert target["v"] is v
    np.testing.assert_array_equal(v, np.full(3, 42, np.float32))
    assert target["step"] == 42
    # without a target it only reports the path
    assert manager.restore_or_initialize() == str(tmp_path / "ckpt-1")


def test_restore_is_strict(tmp_path: Path) -> None:
    manager = ckptlib.CheckpointManager(tmp_path, max_to_keep=3)
    manager.save(state(1))
    with pytest.raises(ckptlib.ShapeMismatchError, match="v"):
        manager.restore({"v": np.zeros(4, np.float32), "step": np.zeros((), np.int64)})
    with pytest.raises(ckptlib.RestoreMismatchError, match="step"):
        manager.restore({"v": np.zeros(3, np.float32)})
    target = {"v": np.zeros(3, np.float32), "step": np.zeros((), np.int64)}
    manager.save(state(2))
    manager.restore(target, str(tmp_path / "ckpt-1"))
    assert target["step"] == 1


# ---------------------------------------------------------------------------------------------
# restart
# ---------------------------------------------------------------------------------------------


def test_recovery_after_restart(tmp_path: Path) -> None:
    first = ckptlib.CheckpointManager(tmp_path, max_to_keep=3)
    for n in range(1, 5):
        first.save(state(n))
    del first
    manager = ckptlib.CheckpointManager(tmp_path, max_to_keep=3)
    assert manager.checkpoints == [str(tmp_path / f"ckpt-{n}") for n in (2, 3, 4)]
    assert manager.latest_checkpoint == str(tmp_path / "ckpt-4")
    target = state(0)
    assert manager.restore_or_initialize(into=target) == str(tmp_path / "ckpt-4")
    assert target["step"] == 4
    # deliberate difference: numbering continues (TF would write ckpt-1 again with a fresh counter)
    assert manager.save(state(5)) == str(tmp_path / "ckpt-5")
    assert on_disk(tmp_path) == [3, 4, 5]
    assert listed(tmp_path) == ["ckpt-3", "ckpt-4", "ckpt-5"]


def test_restart_with_a_smaller_max_to_keep(tmp_path: Path) -> None:
    first = ckptlib.CheckpointManager(tmp_path, max_to_keep=5)
    for n in range(1, 6):
        first.save(state(n))
    manager = ckptlib.CheckpointManager(tmp_path, max_to_keep=2)
    manager.save(state(6))
    assert on_disk(tmp_path) == [5, 6]
    assert listed(tmp_path) == ["ckpt-5", "ckpt-6"]


def test_restart_over_a_tf1_state_file_manages_nothing(tmp_path: Path) -> None:
    """A state file without timestamps (TF1 Saver) yields no managed checkpoints, as in TF."""
    for n in (1, 2):
        ckptlib.save(state(n), tmp_path / f"ckpt-{n}")
    (tmp_path / "checkpoint").write_text(
        f'model_checkpoint_path: "{tmp_path}/ckpt-2"\n'
        f'all_model_checkpoint_paths: "{tmp_path}/ckpt-1"\n'
        f'all_model_checkpoint_paths: "{tmp_path}/ckpt-2"\n'
    )
    manager = ckptlib.CheckpointManager(tmp_path, max_to_keep=1)
    assert manager.checkpoints == []
    assert manager.latest_checkpoint == str(tmp_path / "ckpt-2")
    manager.save(state(3))
    manager.save(state(4))
    assert on_disk(tmp_path) == [1, 2, 4]
    assert listed(tmp_path) == ["ckpt-4"]


def test_manager_keeps_other_savers_entries(tmp_path: Path) -> None:
    saver = ckptlib.Saver(max_to_keep=2)
    for step in range(3):
        saver.save(state(step), tmp_path / "model.ckpt", global_step=step)
    manager = ckptlib.CheckpointManager(tmp_path, max_to_keep=1)
    manager.save(state(10))
    manager.save(state(11))
    assert sorted(listed(tmp_path)) == ["ckpt-2", "model.ckpt-1", "model.ckpt-2"]
    assert on_disk(tmp_path, "model.ckpt") == [1, 2]
    assert on_disk(tmp_path) == [2]
    assert ckptlib.latest_checkpoint(tmp_path) == str(tmp_path / "ckpt-2")


# ---------------------------------------------------------------------------------------------
# safety
# ---------------------------------------------------------------------------------------------


def test_sweep_never_deletes_outside_the_directory(tmp_path: Path) -> None:
    run = tmp_path / "a" / "run"
    run.mkdir(parents=True)
    outside = [tmp_path / "a" / "ckpt-1", tmp_path / "victim" / "ckpt-2", tmp_path / "elsewhere" / "ckpt-3"]
    for p in outside:
        ckptlib.save({"sentinel": np.arange(3)}, p)
    (run / "link").symlink_to(tmp_path / "victim", target_is_directory=True)
    sentinels = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(run)}
    entries = ["../ckpt-1", "../../victim/ckpt-2", str(tmp_path / "elsewhere" / "ckpt-3"), "link/ckpt-2", ".."]
    now = 1e10  # far in the future: clamped to now, so they would all count as managed
    (run / "checkpoint").write_text(
        'model_checkpoint_path: "../ckpt-1"\n'
        + "".join(f'all_model_checkpoint_paths: "{e}"\n' for e in entries)
        + "".join(f"all_model_checkpoint_timestamps: {now}\n" for _ in entries)
        + "last_preserved_timestamp: 1.0\n"
    )
    manager = ckptlib.CheckpointManager(run, max_to_keep=1)
    for n in range(5):
        manager.save(state(n))
    for path, content in sentinels.items():
        assert path.exists(), f"{path} was deleted"
        assert path.read_bytes() == content
    # numbering ignores the recorded latest (../ckpt-1): it lies outside the directory
    assert on_disk(run) == [5]
    assert ckptlib.latest_checkpoint(run) == str(run / "ckpt-5")
    assert "ckpt-5" in listed(run)
