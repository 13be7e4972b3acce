"""What a training loop meets when it resumes, is interrupted, or saves unusually: a damaged
latest checkpoint, a Ctrl-C during a save, one Saver for several names, negative steps, and
a huge state file."""

from __future__ import annotations

import _thread
import glob
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

import crc32c
import numpy as np
import pytest

import ckptlib
from ckptlib.store.local import LocalStore


def values(step: int) -> dict[str, np.ndarray]:
    return {"w": np.full((8, 8), step, np.float32), "step": np.array(step, np.int64)}


def on_disk(directory: Path) -> list[str]:
    """Checkpoint prefixes with an index in ``directory``, by name."""
    return sorted(os.path.basename(p)[: -len(".index")] for p in glob.glob(str(directory / "*.index")))


def listed(directory: Path) -> list[str]:
    state = ckptlib.get_checkpoint_state(directory)
    assert state is not None
    return [os.path.basename(p) for p in state.all_model_checkpoint_paths]


def damage(prefix: str | Path) -> None:
    """Flip one byte inside the first data shard's tensor bytes."""
    path = f"{prefix}.data-00000-of-00001"
    with open(path, "r+b") as f:
        f.seek(10)
        byte = f.read(1)
        f.seek(10)
        f.write(bytes([byte[0] ^ 0xFF]))


# -- resuming from the newest checkpoint that is intact ----------------------------------------


def test_latest_checkpoint_verify_skips_a_damaged_latest(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    saver = ckptlib.Saver()
    for step in (1, 2, 3):
        saver.save(values(step), tmp_path / "model.ckpt", global_step=step)
    damage(tmp_path / "model.ckpt-3")
    assert ckptlib.latest_checkpoint(tmp_path) == str(tmp_path / "model.ckpt-3")  # complete, not checked
    with caplog.at_level(logging.WARNING, logger="ckptlib"):
        found = ckptlib.latest_checkpoint(tmp_path, verify=True)
    assert found == str(tmp_path / "model.ckpt-2")
    assert "model.ckpt-3" in caplog.text and "checksum" in caplog.text
    damage(tmp_path / "model.ckpt-2")
    damage(tmp_path / "model.ckpt-1")
    assert ckptlib.latest_checkpoint(tmp_path, verify=True) is None


@pytest.mark.parametrize("with_target", [True, False])
def test_restore_or_initialize_resumes_from_the_newest_intact_checkpoint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, with_target: bool
) -> None:
    manager = ckptlib.CheckpointManager(tmp_path, max_to_keep=3)
    for step in (1, 2, 3):
        manager.save(values(step))
    damage(tmp_path / "ckpt-3")
    target = values(0)
    resumed = ckptlib.CheckpointManager(tmp_path, max_to_keep=3)
    initialized = []
    with caplog.at_level(logging.WARNING, logger="ckptlib"):
        found = resumed.restore_or_initialize(target if with_target else None, lambda: initialized.append(1))
    assert found == str(tmp_path / "ckpt-2")
    assert "ckpt-3" in caplog.text
    assert not initialized
    if with_target:
        np.testing.assert_array_equal(target["w"], values(2)["w"])
        assert int(target["step"]) == 2


def test_restore_or_initialize_initializes_when_nothing_is_intact(tmp_path: Path) -> None:
    manager = ckptlib.CheckpointManager(tmp_path, max_to_keep=3)
    manager.save(values(1))
    damage(tmp_path / "ckpt-1")
    initialized = []
    assert manager.restore_or_initialize(values(0), lambda: initialized.append(1)) is None
    assert initialized == [1]


# -- an interrupt (Ctrl-C, SystemExit) in the middle of a save --------------------------------


