"""``ckptlib.Saver`` (the ``tf.compat.v1.train.Saver`` shape), ``latest_checkpoint``, in-place
restore and the commit protocol. No TensorFlow needed: the side-by-side comparison with
TensorFlow lives in ``test_scenarios_tf.py``.

Deliberate differences from TensorFlow exercised here (each documented in ``Saver``'s
docstring): relative paths in the state file by default, a new Saver adopting its own
prefix's checkpoints from an existing state file, timestamps written by Saver, the hidden
``.checkpoint.lock`` file, and ``latest_checkpoint`` falling back to the newest *complete*
checkpoint.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import ckptlib
import ckptlib.saver
from ckptlib.state import read_state_file
from ckptlib.store.local_lock import LOCK_NAME
from ckptlib.store.temp_names import TEMP_MARKER
from ckptlib.tree import STRUCTURE_KEY
from ckptlib.tree import tensors_of as flatten

LOCK_FILE = ".checkpoint.lock"
LOCKS = {LOCK_FILE, LOCK_NAME}


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def files(directory: Path | str) -> list[str]:
    """Visible file names in ``directory`` (ckptlib's hidden lock file left out)."""
    return sorted(name for name in os.listdir(directory) if not name.startswith("."))


def ckpt_files(*prefixes: str, shards: int = 1) -> list[str]:
    """The file names a single-bundle checkpoint of each prefix consists of."""
    out = []
    for p in prefixes:
        out.append(f"{p}.index")
        out += [f"{p}.data-{i:05d}-of-{shards:05d}" for i in range(shards)]
    return out


def state_names(directory: Path | str, latest_filename: str | None = None) -> list[str]:
    """Basenames of ``all_model_checkpoint_paths`` as parsed by ``get_checkpoint_state``."""
    st = ckptlib.get_checkpoint_state(directory, latest_filename)
    assert st is not None
    return [os.path.basename(p) for p in st.all_model_checkpoint_paths]


def raw_state(directory: Path | str, name: str = "checkpoint") -> ckptlib.CheckpointState:
    """The state file with paths exactly as written (not resolved)."""
    st = read_state_file(os.path.join(directory, name))
    assert st is not None
    return st


def values(step: int) -> dict:
    return {
        "dense": {"kernel": np.full((2, 3), step, np.float32), "bias": np.arange(3, dtype=np.float32) + step},
        "step": np.int64(step),
    }


class Clock:
    """A controllable ``time.time``."""

    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    # ckptlib calls time.time() through the module, so patching the module attribute is enough
    monkeypatch.setattr(ckptlib.saver.time, "time", c)
    return c


# ---------------------------------------------------------------------------------------------
# naming
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "step, suffix",
    [
        (7, "-7"),
        (0, "-0"),
        (np.int64(12), "-12"),
        (np.int32(3), "-3"),
        (np.uint8(5), "-5"),
        (np.array(9, dtype=np.int64), "-9"),
        (np.array(2**40), f"-{2**40}"),
    ],
)
def test_global_step_names_the_prefix(tmp_path: Path, step, suffix: str) -> None:
    prefix = ckptlib.Saver().save(values(1), tmp_path / "model.ckpt", global_step=step)
    assert prefix == str(tmp_path / f"model.ckpt{suffix}")
    assert isinstance(prefix, str)
    assert files(tmp_path) == sorted(["checkpoint", *ckpt_files(f"model.ckpt{suffix}")])


def test_no_global_step_uses_save_path_as_prefix(tmp_path: Path) -> None:
    prefix = ckptlib.Saver().save(values(1), str(tmp_path / "model.ckpt"))
    assert prefix == str(tmp_path / "model.ckpt")
    assert files(tmp_path) == sorted(["checkpoint", *ckpt_files("model.ckpt")])
    assert raw_state(tmp_path).model_checkpoint_path == "model.ckpt"


def test_pad_step_number(tmp_path: Path) -> None:
    saver = ckptlib.Saver(pad_step_number=True)
    assert saver.save(values(1), tmp_path / "m", global_step=42) == str(tmp_path / "m-00000042")
    assert saver.save(values(1), tmp_path / "m", global_step=np.int64(123456789)) == str(tmp_path / "m-123456789")
    assert state_names(tmp_path) == ["m-00000042", "m-123456789"]


@pytest.mark.parametrize(
    "step",
    [True, False, np.bool_(True), np.array(True), 2.0, np.float32(3), np.array(1.5), "3", np.array([1, 2])],
    ids=repr,
)
def test_non_integer_global_step_is_a_type_error(tmp_path: Path, step) -> None:
    with pytest.raises(TypeError):
        ckptlib.Saver().save(values(1), tmp_path / "model.ckpt", global_step=step)
    assert files(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# latest_filename
# ---------------------------------------------------------------------------------------------


def test_custom_latest_filename(tmp_path: Path) -> None:
    saver = ckptlib.Saver(max_to_keep=2)
    for step in range(3):
        saver.save(values(step), tmp_path / "model.ckpt", global_step=step, latest_filename="my_state")
    assert "checkpoint" not in files(tmp_path)
    assert files(tmp_path) == sorted(["my_state", *ckpt_files("model.ckpt-1", "model.ckpt-2")])
    assert ckptlib.get_checkpoint_state(tmp_path) is None
    assert ckptlib.latest_checkpoint(tmp_path) is None
    assert state_names(tmp_path, "my_state") == ["model.ckpt-1", "model.ckpt-2"]
    assert ckptlib.latest_checkpoint(tmp_path, "my_state") == str(tmp_path / "model.ckpt-2")
    assert (tmp_path / ".my_state.lock").exists()  # the lock follows the state file's name


@pytest.mark.parametrize("name", ["sub/state", "../state", os.sep + "abs_state", "..", "."])
def test_latest_filename_with_a_path_component_is_rejected(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="latest_filename"):
        ckptlib.Saver().save(values(1), tmp_path / "model.ckpt", global_step=1, latest_filename=name)
    assert files(tmp_path) == []


@pytest.mark.parametrize("latest_filename", [None, "checkpoint", "state"])
def test_latest_filename_colliding_with_save_path(tmp_path: Path, latest_filename: str | None) -> None:
    name = latest_filename or "checkpoint"
    with pytest.raises(ValueError, match="collides"):
        ckptlib.Saver().save(values(1), tmp_path / name, latest_filename=latest_filename)
    assert files(tmp_path) == []
    # with a global step the prefix is `<name>-1`: no collision
    prefix = ckptlib.Saver().save(values(1), tmp_path / name, global_step=1, latest_filename=latest_filename)
    assert prefix == str(tmp_path / f"{name}-1")
    assert ckptlib.latest_checkpoint(tmp_path, latest_filename) == prefix


# ---------------------------------------------------------------------------------------------
# max_to_keep
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "max_to_keep, on_disk, listed",
    [
        (0, [1, 2, 3, 4, 5], [5]),
        (None, [1, 2, 3, 4, 5], [5]),
        (1, [5], [5]),
        (3, [3, 4, 5], [3, 4, 5]),
        (5, [1, 2, 3, 4, 5], [1, 2, 3, 4, 5]),
    ],
)
def test_max_to_keep(tmp_path: Path, max_to_keep: int | None, on_disk: list[int], listed: list[int]) -> None:
    saver = ckptlib.Saver(max_to_keep=max_to_keep)
    for step in range(1, 6):
        saver.save(values(step), tmp_path / "model.ckpt", global_step=step)
    assert files(tmp_path) == sorted(["checkpoint", *ckpt_files(*(f"model.ckpt-{s}" for s in on_disk))])

    st = ckptlib.get_checkpoint_state(tmp_path)
    assert st is not None
    assert st.model_checkpoint_path == str(tmp_path / "model.ckpt-5")
    assert list(st.all_model_checkpoint_paths) == [str(tmp_path / f"model.ckpt-{s}") for s in listed]
    # deliberate difference: Saver records one timestamp per path (TF1's Saver writes none)
    assert len(st.all_model_checkpoint_timestamps) == len(listed)
    assert list(st.all_model_checkpoint_timestamps) == sorted(st.all_model_checkpoint_timestamps)
    # deliberate difference: recorded relative to the directory
    raw = raw_state(tmp_path)
    assert raw.model_checkpoint_path == "model.ckpt-5"
    assert list(raw.all_model_checkpoint_paths) == [f"model.ckpt-{s}" for s in listed]

    tracked = listed if max_to_keep else []
    assert saver.last_checkpoints == [str(tmp_path / f"model.ckpt-{s}") for s in tracked]
    assert ckptlib.latest_checkpoint(tmp_path) == str(tmp_path / "model.ckpt-5")


