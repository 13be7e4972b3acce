"""Other processes and threads looking into a save directory while a save runs.

Reading never writes: ``latest_checkpoint``, ``load_checkpoint`` and ``restore`` of a
directory leave every file as it is. Only a save repairs what killed saves left behind, only
for its own checkpoints, and only when the directory's save lock says no save is running
there (``ckptlib.store.local_lock``): liveness is never guessed from process ids or time stamps.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import ckptlib
from ckptlib.cli import main as cli_main
from ckptlib.store.local_lock import LOCK_NAME
from ckptlib.store.temp_names import ASIDE_MARKER, TEMP_MARKER

ROOT = Path(__file__).resolve().parent.parent
DAY = 86400.0


def state(version: int) -> dict[str, np.ndarray]:
    return {"w": np.full((64, 64), version, np.float32), "b": np.arange(100, dtype=np.int64) + version}


def backdate(directory: Path, seconds: float) -> None:
    """Give every file the mtime of an old copy (``cp -p``, ``rsync -a``, a restored backup)."""
    then = time.time() - seconds
    for name in os.listdir(directory):
        os.utime(directory / name, (then, then))


def slow_index_install(monkeypatch: pytest.MonkeyPatch, delay: float) -> None:
    """Stretch the moment between the new data files' renames and the new index's."""
    real = os.replace

    def replace(src: str, dst: str) -> None:
        if TEMP_MARKER in os.fspath(src) and os.fspath(dst).endswith(".index"):
            time.sleep(delay)
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


def assert_holds(prefix: str | Path, version: int) -> None:
    with ckptlib.load_checkpoint(prefix) as reader:
        assert reader.verify() == []
        got = {name: reader.get_tensor(name) for name in reader.keys_list()}
    want = state(version)
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value)


def leftovers(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if TEMP_MARKER in n or ASIDE_MARKER in n)


def test_a_reader_polling_during_an_overwrite_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread overwrites the fixed prefix ``best`` (files copied with an old mtime) with a
    slowed rename sequence while another thread polls the directory as resuming jobs and
    tools do. The overwrite completes whole; the poller never changed a file."""
    saver = ckptlib.Saver(max_to_keep=None)
    saver.save(state(1), tmp_path / "best")
    backdate(tmp_path, DAY)
    slow_index_install(monkeypatch, 0.3)
    done = threading.Event()
    errors: list[BaseException] = []

    def overwrite() -> None:
        try:
            saver.save(state(2), tmp_path / "best")
        except BaseException as e:
            errors.append(e)
        finally:
            done.set()

    writer = threading.Thread(target=overwrite)
    writer.start()
    polls = 0
    while not done.is_set():
        found = ckptlib.latest_checkpoint(tmp_path)
        assert found in (None, str(tmp_path / "best"))
        with pytest.raises(ckptlib.CheckpointNotFoundError):
            ckptlib.restore(tmp_path / "missing")
        polls += 1
    writer.join()
    assert not errors, errors
    assert polls > 10
    assert_holds(tmp_path / "best", 2)
    assert leftovers(tmp_path) == []


WRITER = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    import ckptlib
    from ckptlib.store.temp_names import TEMP_MARKER
    real = os.replace
    def replace(src, dst):
        if TEMP_MARKER in src and dst.endswith(".index"):
            time.sleep(float(sys.argv[2]))
        real(src, dst)
    os.replace = replace
    version = int(sys.argv[3])
    state = {"w": np.full((64, 64), version, np.float32), "b": np.arange(100, dtype=np.int64) + version}
    ckptlib.save(state, sys.argv[1])
    print("saved", flush=True)
    """
)


def test_another_process_polling_during_an_overwrite_changes_nothing(tmp_path: Path) -> None:
    """The same with the writer in its own process, the poller using every read entry
    point: ``latest_checkpoint``, ``load_checkpoint`` and ``restore`` of the directory, and
    the CLI's ``ls`` and ``verify``."""
    ckptlib.Saver(max_to_keep=None).save(state(1), tmp_path / "best")
    backdate(tmp_path, DAY)
    for version in (2, 3):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path / "best"), "0.5", str(version)],
            stdout=subprocess.PIPE,
            text=True,
        )
        while writer.poll() is None:
            ckptlib.latest_checkpoint(tmp_path)
            # the index is aside for a moment: not found, or a torn read, never a repair
            with contextlib.suppress(ckptlib.CheckpointError):
                ckptlib.restore(tmp_path)
            cli_main(["ls", str(tmp_path)])
        out, _ = writer.communicate()
        assert writer.returncode == 0 and out.strip() == "saved"
        assert_holds(tmp_path / "best", version)
        assert leftovers(tmp_path) == []
        backdate(tmp_path, DAY)