def interrupt_while_the_state_file_is_locked(directory: Path, save: Callable[[], object]) -> None:
    """Run ``save`` while another thread holds the state file's lock, and interrupt the
    main thread (as Ctrl-C does) while the save waits for it."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with LocalStore.update_lock(str(directory / "checkpoint")):
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(30)
    timer = threading.Timer(0.3, _thread.interrupt_main)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            save()
    finally:
        timer.cancel()
        release.set()
        holder.join()


def test_an_interrupted_saver_save_leaks_no_checkpoint(tmp_path: Path) -> None:
    """The interrupted save had already dropped step 1 from rotation; a later save deletes it."""
    saver = ckptlib.Saver(max_to_keep=2)
    for step in (1, 2):
        saver.save(values(step), tmp_path / "model.ckpt", global_step=step)
    interrupt_while_the_state_file_is_locked(
        tmp_path, lambda: saver.save(values(3), tmp_path / "model.ckpt", global_step=3)
    )
    assert ckptlib.latest_checkpoint(tmp_path) == str(tmp_path / "model.ckpt-2")
    saver.save(values(4), tmp_path / "model.ckpt", global_step=4)
    assert on_disk(tmp_path) == ["model.ckpt-3", "model.ckpt-4"]
    assert listed(tmp_path) == ["model.ckpt-3", "model.ckpt-4"]


def test_an_interrupted_manager_save_leaks_no_checkpoint(tmp_path: Path) -> None:
    manager = ckptlib.CheckpointManager(tmp_path, max_to_keep=2)
    for _ in range(2):
        manager.save(values(0))
    interrupt_while_the_state_file_is_locked(tmp_path, lambda: manager.save(values(3)))
    manager.save(values(4))
    manager.save(values(5))
    assert on_disk(tmp_path) == ["ckpt-4", "ckpt-5"]
    assert listed(tmp_path) == ["ckpt-4", "ckpt-5"]


# -- one Saver, several names; negative steps ---------------------------------------------------


def assert_state_file_matches_disk(directory: Path) -> None:
    names = listed(directory)
    assert len(names) == len(set(names)), f"listed twice: {names}"
    assert sorted(names) == on_disk(directory)


def test_one_saver_for_two_names_in_one_directory(tmp_path: Path) -> None:
    """Like TF's Saver, one list per state file across names: max_to_keep counts both."""
    saver = ckptlib.Saver(max_to_keep=2)
    saver.save(values(1), tmp_path / "model.ckpt", global_step=1)
    saver.save(values(2), tmp_path / "model.ckpt", global_step=2)
    saver.save(values(2), tmp_path / "best")
    assert_state_file_matches_disk(tmp_path)
    saver.save(values(3), tmp_path / "model.ckpt", global_step=3)
    assert_state_file_matches_disk(tmp_path)
    assert on_disk(tmp_path) == ["best", "model.ckpt-3"]
    saver.save(values(3), tmp_path / "best")  # re-saved: moved to the end, not listed twice
    assert_state_file_matches_disk(tmp_path)
    assert listed(tmp_path) == ["model.ckpt-3", "best"]


def test_one_saver_for_two_directories(tmp_path: Path) -> None:
    """Each directory's state file lists that directory's checkpoints, rotated apart."""
    saver = ckptlib.Saver(max_to_keep=2)
    for step in range(1, 5):
        saver.save(values(step), tmp_path / "a" / "model", global_step=step)
        saver.save(values(step), tmp_path / "b" / "model", global_step=step)
    for sub in ("a", "b"):
        assert_state_file_matches_disk(tmp_path / sub)
        assert listed(tmp_path / sub) == ["model-3", "model-4"]
    assert saver.last_checkpoints == [str(tmp_path / "b" / f"model-{s}") for s in (3, 4)]


def test_negative_steps_are_listed_once_and_rotated(tmp_path: Path) -> None:
    saver = ckptlib.Saver(max_to_keep=2)
    for step in (-5, -4, -3, -3):
        saver.save(values(step), tmp_path / "model.ckpt", global_step=step)
    assert_state_file_matches_disk(tmp_path)
    assert listed(tmp_path) == ["model.ckpt--4", "model.ckpt--3"]
    assert ckptlib.Saver(max_to_keep=1).save(values(-2), tmp_path / "model.ckpt", global_step=-2)
    assert_state_file_matches_disk(tmp_path)
    assert on_disk(tmp_path) == ["model.ckpt--2"]


# -- a state file listing a great many paths ----------------------------------------------------