def test_negative_max_to_keep_is_rejected() -> None:
    with pytest.raises(ValueError):
        ckptlib.Saver(max_to_keep=-1)


def test_resaving_a_step_moves_it_to_the_newest_place(tmp_path: Path) -> None:
    """TF's _RecordLastCheckpoint drops the old entry of the same path and appends it."""
    saver = ckptlib.Saver(max_to_keep=3)
    for step in (1, 2, 3, 2):
        saver.save(values(step), tmp_path / "model.ckpt", global_step=step)
    assert saver.last_checkpoints == [str(tmp_path / f"model.ckpt-{s}") for s in (1, 3, 2)]
    assert state_names(tmp_path) == ["model.ckpt-1", "model.ckpt-3", "model.ckpt-2"]
    saver.save(values(4), tmp_path / "model.ckpt", global_step=4)
    assert files(tmp_path) == sorted(["checkpoint", *ckpt_files("model.ckpt-2", "model.ckpt-3", "model.ckpt-4")])
    assert state_names(tmp_path) == ["model.ckpt-3", "model.ckpt-2", "model.ckpt-4"]


def test_write_state_false_neither_records_nor_rotates(tmp_path: Path) -> None:
    saver = ckptlib.Saver(max_to_keep=1)
    saver.save(values(1), tmp_path / "model.ckpt", global_step=1)
    saver.save(values(2), tmp_path / "model.ckpt", global_step=2, write_state=False)
    assert files(tmp_path) == sorted(["checkpoint", *ckpt_files("model.ckpt-1", "model.ckpt-2")])
    assert state_names(tmp_path) == ["model.ckpt-1"]
    assert saver.last_checkpoints == [str(tmp_path / "model.ckpt-1")]


def test_saver_without_recover_forgets_like_tensorflow(tmp_path: Path) -> None:
    """``recover=False`` is TensorFlow's behaviour: a new Saver does not know older checkpoints."""
    first = ckptlib.Saver(max_to_keep=2)
    for step in range(3):
        first.save(values(step), tmp_path / "model.ckpt", global_step=step)
    second = ckptlib.Saver(max_to_keep=2, recover=False)
    for step in range(3, 5):
        second.save(values(step), tmp_path / "model.ckpt", global_step=step)
    assert files(tmp_path) == sorted(["checkpoint", *ckpt_files(*(f"model.ckpt-{s}" for s in (1, 2, 3, 4)))])
    assert state_names(tmp_path) == ["model.ckpt-3", "model.ckpt-4"]


def test_recover_last_checkpoints_skips_missing(tmp_path: Path) -> None:
    for step in range(3):
        ckptlib.save(values(step), tmp_path / f"model.ckpt-{step}")
        os.utime(tmp_path / f"model.ckpt-{step}.index", (1000.0 + step, 1000.0 + step))
    saver = ckptlib.Saver(max_to_keep=2, recover=False)
    paths = [str(tmp_path / f"model.ckpt-{s}") for s in range(4)]  # -3 does not exist
    saver.recover_last_checkpoints(paths)
    assert saver.last_checkpoints == paths[:3]
    saver.save(values(9), tmp_path / "model.ckpt", global_step=9)
    # one queued entry is handled per save, like TF: -0 goes now
    assert "model.ckpt-0.index" not in files(tmp_path)
    assert saver.last_checkpoints == [paths[2], str(tmp_path / "model.ckpt-9")]


# ---------------------------------------------------------------------------------------------
# keep_checkpoint_every_n_hours
# ---------------------------------------------------------------------------------------------


def test_keep_checkpoint_every_n_hours(tmp_path: Path, clock: Clock) -> None:
    t0 = clock.now
    saver = ckptlib.Saver(max_to_keep=2, keep_checkpoint_every_n_hours=1.0)  # next keep time: t0 + 3600
    for k in range(1, 9):
        clock.now = t0 + k * 1800
        saver.save(values(k), tmp_path / "model.ckpt", global_step=k)
    # TF's rule: a checkpoint falling out of the newest 2 is kept iff its timestamp is strictly
    # after the next keep time, which then advances by one hour:
    # 1 (t0+1800) deleted, 2 (t0+3600, not > t0+3600) deleted, 3 (5400) kept -> 7200,
    # 4 (7200) deleted, 5 (9000) kept -> 10800, 6 (10800) deleted; 7 and 8 are the newest two.
    assert files(tmp_path) == sorted(["checkpoint", *ckpt_files(*(f"model.ckpt-{s}" for s in (3, 5, 7, 8)))])
    # the preserved ones are no longer listed
    assert state_names(tmp_path) == ["model.ckpt-7", "model.ckpt-8"]
    st = ckptlib.get_checkpoint_state(tmp_path)
    assert st is not None
    assert list(st.all_model_checkpoint_timestamps) == [t0 + 7 * 1800, t0 + 8 * 1800]