def _free_pid() -> int:
    """A process id no process outside holds now (the top of the range is rarely used)."""
    with open("/proc/sys/kernel/pid_max") as f:
        top = int(f.read())
    for pid in range(top - 100, top - 2000, -1):
        if not os.path.exists(f"/proc/{pid}"):
            return pid
    pytest.skip("no free process id found")


NAMESPACED_WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import ckptlib
    saver = ckptlib.Saver(max_to_keep=2, num_shards=2)
    for step in range(int(sys.argv[2])):
        state = {"w": np.full((512, 1024), step, np.float32), "b": np.arange(1000) + step}
        saver.save(state, sys.argv[1] + "/model.ckpt", global_step=step)
    print("saved", flush=True)
    """
)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None or not sys.platform.startswith("linux"),
    reason="needs root and unshare(1) to start a process in its own PID namespace",
)
def test_a_writer_in_another_pid_namespace_is_left_alone(tmp_path: Path) -> None:
    """The writer runs in its own PID namespace under a pid no process has outside it; a
    poller outside reads the directory and saves checkpoints of its own into it. Every one
    of the writer's saves completes."""
    pid = _free_pid()
    script = tmp_path / "writer.py"
    script.write_text(NAMESPACED_WRITER)
    run = tmp_path / "run"
    run.mkdir()
    # The shell sets the namespace's next pid, so the python it starts gets ``pid``.
    command = f"echo {pid - 1} > /proc/sys/kernel/ns_last_pid && {sys.executable} {script} {run} 25"
    try:
        writer = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", command],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    except OSError as e:
        pytest.skip(f"cannot start unshare: {e}")
    outside = ckptlib.Saver(max_to_keep=1)
    step = 0
    while writer.poll() is None:
        ckptlib.latest_checkpoint(run)
        outside.save({"x": np.arange(10)}, run / "other", global_step=step)
        step += 1
    out, err = writer.communicate()
    if "ns_last_pid" in err or "unshare:" in err:
        pytest.skip(f"no PID namespace here: {err.strip()}")
    assert writer.returncode == 0, err
    assert out.strip() == "saved"
    assert step > 3
    latest = ckptlib.latest_checkpoint(run, latest_filename=None)
    assert latest is not None
    with ckptlib.load_checkpoint(run / "model.ckpt-24") as reader:
        assert reader.verify() == []
    assert leftovers(run) == []


LOCK_HOLDER = textwrap.dedent(
    """
    import sys, time
    from ckptlib.store.local_lock import saving
    with saving(sys.argv[1]):
        print("holding", flush=True)
        time.sleep(600)
    """
)