@pytest.mark.parametrize("where", ["/nowhere/run{i}/", ""])
def test_a_state_file_of_many_missing_paths_is_read_with_few_directory_listings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """100,000 listed paths that do not exist, elsewhere or the saver's own in its directory:
    latest_checkpoint and a save list each directory once, instead of one glob per path."""
    ckptlib.save(values(1), tmp_path / "model.ckpt-1")
    lines = ['model_checkpoint_path: "/nowhere/model.ckpt-99999"', 'all_model_checkpoint_paths: "model.ckpt-1"']
    lines += [f'all_model_checkpoint_paths: "{where.format(i=i % 7)}model.ckpt-{i}"' for i in range(2, 100_000)]
    (tmp_path / "checkpoint").write_text("\n".join(lines) + "\n")
    listings = []
    for name in ("scandir", "listdir"):
        real = getattr(os, name)

        def counted(path: object = ".", real: Callable[..., object] = real) -> object:
            listings.append(path)
            return real(path)

        monkeypatch.setattr(os, name, counted)
    assert ckptlib.latest_checkpoint(tmp_path) == str(tmp_path / "model.ckpt-1")
    assert len(listings) < 40, f"{len(listings)} directory listings"
    listings.clear()
    ckptlib.Saver(max_to_keep=3).save(values(2), tmp_path / "model.ckpt", global_step=100_001)
    assert len(listings) < 100, f"{len(listings)} directory listings"  # a few per directory per read, not per path
    monkeypatch.undo()
    assert ckptlib.latest_checkpoint(tmp_path) == str(tmp_path / "model.ckpt-100001")


def test_tracking_survives_another_spelling_of_the_same_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TF's idiom after a restart: recover_last_checkpoints(get_checkpoint_state(absolute dir)
    ...), then saves under a relative path. Each checkpoint is tracked once, and rotation
    never deletes one the state file lists."""
    monkeypatch.chdir(tmp_path)
    saver = ckptlib.Saver(max_to_keep=2)
    for step in (1, 2):
        saver.save(values(step), "run/model.ckpt", global_step=step)
    state = ckptlib.get_checkpoint_state(os.path.abspath("run"))
    assert state is not None
    restarted = ckptlib.Saver(max_to_keep=2)
    restarted.recover_last_checkpoints(state.all_model_checkpoint_paths)
    restarted.save(values(3), "run/model.ckpt", global_step=3)
    assert_state_file_matches_disk(tmp_path / "run")
    assert listed(tmp_path / "run") == ["model.ckpt-2", "model.ckpt-3"]


def test_a_moved_absolute_path_resolves_in_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    ckptlib.save(values(1), "model.ckpt-1")
    Path("checkpoint").write_text('model_checkpoint_path: "/gone/run/model.ckpt-1"\n')
    assert ckptlib.latest_checkpoint("") == "model.ckpt-1"
    assert ckptlib.latest_checkpoint(".") == os.path.join(".", "model.ckpt-1")


def test_a_tensor_ckptlib_cannot_decode_is_not_damage(tmp_path: Path) -> None:
    """TF2 checkpoints may hold DT_VARIANT entries (tf.data iterator state): verify reports
    them as unsupported, but resuming does not skip such a checkpoint as damaged."""
    from test_hostile import entry_bytes, numeric_entry, write_bundle  # the hostile-file kit

    from ckptlib.format import dtypes
    from ckptlib.format.crc import mask

    w = np.arange(4, dtype=np.float32)
    variant = entry_bytes(dtypes.DT_VARIANT, [1], offset=16, size=4, crc=mask(crc32c.crc32c(b"\0" * 4)))
    for n in (1, 2):
        write_bundle(tmp_path / f"ckpt-{n}", [(b"w", numeric_entry(w)), (b"iter", variant)], w.tobytes() + b"\0" * 4)
    (tmp_path / "checkpoint").write_text(
        'model_checkpoint_path: "ckpt-2"\nall_model_checkpoint_paths: "ckpt-1"\nall_model_checkpoint_paths: "ckpt-2"\n'
    )
    assert ckptlib.latest_checkpoint(tmp_path, verify=True) == str(tmp_path / "ckpt-2")
    assert ckptlib.CheckpointManager(tmp_path, max_to_keep=3).restore_or_initialize() == str(tmp_path / "ckpt-2")