def test_keep_every_n_hours_clock_is_read_at_construction(tmp_path: Path, clock: Clock) -> None:
    t0 = clock.now
    saver = ckptlib.Saver(max_to_keep=1, keep_checkpoint_every_n_hours=2.0)
    clock.now = t0 + 10 * 3600  # long after construction: the first evicted one is kept
    for step in range(4):
        clock.now += 60
        saver.save(values(step), tmp_path / "model.ckpt", global_step=step)
    # 0 kept (next -> t0+4h, still in the past), 1 kept (next -> t0+6h), 2 kept (next -> t0+8h)
    assert files(tmp_path) == sorted(["checkpoint", *ckpt_files(*(f"model.ckpt-{s}" for s in range(4)))])
    assert state_names(tmp_path) == ["model.ckpt-3"]


def test_clock_stepping_back_keeps_save_order(tmp_path: Path, clock: Clock) -> None:
    """When the wall clock steps back between saves (NTP, VM migration), the state file
    still lists checkpoints in save order, newest last, as TF does."""
    saver = ckptlib.Saver(max_to_keep=3)
    for step, now in [(1, 1000.0), (2, 2000.0), (3, 500.0)]:  # the clock jumps back before step 3
        clock.now = now
        saver.save(values(step), tmp_path / "model.ckpt", global_step=step)
    assert saver.last_checkpoints == [str(tmp_path / f"model.ckpt-{s}") for s in (1, 2, 3)]
    assert state_names(tmp_path) == ["model.ckpt-1", "model.ckpt-2", "model.ckpt-3"]


def test_restart_after_the_clock_stepped_back_deletes_the_oldest(tmp_path: Path, clock: Clock) -> None:
    """A restarted Saver adopts checkpoints in the state file's (save) order, not by
    timestamp: with timestamps that went back at 3, it rotates out 1 first and keeps 3, the
    one it resumed from."""
    for step in (1, 2, 3):
        ckptlib.save(values(step), tmp_path / f"model.ckpt-{step}")
    (tmp_path / "checkpoint").write_text(
        'model_checkpoint_path: "model.ckpt-3"\n'
        + "".join(f'all_model_checkpoint_paths: "model.ckpt-{s}"\n' for s in (1, 2, 3))
        + "".join(f"all_model_checkpoint_timestamps: {t}\n" for t in (1000.0, 2000.0, 500.0))
    )
    clock.now = 600.0
    assert ckptlib.latest_checkpoint(tmp_path) == str(tmp_path / "model.ckpt-3")
    ckptlib.Saver(max_to_keep=3).save(values(4), tmp_path / "model.ckpt", global_step=4)
    assert files(tmp_path) == sorted(["checkpoint", *ckpt_files(*(f"model.ckpt-{s}" for s in (2, 3, 4)))])


# ---------------------------------------------------------------------------------------------
# sharding
# ---------------------------------------------------------------------------------------------


def many_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {f"layer{i}/w": rng.standard_normal((10, 25)).astype(np.float32) for i in range(5)}  # 1000 B each


def test_num_shards_three(tmp_path: Path) -> None:
    state = many_tensors()
    saver = ckptlib.Saver(num_shards=3, max_to_keep=1)
    prefix = saver.save(state, tmp_path / "model.ckpt", global_step=1)
    assert files(tmp_path) == sorted(["checkpoint", *ckpt_files("model.ckpt-1", shards=3)])
    with ckptlib.load_checkpoint(prefix) as reader:
        assert reader.header.num_shards == 3
        assert sorted(os.path.basename(f) for f in reader.files) == sorted(ckpt_files("model.ckpt-1", shards=3))
    for i in range(3):
        assert (tmp_path / f"model.ckpt-1.data-{i:05d}-of-00003").stat().st_size > 0
    restored = ckptlib.restore(prefix)
    assert restored.keys() == state.keys()
    for name, value in state.items():
        np.testing.assert_array_equal(restored[name], value)
    # rotation removes every shard of the old checkpoint
    saver.save(state, tmp_path / "model.ckpt", global_step=2)
    assert files(tmp_path) == sorted(["checkpoint", *ckpt_files("model.ckpt-2", shards=3)])
    assert ckptlib.latest_checkpoint(tmp_path) == str(tmp_path / "model.ckpt-2")


@pytest.mark.parametrize("max_shard_bytes, expected", [(2000, 3), (1000, 5), (10**9, 1), (1, 5)])
def test_max_shard_bytes(tmp_path: Path, max_shard_bytes: int, expected: int) -> None:
    state = many_tensors()  # 5 tensors x 1000 bytes
    assert expected == max(1, min(5, math.ceil(5000 / max_shard_bytes)))
    prefix = ckptlib.Saver(max_shard_bytes=max_shard_bytes).save(state, tmp_path / "model.ckpt", global_step=0)
    with ckptlib.load_checkpoint(prefix) as reader:
        assert reader.header.num_shards == expected
    data = sorted(f for f in files(tmp_path) if ".data-" in f)
    assert data == [f"model.ckpt-0.data-{i:05d}-of-{expected:05d}" for i in range(expected)]
    if max_shard_bytes >= 1000:
        assert all((tmp_path / f).stat().st_size <= max(max_shard_bytes, 1000) for f in data)
    for name, value in ckptlib.restore(prefix).items():
        np.testing.assert_array_equal(value, state[name])


def test_sharded_true_restores(tmp_path: Path) -> None:
    state = many_tensors()
    prefix = ckptlib.Saver(sharded=True).save(state, tmp_path / "model.ckpt", global_step=0)
    with ckptlib.load_checkpoint(prefix) as reader:
        n = reader.header.num_shards
    assert 1 <= n <= min(5, os.cpu_count() or 1)
    for name, value in ckptlib.restore(prefix).items():
        np.testing.assert_array_equal(value, state[name])


# ---------------------------------------------------------------------------------------------
# save paths with and without a directory part
# ---------------------------------------------------------------------------------------------


