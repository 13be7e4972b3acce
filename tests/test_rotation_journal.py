"""Rotation survives a kill between the state file's update and the old files' deletion:
the doomed checkpoints are noted in a journal first, and the next saver finishes the job."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ckptlib
import ckptlib.saver
from ckptlib.rotation import deletion_journal, note_deletions
from ckptlib.store import store_for


class Killed(BaseException):
    """Stands for SIGKILL: raised mid-save, nothing after it runs."""


RUN = "mem://run"


def values(step: int) -> dict[str, np.ndarray]:
    return {"w": np.full(4, step, np.float32)}


def names_in(directory: Path | str) -> list[str]:
    return store_for(str(directory)).listdir(str(directory))


def steps_on_disk(directory: Path | str, name: str = "model.ckpt") -> list[int]:
    return sorted(
        int(f[len(name) + 1 : -len(".index")])
        for f in names_in(directory)
        if f.startswith(name + "-") and f.endswith(".index")
    )


def data_files(directory: Path | str) -> list[str]:
    return sorted(f for f in names_in(directory) if ".data-" in f)


def listed(directory: Path | str) -> list[str]:
    st = ckptlib.get_checkpoint_state(directory)
    assert st is not None
    return [os.path.basename(p) for p in st.all_model_checkpoint_paths]


def journals(directory: Path | str) -> list[str]:
    return sorted(f for f in names_in(directory) if f.endswith(".deleting"))


def kill_first_deletion(store: Any) -> None:
    store.fail("delete", error=Killed(), match=".index")


def saver_with_two_checkpoints(directory: str) -> ckptlib.Saver:
    saver = ckptlib.Saver(max_to_keep=2)
    for step in (1, 2):
        saver.save(values(step), f"{directory}/model.ckpt", global_step=step)
    return saver


def test_a_kill_before_the_old_files_go_leaves_them_for_the_next_saver(mem_store: Any) -> None:
    saver = saver_with_two_checkpoints(RUN)
    kill_first_deletion(mem_store)
    with pytest.raises(Killed):
        saver.save(values(3), f"{RUN}/model.ckpt", global_step=3)
    mem_store.faults.clear()
    assert listed(RUN) == ["model.ckpt-2", "model.ckpt-3"]
    assert steps_on_disk(RUN) == [1, 2, 3]  # 1 is no longer listed: without the journal, kept for ever
    assert journals(RUN) == [".checkpoint.model.ckpt.deleting"]

    ckptlib.Saver(max_to_keep=2).save(values(4), f"{RUN}/model.ckpt", global_step=4)  # a new process
    assert steps_on_disk(RUN) == [3, 4]
    assert data_files(RUN) == ["model.ckpt-3.data-00000-of-00001", "model.ckpt-4.data-00000-of-00001"]
    assert listed(RUN) == ["model.ckpt-3", "model.ckpt-4"]
    assert journals(RUN) == []


def test_a_kill_before_the_state_file_changes_deletes_nothing_still_listed(mem_store: Any) -> None:
    saver = saver_with_two_checkpoints(RUN)
    mem_store.fail("update", error=Killed())
    with pytest.raises(Killed):
        saver.save(values(3), f"{RUN}/model.ckpt", global_step=3)
    mem_store.faults.clear()
    assert journals(RUN) == [".checkpoint.model.ckpt.deleting"]  # noted: 1
    assert listed(RUN) == ["model.ckpt-1", "model.ckpt-2"]  # ... but still listed

    fresh = ckptlib.Saver(max_to_keep=2)
    fresh.save(values(2), f"{RUN}/model.ckpt", global_step=2)  # resumes: 1 is adopted, then rotated out
    assert journals(RUN) == []
    assert listed(RUN) == ["model.ckpt-1", "model.ckpt-2"]
    assert ckptlib.restore(f"{RUN}/model.ckpt-1")["w"][0] == 1


def test_only_the_savers_own_checkpoints_in_its_directory_are_deleted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "run").mkdir()
    ckptlib.save(values(1), tmp_path / "outside")
    ckptlib.save(values(1), tmp_path / "run" / "other-1")
    ckptlib.save(values(1), tmp_path / "run" / "model.ckpt-1")
    journal = tmp_path / "run" / ".checkpoint.model.ckpt.deleting"
    journal.write_text('["model.ckpt-1"]')
    ckptlib.Saver().save(values(2), tmp_path / "run" / "model.ckpt", global_step=2)
    assert ckptlib.checkpoint_exists(tmp_path / "run" / "model.ckpt-1")  # no state file: what was listed is unknown
    journal.write_text('["../outside", "other-1", "model.ckpt-1", "model.ckpt-9"]')
    ckptlib.Saver().save(values(2), tmp_path / "run" / "model.ckpt", global_step=2)
    assert ckptlib.checkpoint_exists(tmp_path / "outside")
    assert ckptlib.checkpoint_exists(tmp_path / "run" / "other-1")
    assert not ckptlib.checkpoint_exists(tmp_path / "run" / "model.ckpt-1")
    assert not journal.exists()
    journal.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="ckptlib"):
        ckptlib.Saver().save(values(3), tmp_path / "run" / "model.ckpt", global_step=3)
    assert "unreadable deletion journal" in caplog.text
    assert not journal.exists() and steps_on_disk(tmp_path / "run") == [2, 3]


def test_checkpoints_kept_every_n_hours_are_never_noted(mem_store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_700_000_000.0]
    monkeypatch.setattr(ckptlib.saver.time, "time", lambda: now[0])
    saver = ckptlib.Saver(max_to_keep=1, keep_checkpoint_every_n_hours=0.5)
    for step in range(1, 5):
        now[0] += 1200  # 20 minutes per save
        saver.save(values(step), f"{RUN}/model.ckpt", global_step=step)
    noted = [json.loads(data) for path, data in mem_store.small_writes if path.endswith(".deleting")]
    kept = [s for s in steps_on_disk(RUN) if s != 4]
    assert kept  # preserved ones stay on disk, unlisted
    every_noted = {name for names in noted for name in names}
    assert every_noted and not every_noted & {f"model.ckpt-{s}" for s in kept}
    assert journals(RUN) == []


def test_the_manager_finishes_an_interrupted_rotation_when_it_starts(mem_store: Any) -> None:
    manager = ckptlib.CheckpointManager(RUN, max_to_keep=1)
    manager.save(values(1))
    kill_first_deletion(mem_store)
    with pytest.raises(Killed):
        manager.save(values(2))
    mem_store.faults.clear()
    assert steps_on_disk(RUN, "ckpt") == [1, 2]
    assert journals(RUN) == [".checkpoint.ckpt.deleting"]
    restarted = ckptlib.CheckpointManager(RUN, max_to_keep=1)
    assert steps_on_disk(RUN, "ckpt") == [2] and journals(RUN) == []
    assert restarted.checkpoints == [f"{RUN}/ckpt-2"]


def test_a_failed_state_update_leaves_the_old_checkpoint_for_the_next_save(mem_store: Any) -> None:
    saver = ckptlib.Saver(max_to_keep=1)
    saver.save(values(1), f"{RUN}/model.ckpt", global_step=1)
    mem_store.fail("update", error=OSError(28, "No space left on device"))
    with pytest.raises(OSError, match="No space"):
        saver.save(values(2), f"{RUN}/model.ckpt", global_step=2)
    mem_store.faults.clear()
    assert listed(RUN) == ["model.ckpt-1"] and steps_on_disk(RUN) == [1, 2]
    saver.save(values(3), f"{RUN}/model.ckpt", global_step=3)
    assert listed(RUN) == ["model.ckpt-3"]
    assert steps_on_disk(RUN) == [3] and journals(RUN) == []  # 1 (put back) and 2 rotated out


def test_a_listed_checkpoint_is_kept_however_the_state_file_spells_its_path(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    saver = ckptlib.Saver(max_to_keep=5, save_relative_paths=False)
    for step in (1, 2):
        saver.save(values(step), tmp_path / "link" / "model", global_step=step)
    assert ckptlib.get_checkpoint_state(real).all_model_checkpoint_paths[0].startswith(str(tmp_path / "link"))
    (real / ".checkpoint.model.deleting").write_text('["model-1"]')  # as if killed before the state update
    ckptlib.Saver(max_to_keep=5).save(values(3), real / "model", global_step=3)
    assert steps_on_disk(real, "model") == [1, 2, 3]


def test_checkpoints_outside_the_directory_are_never_noted(tmp_path: Path) -> None:
    store = store_for(str(tmp_path))
    journal = deletion_journal(str(tmp_path), None, "model")
    note_deletions(store, journal, [str(tmp_path / "elsewhere" / "model-1")], sync=False)
    assert not os.path.exists(journal)
    note_deletions(store, journal, [str(tmp_path / "elsewhere" / "model-1"), str(tmp_path / "model-2")], False)
    with open(journal) as f:
        assert f.read() == '["model-2"]'


def test_a_failed_manager_save_keeps_managing_what_it_would_have_deleted(mem_store: Any) -> None:
    manager = ckptlib.CheckpointManager(RUN, max_to_keep=1)
    manager.save(values(1))
    mem_store.fail("update", error=OSError(28, "No space left on device"))
    with pytest.raises(OSError, match="No space"):
        manager.save(values(2))
    mem_store.faults.clear()
    assert steps_on_disk(RUN, "ckpt") == [1, 2] and listed(RUN) == ["ckpt-1"]
    manager.save(values(3))
    assert steps_on_disk(RUN, "ckpt") == [3] and listed(RUN) == ["ckpt-3"]
    assert ckptlib.CheckpointManager(RUN, max_to_keep=1).checkpoints == [f"{RUN}/ckpt-3"]


def test_an_unreadable_state_file_is_a_storage_error_and_lists_nothing_new(tmp_path: Path) -> None:
    """A state file the saver cannot read (a symlink loop) fails the save with a ckptlib
    error naming it; the new checkpoint is complete but not listed, and nothing is deleted."""
    saver = ckptlib.Saver(max_to_keep=1)
    saver.save(values(1), tmp_path / "model.ckpt", global_step=1)
    (tmp_path / "checkpoint").unlink()
    (tmp_path / "checkpoint").symlink_to("checkpoint")
    with pytest.raises(ckptlib.StorageError, match="checkpoint"):
        saver.save(values(2), tmp_path / "model.ckpt", global_step=2)
    assert steps_on_disk(tmp_path) == [1, 2]


def test_a_state_file_too_large_to_read_is_replaced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    saver = ckptlib.Saver(max_to_keep=1)
    (tmp_path / "checkpoint").write_bytes(b"x" * ((64 << 20) + 1))
    with caplog.at_level(logging.WARNING, logger="ckptlib"):
        saver.save(values(1), tmp_path / "model.ckpt", global_step=1)
    assert "unreadable" in caplog.text
    assert listed(tmp_path) == ["model.ckpt-1"]