def test_leftovers_wait_while_a_save_runs_and_go_once_its_process_dies(tmp_path: Path) -> None:
    """Another process is in the middle of a save (it holds the save lock): a save leaves
    every leftover alone, whatever its name says. Once that process is killed (the kernel
    drops its lock), the next save repairs its own checkpoints' leftovers and no others."""
    mine = [
        f"model.ckpt-1.index{TEMP_MARKER}0123456789abcdef",
        f"model.ckpt-1.data-00000-of-00001{TEMP_MARKER}fedcba9876543210",
        f"checkpoint{TEMP_MARKER}00112233445566ff",
        f"model.ckpt-1.data-00000-of-00001{TEMP_MARKER}h0badcafe-12345-0123456789ab",  # an older ckptlib's name
    ]
    others = [f"best.index{TEMP_MARKER}0123456789abcdef", f"other-3.data-00000-of-00001{TEMP_MARKER}aaaaaaaaaaaaaaaa"]
    not_ours = ["model.ckpt-1.index.tempstate123456", f"notes{TEMP_MARKER}abc"]
    for name in mine + others + not_ours:
        (tmp_path / name).write_bytes(b"partial")
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        ckptlib.Saver().save(state(1), tmp_path / "model.ckpt", global_step=2)
        left = set(os.listdir(tmp_path))
        assert set(mine + others + not_ours) <= left
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    ckptlib.Saver().save(state(1), tmp_path / "model.ckpt", global_step=3)
    left = set(os.listdir(tmp_path))
    assert not left & set(mine)
    assert set(others + not_ours) <= left
    assert LOCK_NAME in left


def test_reading_a_directory_with_leftovers_writes_nothing(tmp_path: Path) -> None:
    """A killed overwrite left the old checkpoint aside: readers report what is there and
    touch nothing; the next save of that checkpoint's saver puts it back."""
    ckptlib.save(state(1), tmp_path / "m")
    ckptlib.save(state(1), tmp_path / "keep")
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "m"\nall_model_checkpoint_paths: "keep"\n')
    os.replace(tmp_path / "m.index", tmp_path / f"m.index{ASIDE_MARKER}0123456789abcdef")
    (tmp_path / f"m.data-00000-of-00001{TEMP_MARKER}0123456789abcdef").write_bytes(b"partial")
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    assert ckptlib.latest_checkpoint(tmp_path) == str(tmp_path / "keep")
    ckptlib.restore(tmp_path)
    ckptlib.load_checkpoint(tmp_path).close()
    for command in (["ls", str(tmp_path)], ["verify", str(tmp_path)], ["inspect", str(tmp_path)]):
        cli_main(command)
    after = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    assert after == before
    ckptlib.save(state(2), tmp_path / "n")  # another prefix's save repairs nothing of m's
    assert not (tmp_path / "m.index").exists()
    ckptlib.Saver().save(state(3), tmp_path / "m", global_step=1)
    assert_holds(tmp_path / "m", 1)
    assert leftovers(tmp_path) == []


KILLED_BEFORE_INDEX = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    import ckptlib
    from ckptlib.store.temp_names import TEMP_MARKER
    real = os.replace
    def replace(src, dst):
        if TEMP_MARKER in src and dst.endswith(".index"):
            os._exit(9)  # killed just before the new index goes in
        real(src, dst)
    os.replace = replace
    ckptlib.save({"w": np.full(1000, float(sys.argv[2]), np.float32)}, sys.argv[1])
    """
)


def hold_save_lock(directory: Path) -> subprocess.Popen[str]:
    """Another process in the middle of a save in ``directory``: no repair runs there."""
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(directory)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
    return holder


def test_two_killed_overwrites_in_a_row_keep_the_checkpoint(tmp_path: Path) -> None:
    """Two overwrites of one prefix are killed before their index goes in, with no repair
    between them (another save was running): the last whole version survives, never an
    old index over a killed save's data."""
    prefix = tmp_path / "model.ckpt-5"
    ckptlib.save({"w": np.full(1000, 1.0, np.float32)}, prefix)
    for version in (2, 3):
        holder = hold_save_lock(tmp_path)
        subprocess.run([sys.executable, "-c", KILLED_BEFORE_INDEX, str(prefix), str(version)], check=False)
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    ckptlib.Saver(max_to_keep=None).save({"w": np.zeros(3)}, tmp_path / "model.ckpt", global_step=6)
    with ckptlib.load_checkpoint(prefix) as reader:
        assert reader.verify() == []
        np.testing.assert_array_equal(reader.get_tensor("w"), np.full(1000, 1.0, np.float32))
    assert leftovers(tmp_path) == []