def test_save_path_without_directory_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    saver = ckptlib.Saver(max_to_keep=2)
    for step in range(3):
        assert saver.save(values(step), "model.ckpt", global_step=step) == f"model.ckpt-{step}"
    assert files(tmp_path) == sorted(["checkpoint", *ckpt_files("model.ckpt-1", "model.ckpt-2")])
    assert (tmp_path / LOCK_FILE).exists()
    raw = raw_state(tmp_path)
    assert raw.model_checkpoint_path == "model.ckpt-2"
    assert list(raw.all_model_checkpoint_paths) == ["model.ckpt-1", "model.ckpt-2"]
    assert ckptlib.latest_checkpoint(".") == os.path.join(".", "model.ckpt-2")
    assert ckptlib.latest_checkpoint(str(tmp_path)) == str(tmp_path / "model.ckpt-2")
    target = values(0)
    saver.restore(target, "model.ckpt-2")
    np.testing.assert_array_equal(target["dense"]["kernel"], values(2)["dense"]["kernel"])


def test_relative_save_path_with_directory_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for relative in (True, False):  # TF's rule: relative paths become relative to the state file's dir
        run = f"run_{relative}"
        saver = ckptlib.Saver(max_to_keep=2, save_relative_paths=relative)
        for step in range(3):
            assert saver.save(values(step), f"{run}/model.ckpt", global_step=step) == f"{run}/model.ckpt-{step}"
        assert files(tmp_path / run) == sorted(["checkpoint", *ckpt_files("model.ckpt-1", "model.ckpt-2")])
        raw = raw_state(tmp_path / run)
        assert list(raw.all_model_checkpoint_paths) == ["model.ckpt-1", "model.ckpt-2"]
        assert ckptlib.latest_checkpoint(run) == os.path.join(run, "model.ckpt-2")


def test_absolute_save_path_records_relative_paths_by_default(tmp_path: Path) -> None:
    ckptlib.Saver().save(values(1), tmp_path / "model.ckpt", global_step=1)
    assert raw_state(tmp_path).model_checkpoint_path == "model.ckpt-1"
    ckptlib.Saver(save_relative_paths=False).save(values(2), tmp_path / "other", global_step=2)
    raw = raw_state(tmp_path)
    assert raw.model_checkpoint_path == str(tmp_path / "other-2")
    # the writing saver's choice applies to every entry it writes, other savers' included
    assert list(raw.all_model_checkpoint_paths) == [str(tmp_path / "model.ckpt-1"), str(tmp_path / "other-2")]
    ckptlib.Saver().save(values(3), tmp_path / "model.ckpt", global_step=3)
    raw = raw_state(tmp_path)
    assert list(raw.all_model_checkpoint_paths) == ["model.ckpt-1", "other-2", "model.ckpt-3"]


def test_save_creates_missing_directories(tmp_path: Path) -> None:
    prefix = ckptlib.Saver().save(values(1), tmp_path / "a" / "b" / "model.ckpt", global_step=1)
    assert ckptlib.latest_checkpoint(tmp_path / "a" / "b") == prefix


# ---------------------------------------------------------------------------------------------
# restore into existing arrays
# ---------------------------------------------------------------------------------------------


def zeros_like_values() -> dict:
    return {
        "dense": {"kernel": np.zeros((2, 3), np.float32), "bias": np.zeros(3, np.float32)},
        "step": np.zeros((), np.int64),
    }


@pytest.mark.parametrize("how", ["saver", "function"])
def test_restore_in_place_keeps_array_identity(tmp_path: Path, how: str) -> None:
    prefix = ckptlib.Saver().save(values(7), tmp_path / "model.ckpt", global_step=7)
    target = zeros_like_values()
    kernel, bias, step = target["dense"]["kernel"], target["dense"]["bias"], target["step"]
    if how == "saver":
        report = ckptlib.Saver().restore(target, prefix)
    else:
        report = ckptlib.restore(prefix, into=target)
    assert target["dense"]["kernel"] is kernel and target["dense"]["bias"] is bias and target["step"] is step
    np.testing.assert_array_equal(kernel, values(7)["dense"]["kernel"])
    np.testing.assert_array_equal(bias, values(7)["dense"]["bias"])
    assert step == 7 and step.shape == ()
    assert isinstance(report, ckptlib.RestoreReport)
    assert report.restored == ["dense/bias", "dense/kernel", "step"]
    assert report.missing == [] and report.unexpected == []


def test_restore_into_python_scalars_replaces_them(tmp_path: Path) -> None:
    prefix = ckptlib.save({"lr": np.float64(0.5), "n": np.int64(3), "name": b"abc"}, tmp_path / "s")
    target = {"lr": 0.0, "n": 0, "name": ""}
    ckptlib.restore(prefix, into=target)
    assert target == {"lr": 0.5, "n": 3, "name": "abc"}
    assert type(target["lr"]) is float and type(target["n"]) is int


def test_restore_shape_mismatch_lists_every_name(tmp_path: Path) -> None:
    prefix = ckptlib.Saver().save(values(1), tmp_path / "model.ckpt", global_step=1)
    target = zeros_like_values()
    target["dense"]["kernel"] = np.zeros((3, 2), np.float32)
    target["dense"]["bias"] = np.zeros(4, np.float32)
    with pytest.raises(ckptlib.ShapeMismatchError) as info:
        ckptlib.Saver().restore(target, prefix)
    message = str(info.value)
    assert "dense/kernel" in message and "[3, 2]" in message and "[2, 3]" in message
    assert "dense/bias" in message and "[4]" in message and "[3]" in message
    assert "step" not in message.replace(prefix, "")
    assert prefix in message
    assert isinstance(info.value, ValueError) and isinstance(info.value, ckptlib.RestoreMismatchError)
    # everything is checked before anything is written
    assert target["step"] == 0


def test_restore_dtype_mismatch_lists_every_name(tmp_path: Path) -> None:
    prefix = ckptlib.Saver().save(values(1), tmp_path / "model.ckpt", global_step=1)
    target = zeros_like_values()
    target["dense"]["kernel"] = np.zeros((2, 3), np.float64)
    target["step"] = np.zeros((), np.int32)
    with pytest.raises(ckptlib.DtypeMismatchError) as info:
        ckptlib.restore(prefix, into=target)
    message = str(info.value)
    assert "dense/kernel" in message and "float64" in message and "float32" in message
    assert "step" in message and "int32" in message and "int64" in message
    assert "2 tensor(s)" in message
    assert not np.any(target["dense"]["bias"])  # untouched


def test_restore_mixed_problems_raise_the_base_class(tmp_path: Path) -> None:
    prefix = ckptlib.Saver().save(values(1), tmp_path / "model.ckpt", global_step=1)
    target = zeros_like_values()
    target["dense"]["kernel"] = np.zeros((2, 2), np.float32)  # shape
    target["step"] = np.zeros((), np.float32)  # dtype
    del target["dense"]["bias"]  # unexpected: in the checkpoint, no target
    target["extra"] = np.zeros(1)  # missing from the checkpoint
    with pytest.raises(ckptlib.RestoreMismatchError) as info:
        ckptlib.restore(prefix, into=target)
    assert type(info.value) is ckptlib.RestoreMismatchError
    message = str(info.value)
    assert "4 tensor(s)" in message
    for piece in ("dense/kernel", "step", "dense/bias", "extra", "missing", "not in the restore target"):
        assert piece in message


def test_restore_missing_and_unexpected_strict(tmp_path: Path) -> None:
    prefix = ckptlib.Saver().save(values(1), tmp_path / "model.ckpt", global_step=1)
    target = {"dense": {"kernel": np.zeros((2, 3), np.float32)}, "extra": np.zeros(2), "other": np.zeros(1)}
    with pytest.raises(ckptlib.RestoreMismatchError) as info:
        ckptlib.Saver().restore(target, prefix)
    message = str(info.value)
    assert "extra: missing from the checkpoint" in message
    assert "other: missing from the checkpoint" in message
    assert "dense/bias: in the checkpoint but not in the restore target" in message
    assert "step: in the checkpoint but not in the restore target" in message
    assert not np.any(target["dense"]["kernel"])


def test_restore_non_strict_reports(tmp_path: Path) -> None:
    prefix = ckptlib.Saver().save(values(4), tmp_path / "model.ckpt", global_step=4)
    kernel = np.zeros((2, 3), np.float32)
    target = {"dense": {"kernel": kernel}, "extra": np.zeros(2)}
    report = ckptlib.restore(prefix, into=target, strict=False)
    assert report.restored == ["dense/kernel"]
    assert report.missing == ["extra"]
    assert report.unexpected == ["dense/bias", "step"]
    assert target["dense"]["kernel"] is kernel
    np.testing.assert_array_equal(kernel, values(4)["dense"]["kernel"])
    assert not np.any(target["extra"])
    # shape problems are errors even when not strict
    with pytest.raises(ckptlib.ShapeMismatchError):
        ckptlib.restore(prefix, into={"dense": {"kernel": np.zeros(6, np.float32)}}, strict=False)


def test_saver_restore_none_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="Can't load save_path when it is None"):
        ckptlib.Saver().restore({}, None)


def test_saver_restore_of_a_missing_checkpoint_is_not_found_deliberately(tmp_path: Path) -> None:
    """TF raises ``ValueError("The passed save_path is not a valid checkpoint: ...")``. ckptlib
    deliberately raises ``CheckpointNotFoundError``, a ``FileNotFoundError`` like every other
    missing-path error in its tree (DESIGN.md), naming the path."""
    with pytest.raises(ckptlib.CheckpointNotFoundError) as info:
        ckptlib.Saver().restore({}, tmp_path / "nothing-1")
    assert isinstance(info.value, FileNotFoundError)
    assert "nothing-1" in str(info.value)


def test_saver_restore_from_a_directory(tmp_path: Path) -> None:
    saver = ckptlib.Saver()
    for step in range(3):
        saver.save(values(step), tmp_path / "model.ckpt", global_step=step)
    target = zeros_like_values()
    saver.restore(target, tmp_path)
    assert target["step"] == 2


# ---------------------------------------------------------------------------------------------
# latest_checkpoint
# ---------------------------------------------------------------------------------------------


def three_checkpoints(directory: Path, **saver_args) -> list[str]:
    saver = ckptlib.Saver(**saver_args)
    return [saver.save(values(s), directory / "model.ckpt", global_step=s) for s in (1, 2, 3)]