def test_a_manager_made_while_another_saves_leaves_its_deletion_journal(tmp_path: Path) -> None:
    """An evaluation job constructs a manager on the directory while the trainer is saving:
    it must not finish (or forget) the trainer's pending deletions. Once no save runs, the
    next manager does."""
    manager = ckptlib.CheckpointManager(tmp_path, max_to_keep=1)
    manager.save(state(1))
    manager.save(state(2))
    ckptlib.save(state(1), tmp_path / "ckpt-1")  # as if the trainer dropped it and was killed
    journal = tmp_path / ".checkpoint.ckpt.deleting"
    journal.write_text('["ckpt-1"]')
    holder = hold_save_lock(tmp_path)
    try:
        ckptlib.CheckpointManager(tmp_path, max_to_keep=1)
        assert journal.exists() and (tmp_path / "ckpt-1.index").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    ckptlib.CheckpointManager(tmp_path, max_to_keep=1)
    assert not journal.exists() and not (tmp_path / "ckpt-1.index").exists()
    assert (tmp_path / "ckpt-2.index").exists()


def test_a_leftover_that_cannot_be_removed_does_not_fail_the_save(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """(Another user's leftover in a shared directory, say: here a directory by that name.)"""
    (tmp_path / f"checkpoint{TEMP_MARKER}0123456789abcdef").mkdir()
    with caplog.at_level("WARNING", logger="ckptlib"):
        prefix = ckptlib.Saver().save(state(1), tmp_path / "model.ckpt", global_step=1)
        ckptlib.CheckpointManager(tmp_path / "other", max_to_keep=1)
    assert "could not repair" in caplog.text
    assert_holds(prefix, 1)


def test_a_process_forked_during_a_save_does_not_keep_its_lock(tmp_path: Path) -> None:
    """(A data loader's worker forked while a save runs in another thread, say.)"""
    from ckptlib.store.local_lock import repair_if_idle, saving

    with saving(str(tmp_path)):
        child = os.fork()
        if child == 0:
            time.sleep(5)
            os._exit(0)
    try:
        deadline = time.monotonic() + 4
        repaired = False
        while not repaired and time.monotonic() < deadline:
            repaired = repair_if_idle(str(tmp_path), lambda: None)
            time.sleep(0.01)
        assert repaired, "the forked child still holds the save lock"
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def test_repair_takes_every_leftover_once_no_save_runs(tmp_path: Path) -> None:
    """``ckptlib repair DIR`` (and ``ckptlib.repair``): leftovers of checkpoints no saver
    will save again (a killed one-off save, a killed overwrite of an export) are repaired,
    whoever made them, but only while no save runs in the directory."""
    from ckptlib.cli import main

    ckptlib.save(state(1), tmp_path / "export")
    os.replace(tmp_path / "export.index", tmp_path / f"export.index{ASIDE_MARKER}0123456789abcdef")
    (tmp_path / f"export.data-00000-of-00001{TEMP_MARKER}0123456789abcdef").write_bytes(b"partial")
    (tmp_path / f"oneoff.index{TEMP_MARKER}fedcba9876543210").write_bytes(b"partial")
    ckptlib.Saver().save(state(2), tmp_path / "model.ckpt", global_step=2)  # not its checkpoints
    assert len(leftovers(tmp_path)) == 3
    holder = hold_save_lock(tmp_path)
    try:
        assert main(["repair", str(tmp_path)]) == 1
        assert len(leftovers(tmp_path)) == 3
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert main(["repair", str(tmp_path)]) == 0
    assert leftovers(tmp_path) == []
    assert_holds(tmp_path / "export", 1)
    with pytest.raises(ckptlib.CheckpointNotFoundError):
        ckptlib.repair(tmp_path / "missing")