@pytest.mark.parametrize("damage", ["index", "data", "truncated_index"])
def test_latest_checkpoint_falls_back_to_the_previous_complete_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    prefixes = three_checkpoints(tmp_path)
    assert ckptlib.latest_checkpoint(tmp_path) == prefixes[2]
    if damage == "index":
        os.remove(prefixes[2] + ".index")
    elif damage == "data":
        os.remove(prefixes[2] + ".data-00000-of-00001")
    else:
        with open(prefixes[2] + ".index", "r+b") as f:
            f.truncate(20)
    with caplog.at_level(logging.WARNING, logger="ckptlib"):
        assert ckptlib.latest_checkpoint(tmp_path) == prefixes[1]
    assert any("model.ckpt-3" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert ckptlib.restore(tmp_path)["step"] == 2  # a directory restores the same fallback


def test_latest_checkpoint_missing_data_shard_of_sharded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    prefixes = three_checkpoints(tmp_path, num_shards=3)
    os.remove(prefixes[2] + ".data-00001-of-00003")
    with caplog.at_level(logging.WARNING, logger="ckptlib"):
        assert ckptlib.latest_checkpoint(tmp_path) == prefixes[1]
    assert caplog.records


def test_latest_checkpoint_none_complete(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    prefixes = three_checkpoints(tmp_path)
    for p in prefixes:
        os.remove(p + ".index")
    with caplog.at_level(logging.WARNING, logger="ckptlib"):
        assert ckptlib.latest_checkpoint(tmp_path) is None
    assert caplog.records
    assert ckptlib.latest_checkpoint(tmp_path / "no_such_dir") is None


def test_latest_checkpoint_unparseable_state_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "checkpoint").write_text("this is { not a state file")
    with caplog.at_level(logging.WARNING, logger="ckptlib"):
        assert ckptlib.latest_checkpoint(tmp_path) is None
    assert caplog.records


@pytest.mark.parametrize("relative", [True, False])
def test_moved_directory_keeps_working(tmp_path: Path, relative: bool) -> None:
    old, new = tmp_path / "run1", tmp_path / "run2"
    three_checkpoints(old, max_to_keep=3, save_relative_paths=relative)
    if not relative:
        assert raw_state(old).model_checkpoint_path == str(old / "model.ckpt-3")
    shutil.move(str(old), str(new))
    assert not old.exists()

    assert ckptlib.latest_checkpoint(new) == str(new / "model.ckpt-3")
    st = ckptlib.get_checkpoint_state(new)
    assert st is not None
    assert list(st.all_model_checkpoint_paths) == [str(new / f"model.ckpt-{s}") for s in (1, 2, 3)]
    target = zeros_like_values()
    ckptlib.Saver().restore(target, ckptlib.latest_checkpoint(new))
    assert target["step"] == 3
    assert ckptlib.restore(new)["step"] == 3

    # a new Saver in the moved directory adopts (and rotates) the moved checkpoints
    saver = ckptlib.Saver(max_to_keep=3, save_relative_paths=relative)
    saver.save(values(4), new / "model.ckpt", global_step=4)
    assert files(new) == sorted(["checkpoint", *ckpt_files(*(f"model.ckpt-{s}" for s in (2, 3, 4)))])
    assert state_names(new) == ["model.ckpt-2", "model.ckpt-3", "model.ckpt-4"]


def test_get_checkpoint_state_on_tensorflow_style_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TF1's Saver writes absolute paths and no timestamps."""
    run = tmp_path / "run"
    for s in (1, 2):
        ckptlib.save(values(s), run / f"model.ckpt-{s}")
    (run / "checkpoint").write_text(
        f'model_checkpoint_path: "{run}/model.ckpt-2"\n'
        f'all_model_checkpoint_paths: "{run}/model.ckpt-1"\n'
        f'all_model_checkpoint_paths: "{run}/model.ckpt-2"\n'
    )
    st = ckptlib.get_checkpoint_state(run)
    assert st is not None
    assert st.model_checkpoint_path == str(run / "model.ckpt-2")
    assert st.all_model_checkpoint_paths == (str(run / "model.ckpt-1"), str(run / "model.ckpt-2"))
    assert st.all_model_checkpoint_timestamps == ()
    assert st.last_preserved_timestamp == 0.0
    assert ckptlib.latest_checkpoint(run) == str(run / "model.ckpt-2")
    # absolute entries stay absolute when the directory is given relative to the cwd
    monkeypatch.chdir(tmp_path)
    st = ckptlib.get_checkpoint_state("run")
    assert st is not None and st.model_checkpoint_path == str(run / "model.ckpt-2")
    # relative entries are joined to the directory as given (TF: os.path.join(dir, p))
    (run / "checkpoint").write_text(
        'model_checkpoint_path: "model.ckpt-2"\nall_model_checkpoint_paths: "model.ckpt-2"\n'
    )
    st = ckptlib.get_checkpoint_state("run")
    assert st is not None and st.model_checkpoint_path == os.path.join("run", "model.ckpt-2")
    assert ckptlib.latest_checkpoint("run") == os.path.join("run", "model.ckpt-2")


def test_state_file_without_model_path_is_invalid(tmp_path: Path) -> None:
    (tmp_path / "checkpoint").write_text('all_model_checkpoint_paths: "x"\n')
    with pytest.raises(ValueError):  # TF: ValueError("Invalid checkpoint state loaded from ...")
        ckptlib.get_checkpoint_state(tmp_path)


def test_saver_adopts_a_tensorflow_written_state_file(tmp_path: Path) -> None:
    """No timestamps in the file: the index files' mtimes order the adopted checkpoints."""
    for s in (1, 2, 3):
        ckptlib.save(values(s), tmp_path / f"model.ckpt-{s}")
        os.utime(tmp_path / f"model.ckpt-{s}.index", (1_600_000_000 + s, 1_600_000_000 + s))
    (tmp_path / "checkpoint").write_text(
        f'model_checkpoint_path: "{tmp_path}/model.ckpt-3"\n'
        + "".join(f'all_model_checkpoint_paths: "{tmp_path}/model.ckpt-{s}"\n' for s in (1, 2, 3))
    )
    ckptlib.Saver(max_to_keep=2).save(values(4), tmp_path / "model.ckpt", global_step=4)
    assert files(tmp_path) == sorted(["checkpoint", *ckpt_files("model.ckpt-3", "model.ckpt-4")])
    assert state_names(tmp_path) == ["model.ckpt-3", "model.ckpt-4"]


# ---------------------------------------------------------------------------------------------
# a training loop with a restart
# ---------------------------------------------------------------------------------------------


def train_values(epoch: int) -> dict:
    return {
        "w": np.full((4, 4), epoch, np.float32) * 0.5,
        "opt": {"m": np.arange(4.0) * epoch},
        "epoch": np.int64(epoch),
    }


def test_training_loop_resumes_and_rotation_continues_across_restart(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "exp"
    saver = ckptlib.Saver(max_to_keep=3)
    for epoch in range(5):
        saver.save(train_values(epoch), run / "model.ckpt", global_step=epoch)
    assert files(run) == sorted(["checkpoint", *ckpt_files(*(f"model.ckpt-{e}" for e in (2, 3, 4)))])
    del saver

    # --- restart: a new process would do exactly this ---
    saver = ckptlib.Saver(max_to_keep=3)
    latest = ckptlib.latest_checkpoint(run)
    assert latest == str(run / "model.ckpt-4")
    state = {"w": np.zeros((4, 4), np.float32), "opt": {"m": np.zeros(4)}, "epoch": np.zeros((), np.int64)}
    w = state["w"]
    saver.restore(state, latest)
    assert state["w"] is w
    with ckptlib.load_checkpoint(latest) as reader:
        stored = {name: reader.get_tensor(name) for name in reader.keys_list() if name != STRUCTURE_KEY}
    assert sorted(stored) == sorted(set(flatten(train_values(4))) - {STRUCTURE_KEY})
    for name, value in stored.items():
        expected = flatten(train_values(4))[name]
        np.testing.assert_array_equal(value, expected)
    np.testing.assert_array_equal(state["w"], train_values(4)["w"])
    start = int(state["epoch"]) + 1
    assert start == 5
    for epoch in range(start, 9):
        state = train_values(epoch)
        saver.save(state, run / "model.ckpt", global_step=epoch)

    newest = [f"model.ckpt-{e}" for e in (6, 7, 8)]
    assert files(run) == sorted(["checkpoint", *ckpt_files(*newest)])  # 2, 3, 4 went too
    assert state_names(run) == newest
    assert saver.last_checkpoints == [str(run / n) for n in newest]
    final = ckptlib.restore(ckptlib.latest_checkpoint(run))
    np.testing.assert_array_equal(final["w"], train_values(8)["w"])
    np.testing.assert_array_equal(final["opt"]["m"], train_values(8)["opt"]["m"])
    assert final["epoch"] == 8


def test_restart_with_a_double_slash_in_the_save_path(tmp_path: Path) -> None:
    """A save path spelled with a double slash (``args.dir + "/model.ckpt"`` with a trailing
    slash): after a restart, re-saving an adopted step tracks it once, the state file lists it
    once, ``max_to_keep`` checkpoints are kept, and rotation never deletes a listed one."""
    run = str(tmp_path / "run")
    saver = ckptlib.Saver(max_to_keep=3)
    for step in range(5):
        saver.save(values(step), run + "/model.ckpt", global_step=step)
    saver = ckptlib.Saver(max_to_keep=3)  # restart, resume by re-saving the latest step
    for step in range(4, 7):
        saver.save(values(step), run + "//model.ckpt", global_step=step)
        listed = state_names(run)
        assert len(listed) == len(set(listed)), f"duplicate entries after step {step}: {listed}"
        on_disk = sorted(f[: -len(".index")] for f in files(run) if f.endswith(".index"))
        assert sorted(listed) == on_disk, f"after step {step}: state lists {listed}, disk has {on_disk}"
    assert state_names(run) == ["model.ckpt-4", "model.ckpt-5", "model.ckpt-6"]


# ---------------------------------------------------------------------------------------------
# two processes saving into one directory
# ---------------------------------------------------------------------------------------------

CONCURRENT_SAVER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import ckptlib

    directory, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    saver = ckptlib.Saver(max_to_keep=5)
    for step in range(count):
        saver.save({"v": np.full(64, step, np.int64), "who": name}, f"{directory}/{name}", global_step=step)
    """
)


def test_two_processes_share_a_directory(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    script = tmp_path / "saver_proc.py"
    script.write_text(CONCURRENT_SAVER)
    count = 50
    procs = [
        subprocess.Popen([sys.executable, str(script), str(run), name, str(count)], stderr=subprocess.PIPE)
        for name in ("a.ckpt", "b.ckpt")
    ]
    parses = 0
    seen_state = False
    try:
        while any(p.poll() is None for p in procs):
            st = ckptlib.get_checkpoint_state(run)  # must never raise: the file is replaced atomically
            if st is not None:
                seen_state = True
                parses += 1
                assert st.model_checkpoint_path in st.all_model_checkpoint_paths
                assert len(st.all_model_checkpoint_timestamps) == len(st.all_model_checkpoint_paths)
                assert len(st.all_model_checkpoint_paths) <= 10 + 2  # at most a transient extra per saver
            elif seen_state:
                pytest.fail("the state file disappeared while being replaced")
            time.sleep(0.002)
    finally:
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err.decode()
    assert parses > 0

    st = ckptlib.get_checkpoint_state(run)
    assert st is not None
    listed = [os.path.basename(p) for p in st.all_model_checkpoint_paths]
    for name in ("a.ckpt", "b.ckpt"):
        mine = [p for p in listed if p.startswith(name + "-")]
        assert mine == [f"{name}-{s}" for s in range(count - 5, count)]
    assert len(listed) == 10
    assert os.path.basename(st.model_checkpoint_path) in (f"a.ckpt-{count - 1}", f"b.ckpt-{count - 1}")
    expected = ckpt_files(*(f"{n}-{s}" for n in ("a.ckpt", "b.ckpt") for s in range(count - 5, count)))
    assert files(run) == sorted(["checkpoint", *expected])
    assert not [f for f in os.listdir(run) if TEMP_MARKER in f]
    for name in ("a.ckpt", "b.ckpt"):
        restored = ckptlib.restore(run / f"{name}-{count - 1}")
        assert restored["who"] == name
        assert np.all(restored["v"] == count - 1)


# ---------------------------------------------------------------------------------------------
# safety: rotation never deletes outside the save directory
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_timestamps", [False, True])
def test_rotation_never_deletes_outside_the_directory(tmp_path: Path, with_timestamps: bool) -> None:
    run = tmp_path / "a" / "run"
    run.mkdir(parents=True)
    # checkpoints outside the directory, named like the saver's own
    outside = [
        tmp_path / "a" / "x",  # ../x
        tmp_path / "victim" / "x",  # ../../victim/x
        tmp_path / "victim" / "model.ckpt-1",  # ../../victim/model.ckpt-1 and absolute
        tmp_path / "a" / "model.ckpt-2",  # ../model.ckpt-2
        tmp_path / "elsewhere" / "model.ckpt-3",  # absolute
    ]
    for p in outside:
        ckptlib.save({"sentinel": np.arange(3)}, p)
    (tmp_path / "victim" / "model.ckpt-1.meta").write_bytes(b"meta sentinel")
    (tmp_path / "a" / "model.ckpt").write_bytes(b"a plain file named like the save path")
    (run / "link").symlink_to(tmp_path / "victim", target_is_directory=True)
    sentinels = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(run)}
    assert len(sentinels) >= 11

    listed = [
        "../x",
        "../../victim/x",
        "../../victim/model.ckpt-1",
        "../model.ckpt-2",
        str(tmp_path / "elsewhere" / "model.ckpt-3"),
        str(tmp_path / "victim" / "model.ckpt-1"),
        "link/model.ckpt-1",
        "model.ckpt-4/../../model.ckpt-2",
        "./../model.ckpt",
        "..",
        "../model.ckpt",
    ]
    text = 'model_checkpoint_path: "../../victim/model.ckpt-1"\n'
    text += "".join(f'all_model_checkpoint_paths: "{p}"\n' for p in listed)
    if with_timestamps:
        text += "".join(f"all_model_checkpoint_timestamps: {1000.0 + i}\n" for i in range(len(listed)))
    (run / "checkpoint").write_text(text)

    saver = ckptlib.Saver(max_to_keep=1)
    for step in range(1, 8):
        saver.save(values(step), run / "model.ckpt", global_step=step)
    ckptlib.Saver(max_to_keep=1).save(values(9), run / "model.ckpt", global_step=9)  # a fresh saver adopts
    # the bare save path is one of the saver's own names too: model.ckpt-9 rotates out
    ckptlib.Saver(max_to_keep=1).save(values(10), run / "model.ckpt")

    for path, content in sentinels.items():
        assert path.exists(), f"{path} was deleted"
        assert path.read_bytes() == content
    assert (run / "link").is_symlink()
    assert files(run) == sorted(["checkpoint", "link", *ckpt_files("model.ckpt")])


# ---------------------------------------------------------------------------------------------
# commit protocol
# ---------------------------------------------------------------------------------------------


def snapshot(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in os.listdir(directory) if name not in LOCKS}


def snapshot_files(directory: Path) -> dict[str, bytes]:
    """Like ``snapshot``, skipping directories."""
    return {
        name: (directory / name).read_bytes()
        for name in os.listdir(directory)
        if name not in LOCKS and (directory / name).is_file()
    }


def test_failed_save_of_an_unwritable_value_changes_nothing(tmp_path: Path) -> None:
    saver = ckptlib.Saver(max_to_keep=1)
    saver.save(values(1), tmp_path / "model.ckpt", global_step=1)
    before = snapshot(tmp_path)
    bad = {"ok": np.zeros(3), "bad": np.array([1, 2], dtype=object)}  # an object array of ints
    with pytest.raises(ckptlib.InvalidTensorError) as info:
        saver.save(bad, tmp_path / "model.ckpt", global_step=2)
    assert "bad" in str(info.value)
    assert snapshot(tmp_path) == before
    assert not [f for f in os.listdir(tmp_path) if TEMP_MARKER in f]
    assert ckptlib.latest_checkpoint(tmp_path) == str(tmp_path / "model.ckpt-1")
    assert saver.last_checkpoints == [str(tmp_path / "model.ckpt-1")]
    # and the saver still works afterwards
    saver.save(values(3), tmp_path / "model.ckpt", global_step=3)
    assert files(tmp_path) == sorted(["checkpoint", *ckpt_files("model.ckpt-3")])


def test_failure_while_renaming_a_shard_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    """A shard cannot be moved into place (a directory is in the way): the save fails, no
    temporary file is left, the new checkpoint never becomes visible, the previous one and the
    state file are untouched. (Shards renamed before the failure may remain without an index,
    as after a kill; they are invisible to latest_checkpoint.)"""
    saver = ckptlib.Saver(max_to_keep=1, num_shards=3)
    saver.save(many_tensors(), tmp_path / "model.ckpt", global_step=1)
    before = snapshot(tmp_path)
    blocker = tmp_path / "model.ckpt-2.data-00001-of-00003"
    blocker.mkdir()
    with pytest.raises(OSError):
        saver.save(many_tensors(), tmp_path / "model.ckpt", global_step=2)
    after = snapshot_files(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before
    assert not [f for f in os.listdir(tmp_path) if TEMP_MARKER in f]
    assert not (tmp_path / "model.ckpt-2.index").exists()
    assert ckptlib.latest_checkpoint(tmp_path) == str(tmp_path / "model.ckpt-1")
    assert saver.last_checkpoints == [str(tmp_path / "model.ckpt-1")]
    blocker.rmdir()
    saver.save(many_tensors(), tmp_path / "model.ckpt", global_step=3)
    assert ckptlib.latest_checkpoint(tmp_path) == str(tmp_path / "model.ckpt-3")


def test_failed_overwrite_keeps_the_existing_bundle(tmp_path: Path) -> None:
    """A re-save of an existing step that fails while installing its shards leaves the
    checkpoint that was there (here the latest) whole and listed, with no temporary file."""
    saver = ckptlib.Saver(max_to_keep=5)
    saver.save(values(1), tmp_path / "model.ckpt", global_step=1)
    prefix = saver.save(values(2), tmp_path / "model.ckpt", global_step=2)  # 1 shard
    (tmp_path / "model.ckpt-2.data-00002-of-00003").mkdir()  # in the way of the re-save's last shard
    with pytest.raises(OSError):
        ckptlib.Saver(max_to_keep=5, num_shards=3).save(values(2), tmp_path / "model.ckpt", global_step=2)
    assert not [f for f in os.listdir(tmp_path) if TEMP_MARKER in f]
    assert ckptlib.checkpoint_exists(prefix), "the existing checkpoint at the re-saved prefix was destroyed"
    assert ckptlib.latest_checkpoint(tmp_path) == prefix


def test_failure_writing_the_state_file_deletes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rotation runs only after the new state file is in place: the state file's rename fails
    (only that one: the bundle's own renames go through), nothing is deleted."""
    saver = ckptlib.Saver(max_to_keep=1)
    saver.save(values(1), tmp_path / "model.ckpt", global_step=1)
    state_before = (tmp_path / "checkpoint").read_bytes()
    real_replace = os.replace
    failed = []

    def failing_replace(src, dst) -> None:
        if os.path.basename(os.fspath(dst)) == "checkpoint":
            failed.append(dst)
            raise OSError(5, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="Input/output"):
        saver.save(values(2), tmp_path / "model.ckpt", global_step=2)
    monkeypatch.undo()
    assert failed
    assert ckptlib.checkpoint_exists(tmp_path / "model.ckpt-2")  # the bundle itself was complete
    assert (tmp_path / "checkpoint").read_bytes() == state_before
    assert set(ckpt_files("model.ckpt-1")) <= set(files(tmp_path))  # the old one survived
    assert ckptlib.latest_checkpoint(tmp_path) == str(tmp_path / "model.ckpt-1")
    assert not [f for f in os.listdir(tmp_path) if TEMP_MARKER in f]


def _kill_during_overwrite(tmp_path: Path, stop_before: int) -> str:
    """Save step 1 twice; the second save's child dies after ``stop_before`` renames of
    the install (old index aside, old shards aside, new shards in, new index in)."""
    script = f"""
import os, sys, numpy as np, ckptlib
real = os.replace
count = [0]
def replace(src, dst):
    if ".ckptlib-tmp-" in src or dst.endswith(".index") or ".ckptlib-old-" in dst:
        if count[0] == {stop_before}:
            os._exit(9)
        count[0] += 1
    real(src, dst)
os.replace = replace
ckptlib.Saver(num_shards=3).save({{"w": np.full(4, 2.0), "v": np.arange(3)}}, sys.argv[1], global_step=1)
"""
    prefix = ckptlib.Saver(num_shards=2).save({"w": np.full(4, 1.0), "v": np.arange(3)}, tmp_path / "m", global_step=1)
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "m")], check=False)
    return prefix


@pytest.mark.parametrize("stop_before", range(8))
def test_a_kill_while_overwriting_a_checkpoint_never_loses_it(tmp_path: Path, stop_before: int) -> None:
    """Install renames: old index aside, 2 old shards aside, 3 new shards in, new index in
    (7 renames; dying before each, or not at all). Readers never see a torn checkpoint and
    change nothing; the next save of that saver puts the old checkpoint back (or keeps the
    new one once its index made it)."""
    prefix = _kill_during_overwrite(tmp_path, stop_before)
    before = snapshot(tmp_path)
    found = ckptlib.latest_checkpoint(tmp_path)
    assert found in (None, prefix)
    if found is not None:
        with ckptlib.load_checkpoint(found) as reader:
            assert reader.verify() == []
    assert snapshot(tmp_path) == before, "a reader changed the directory"
    ckptlib.Saver(num_shards=2).save({"w": np.zeros(4), "v": np.arange(3)}, tmp_path / "m", global_step=2)
    with ckptlib.load_checkpoint(prefix) as reader:
        assert reader.verify() == []
        w = reader.get_tensor("w")
    assert w.tolist() == ([2.0] * 4 if stop_before == 7 else [1.0] * 4)
    assert not [f for f in os.listdir(tmp_path) if ".ckptlib-" in f and not f.startswith(".")]


def test_empty_state_saves_a_checkpoint_of_no_tensors(tmp_path: Path) -> None:
    """As ``save({})`` does (see test_error_messages): one rule for an empty state."""
    prefix = ckptlib.Saver().save({}, tmp_path / "model.ckpt", global_step=1)
    assert files(tmp_path) == ["checkpoint", "model.ckpt-1.data-00000-of-00001", "model.ckpt-1.index"]
    assert ckptlib.restore(prefix) == {}
