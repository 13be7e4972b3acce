"""The same save/rotate/restart sequences run by TensorFlow and by ckptlib, compared.

TF1 ``tf.compat.v1.train.Saver`` (graph mode) against ``ckptlib.Saver`` and
``tf.train.CheckpointManager`` (eager) against ``ckptlib.CheckpointManager``. Compared: the
files left in the directory, the state file's ``all_model_checkpoint_paths`` in order,
``latest_checkpoint`` as computed by both libraries on both directories, each library's state
file as parsed by the other, and values restored by each library from the other's checkpoints.

Deliberate differences, named where they show:

* ckptlib's hidden ``.checkpoint.lock`` file, and TF1's ``.meta`` MetaGraphDef (ckptlib does
  not write one) are left out of file comparisons;
* ckptlib records paths relative to the directory by default (TF1's Saver: absolute when the
  save path is absolute) -- ``Saver(save_relative_paths=False)`` records TF's exact strings;
* ckptlib's Saver writes timestamps (TF1's writes none);
* a new ckptlib Saver adopts its prefix's checkpoints from the state file (TF forgets them;
  ``recover=False`` is TF's behaviour);
* ``Saver(sharded=True)`` writes one shard per CPU (TF: one per device);
* ckptlib's CheckpointManager numbering continues after a restart.

Skipped as a whole, with a visible reason, where TensorFlow is not installed.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's C++ INFO/WARNING logs out of test output

tf = pytest.importorskip(
    "tensorflow",
    reason="TensorFlow is not installed: TF-vs-ckptlib scenario tests need tensorflow-cpu (pip install -e .[tf])",
)

import ckptlib  # noqa: E402
from ckptlib.state import read_state_file  # noqa: E402

LOCK_FILE = ".checkpoint.lock"
T0 = 1_700_000_000.0


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def values(step: int) -> dict[str, np.ndarray]:
    return {
        "v": np.array([step, step + 0.5, -step], np.float32),
        "w": np.arange(4, dtype=np.float32).reshape(2, 2) * step,
    }


def step_of(prefix: str) -> int:
    return int(prefix.rsplit("-", 1)[1])


def is_lock_file(name: str) -> bool:
    """ckptlib's hidden ``.<state file name>.lock`` (``.checkpoint.lock`` by default)."""
    return name == LOCK_FILE or (name.startswith(".") and name.endswith(".lock"))


def files_left(directory: Path | str) -> list[str]:
    """The directory's files, leaving out ckptlib's hidden lock file and TF1's ``.meta``
    MetaGraphDefs (deliberate differences: ckptlib locks the state file and writes no
    MetaGraphDef; the tests pass write_meta_graph=False anyway)."""
    return sorted(f for f in os.listdir(directory) if not is_lock_file(f) and not f.endswith(".meta"))


def prefixes_left(directory: Path | str) -> list[str]:
    return sorted(f[: -len(".index")] for f in os.listdir(directory) if f.endswith(".index"))


class Clock:
    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """A controlled ``time.time`` seen by TF's saver.py / checkpoint_management.py and ckptlib alike."""
    c = Clock()
    monkeypatch.setattr(time, "time", c)
    return c


# --- TF1 graph-mode Saver ----------------------------------------------------------------------


class TF1Model:
    """Two resource variables ``v`` and ``w`` in their own graph, with an assign op."""

    def __init__(self, **saver_args):
        self.graph = tf.Graph()
        with self.graph.as_default():
            zeros = tf.compat.v1.zeros_initializer()
            self.v = tf.compat.v1.get_variable("v", shape=[3], dtype=tf.float32, initializer=zeros)
            self.w = tf.compat.v1.get_variable("w", shape=[2, 2], dtype=tf.float32, initializer=zeros)
            self.pv = tf.compat.v1.placeholder(tf.float32, [3])
            self.pw = tf.compat.v1.placeholder(tf.float32, [2, 2])
            self.assign = tf.group(self.v.assign(self.pv), self.w.assign(self.pw))
            self.init = tf.compat.v1.global_variables_initializer()
            self.saver = tf.compat.v1.train.Saver(**saver_args)
        self.sess = tf.compat.v1.Session(graph=self.graph)
        self.sess.run(self.init)

    def save(self, path: str, step: int | None, **kwargs) -> str:
        vals = values(step or 0)
        with self.graph.as_default():  # Saver.save outside its graph would rebuild it eagerly
            self.sess.run(self.assign, {self.pv: vals["v"], self.pw: vals["w"]})
            return self.saver.save(self.sess, path, global_step=step, write_meta_graph=False, **kwargs)

    def restore(self, prefix: str) -> dict[str, np.ndarray]:
        with self.graph.as_default():
            self.saver.restore(self.sess, prefix)
            v, w = self.sess.run([self.v, self.w])
        return {"v": v, "w": w}

    def close(self) -> None:
        self.sess.close()


def tf1_restore(prefix: str) -> dict[str, np.ndarray]:
    model = TF1Model()
    try:
        return model.restore(prefix)
    finally:
        model.close()


def run_both(
    tf_path: str,
    ck_path: str,
    steps: Sequence[int | None],
    *,
    tf_args: dict | None = None,
    ck_args: dict | None = None,
    save_args: dict | None = None,
    clock: Clock | None = None,
    times: Sequence[float] | None = None,
) -> tuple[list[str], list[str]]:
    """Run one save sequence with TF1's Saver and with ckptlib's; same clock readings for both
    (each saver is built at ``T0``, save ``i`` happens at ``times[i]``)."""
    save_args = save_args or {}

    def tick(i: int) -> None:
        if clock is not None and times is not None:
            clock.now = times[i]

    if clock is not None:
        clock.now = T0
    model = TF1Model(**(tf_args or {}))
    p_tf = []
    for i, step in enumerate(steps):
        tick(i)
        p_tf.append(model.save(tf_path, step, **save_args))
    model.close()

    if clock is not None:
        clock.now = T0
    saver = ckptlib.Saver(**(ck_args or {}))
    p_ck = []
    for i, step in enumerate(steps):
        tick(i)
        p_ck.append(saver.save(values(step or 0), ck_path, global_step=step, **save_args))
    return p_tf, p_ck


def assert_same_values(restored: dict[str, np.ndarray], step: int) -> None:
    expected = values(step)
    for name in ("v", "w"):
        np.testing.assert_array_equal(restored[name], expected[name])


def compare(d_tf: Path | str, d_ck: Path | str, latest_filename: str | None = None, *, same_files: bool = True) -> None:
    """The common comparison of two directories after the same sequence."""
    if same_files:
        assert files_left(d_tf) == files_left(d_ck)
    else:
        assert prefixes_left(d_tf) == prefixes_left(d_ck)
    # the state files, each parsed by both libraries
    states = {}
    for name, d in (("tf", d_tf), ("ck", d_ck)):
        st_tf = tf.train.get_checkpoint_state(str(d), latest_filename)
        st_ck = ckptlib.get_checkpoint_state(d, latest_filename)
        assert st_tf is not None and st_ck is not None
        assert st_ck.model_checkpoint_path == st_tf.model_checkpoint_path
        assert list(st_ck.all_model_checkpoint_paths) == list(st_tf.all_model_checkpoint_paths)
        assert list(st_ck.all_model_checkpoint_timestamps) == list(st_tf.all_model_checkpoint_timestamps)
        assert st_ck.last_preserved_timestamp == st_tf.last_preserved_timestamp
        states[name] = st_ck
    names = {k: [os.path.basename(p) for p in st.all_model_checkpoint_paths] for k, st in states.items()}
    assert names["tf"] == names["ck"]
    # latest_checkpoint by both libraries on both directories
    latest = {}
    for name, d in (("tf", d_tf), ("ck", d_ck)):
        by_tf = tf.train.latest_checkpoint(str(d), latest_filename)
        by_ck = ckptlib.latest_checkpoint(d, latest_filename)
        assert by_tf == by_ck
        latest[name] = by_ck
    assert os.path.basename(latest["tf"]) == os.path.basename(latest["ck"])
    # values: ckptlib restores TF's files, TF restores ckptlib's
    step = step_of(latest["tf"]) if "-" in os.path.basename(latest["tf"]) else 0
    from_tf = ckptlib.restore(latest["tf"])
    assert sorted(from_tf) == ["v", "w"]
    assert_same_values(from_tf, step)
    assert_same_values(tf1_restore(latest["ck"]), step)
    target = {"v": np.zeros(3, np.float32), "w": np.zeros((2, 2), np.float32)}
    ckptlib.Saver().restore(target, latest["tf"])
    assert_same_values(target, step)


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    d_tf, d_ck = tmp_path / "tf", tmp_path / "ck"
    d_tf.mkdir()
    d_ck.mkdir()
    return d_tf, d_ck


# ---------------------------------------------------------------------------------------------
# TF1 Saver
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_to_keep", [0, 1, 3, None])
def test_saver_max_to_keep_relative_paths_differ_deliberately(dirs: tuple[Path, Path], max_to_keep: int | None) -> None:
    d_tf, d_ck = dirs
    steps = [0, 10, 20, 30, 40]
    p_tf, p_ck = run_both(
        str(d_tf / "model.ckpt"),
        str(d_ck / "model.ckpt"),
        steps,
        tf_args={"max_to_keep": max_to_keep},
        ck_args={"max_to_keep": max_to_keep},
    )
    assert [os.path.basename(p) for p in p_tf] == [os.path.basename(p) for p in p_ck]
    compare(d_tf, d_ck)
    # deliberate difference: TF records the absolute paths it was given, ckptlib relative ones
    raw_tf, raw_ck = read_state_file(str(d_tf / "checkpoint")), read_state_file(str(d_ck / "checkpoint"))
    assert raw_tf is not None and raw_ck is not None
    assert raw_tf.model_checkpoint_path == str(d_tf / "model.ckpt-40")
    assert raw_ck.model_checkpoint_path == "model.ckpt-40"
    # deliberate difference: ckptlib's Saver writes timestamps, TF1's none
    assert raw_tf.all_model_checkpoint_timestamps == ()
    assert len(raw_ck.all_model_checkpoint_timestamps) == len(raw_ck.all_model_checkpoint_paths)


def test_saver_resaving_a_step(dirs: tuple[Path, Path]) -> None:
    """Re-saving a step moves it to the newest place in both libraries."""
    d_tf, d_ck = dirs
    args = {"max_to_keep": 3}
    run_both(str(d_tf / "model.ckpt"), str(d_ck / "model.ckpt"), [1, 2, 3, 2, 4], tf_args=args, ck_args=args)
    assert prefixes_left(d_tf) == ["model.ckpt-2", "model.ckpt-3", "model.ckpt-4"]
    compare(d_tf, d_ck)


@pytest.mark.parametrize("relative", [False, True])
def test_saver_records_tf_strings_with_the_same_option(dirs: tuple[Path, Path], relative: bool) -> None:
    """``save_relative_paths`` set alike: identical recorded strings (up to the directory name)."""
    d_tf, d_ck = dirs
    run_both(
        str(d_tf / "model.ckpt"),
        str(d_ck / "model.ckpt"),
        [1, 2, 3],
        tf_args={"max_to_keep": 2, "save_relative_paths": relative},
        ck_args={"max_to_keep": 2, "save_relative_paths": relative},
    )
    raw_tf, raw_ck = read_state_file(str(d_tf / "checkpoint")), read_state_file(str(d_ck / "checkpoint"))
    assert raw_tf is not None and raw_ck is not None

    def same_dir(s: str) -> str:
        return s.replace(str(d_tf), "DIR").replace(str(d_ck), "DIR")

    assert same_dir(raw_ck.model_checkpoint_path) == same_dir(raw_tf.model_checkpoint_path)
    assert [same_dir(p) for p in raw_ck.all_model_checkpoint_paths] == [
        same_dir(p) for p in raw_tf.all_model_checkpoint_paths
    ]
    expected = ["model.ckpt-2", "model.ckpt-3"] if relative else ["DIR/model.ckpt-2", "DIR/model.ckpt-3"]
    assert [same_dir(p) for p in raw_ck.all_model_checkpoint_paths] == expected
    compare(d_tf, d_ck)


@pytest.mark.parametrize("hours", [1.0, 0.5])
def test_saver_keep_checkpoint_every_n_hours(dirs: tuple[Path, Path], clock: Clock, hours: float) -> None:
    d_tf, d_ck = dirs
    steps = list(range(1, 11))
    times = [T0 + k * 1500.0 for k in steps]
    args = {"max_to_keep": 2, "keep_checkpoint_every_n_hours": hours}
    run_both(
        str(d_tf / "model.ckpt"), str(d_ck / "model.ckpt"), steps, tf_args=args, ck_args=args, clock=clock, times=times
    )
    clock.now = times[-1] + 1
    assert len(prefixes_left(d_tf)) > 2  # some were preserved
    compare(d_tf, d_ck)


def test_saver_clock_stepping_back(dirs: tuple[Path, Path], clock: Clock) -> None:
    """The wall clock steps back (NTP, VM migration) between saves. TF lists checkpoints in the
    order they were saved, newest last, and so does ckptlib."""
    d_tf, d_ck = dirs
    times = [T0 + 1000, T0 + 2000, T0 + 500]
    args = {"max_to_keep": 3}
    run_both(
        str(d_tf / "model.ckpt"),
        str(d_ck / "model.ckpt"),
        [1, 2, 3],
        tf_args=args,
        ck_args=args,
        clock=clock,
        times=times,
    )
    compare(d_tf, d_ck)


def test_saver_keep_checkpoint_every_zero_hours(dirs: tuple[Path, Path], clock: Clock) -> None:
    """TF: ``keep_checkpoint_every_n_hours=0`` makes ``_next_checkpoint_time`` the construction
    time and never advances it, so every checkpoint evicted from the newest ``max_to_keep`` is
    kept on disk (saver.py ``_MaybeDeleteOldCheckpoints``: ``should_keep = p[1] > next``).
    ckptlib's Saver does the same (0 is not "off")."""
    d_tf, d_ck = dirs
    steps = [1, 2, 3, 4]
    times = [T0 + k for k in steps]
    args = {"max_to_keep": 1, "keep_checkpoint_every_n_hours": 0.0}
    run_both(
        str(d_tf / "model.ckpt"), str(d_ck / "model.ckpt"), steps, tf_args=args, ck_args=args, clock=clock, times=times
    )
    assert prefixes_left(d_tf) == [f"model.ckpt-{s}" for s in steps]
    assert prefixes_left(d_ck) == prefixes_left(d_tf)


def test_saver_custom_latest_filename(dirs: tuple[Path, Path]) -> None:
    d_tf, d_ck = dirs
    run_both(
        str(d_tf / "model.ckpt"),
        str(d_ck / "model.ckpt"),
        [5, 6, 7],
        tf_args={"max_to_keep": 2},
        ck_args={"max_to_keep": 2},
        save_args={"latest_filename": "my_state"},
    )
    assert "my_state" in files_left(d_tf) and "checkpoint" not in files_left(d_tf)
    compare(d_tf, d_ck, "my_state")
    assert tf.train.latest_checkpoint(str(d_ck)) is None and ckptlib.latest_checkpoint(d_tf) is None


def test_saver_without_global_step(dirs: tuple[Path, Path]) -> None:
    d_tf, d_ck = dirs
    run_both(str(d_tf / "model.ckpt"), str(d_ck / "model.ckpt"), [None, None], tf_args={}, ck_args={})
    compare(d_tf, d_ck)
    assert prefixes_left(d_tf) == ["model.ckpt"]


def test_saver_sharded(dirs: tuple[Path, Path]) -> None:
    """TF ``sharded=True`` on one device writes one data shard; ckptlib's writes one per CPU (at
    most one per tensor): compare the checkpoints left, not their data files."""
    d_tf, d_ck = dirs
    p_tf, p_ck = run_both(
        str(d_tf / "model.ckpt"),
        str(d_ck / "model.ckpt"),
        [1, 2, 3],
        tf_args={"max_to_keep": 2, "sharded": True},
        ck_args={"max_to_keep": 2, "sharded": True},
    )
    assert [os.path.basename(p) for p in p_tf] == [os.path.basename(p) for p in p_ck]
    assert [f for f in files_left(d_tf) if ".data-" in f] == [
        "model.ckpt-2.data-00000-of-00001",
        "model.ckpt-3.data-00000-of-00001",
    ]
    assert not [f for f in os.listdir(d_tf) if "_temp" in f]
    compare(d_tf, d_ck, same_files=False)
    # every checkpoint left restores in the other library
    for prefix in prefixes_left(d_ck):
        assert_same_values(tf1_restore(str(d_ck / prefix)), step_of(prefix))
        assert_same_values(ckptlib.restore(d_tf / prefix), step_of(prefix))


def test_saver_num_shards_restores_in_tf(tmp_path: Path) -> None:
    prefix = ckptlib.Saver(num_shards=3).save(values(9), tmp_path / "model.ckpt", global_step=9)
    assert len([f for f in os.listdir(tmp_path) if ".data-" in f]) == 3
    assert_same_values(tf1_restore(prefix), 9)
    assert tf.train.latest_checkpoint(str(tmp_path)) == prefix


@pytest.mark.parametrize("with_dir", [False, True])
def test_saver_relative_save_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_dir: bool) -> None:
    """A save path relative to the working directory: both libraries record the same strings."""
    sub = "run/" if with_dir else ""
    for lib in ("tf", "ck"):
        (tmp_path / lib).mkdir()
        monkeypatch.chdir(tmp_path / lib)
        if with_dir:
            os.mkdir("run")
        if lib == "tf":
            model = TF1Model(max_to_keep=2)
            prefixes = [model.save(f"{sub}model.ckpt", s) for s in (1, 2, 3)]
            model.close()
        else:
            saver = ckptlib.Saver(max_to_keep=2)
            prefixes = [saver.save(values(s), f"{sub}model.ckpt", global_step=s) for s in (1, 2, 3)]
        assert prefixes == [f"{sub}model.ckpt-{s}" for s in (1, 2, 3)]
    monkeypatch.chdir(tmp_path)
    d_tf, d_ck = Path("tf") / sub, Path("ck") / sub
    raw_tf, raw_ck = read_state_file(str(d_tf / "checkpoint")), read_state_file(str(d_ck / "checkpoint"))
    assert raw_tf is not None and raw_ck is not None
    assert raw_ck.model_checkpoint_path == raw_tf.model_checkpoint_path == "model.ckpt-3"
    assert list(raw_ck.all_model_checkpoint_paths) == list(raw_tf.all_model_checkpoint_paths)
    compare(str(d_tf).rstrip("/") or ".", str(d_ck).rstrip("/") or ".")


def test_saver_restart_adoption_differs_deliberately(dirs: tuple[Path, Path]) -> None:
    """TF's new Saver forgets the checkpoints of the previous run (they stay on disk forever);
    ckptlib's adopts them, so max_to_keep holds. ``recover=False`` behaves like TF."""
    d_tf, d_ck = dirs
    d_ck_tf_like = d_ck.parent / "ck_tf_like"
    for d in (d_tf, d_ck, d_ck_tf_like):
        model = TF1Model(max_to_keep=2)
        for s in (1, 2, 3):
            model.save(str(d / "model.ckpt"), s)
        model.close()
    model = TF1Model(max_to_keep=2)
    for s in (4, 5, 6):
        model.save(str(d_tf / "model.ckpt"), s)
    model.close()
    ck = ckptlib.Saver(max_to_keep=2, save_relative_paths=False)
    ck_tf_like = ckptlib.Saver(max_to_keep=2, save_relative_paths=False, recover=False)
    for s in (4, 5, 6):
        ck.save(values(s), d_ck / "model.ckpt", global_step=s)
        ck_tf_like.save(values(s), d_ck_tf_like / "model.ckpt", global_step=s)
    assert prefixes_left(d_tf) == ["model.ckpt-2", "model.ckpt-3", "model.ckpt-5", "model.ckpt-6"]
    assert prefixes_left(d_ck_tf_like) == prefixes_left(d_tf)
    assert prefixes_left(d_ck) == ["model.ckpt-5", "model.ckpt-6"]
    compare(d_tf, d_ck_tf_like)
    # the adopting saver's state lists exactly what is left on disk
    st = ckptlib.get_checkpoint_state(d_ck)
    assert st is not None and [os.path.basename(p) for p in st.all_model_checkpoint_paths] == prefixes_left(d_ck)


def test_ckptlib_resumes_a_tf1_run(tmp_path: Path) -> None:
    """TF1 trains and saves; ckptlib resumes from tf.train's latest and continues the rotation."""
    model = TF1Model(max_to_keep=3)
    for s in range(5):
        model.save(str(tmp_path / "model.ckpt"), s)
    model.close()
    latest = ckptlib.latest_checkpoint(tmp_path)
    assert latest == tf.train.latest_checkpoint(str(tmp_path)) == str(tmp_path / "model.ckpt-4")
    target = {"v": np.zeros(3, np.float32), "w": np.zeros((2, 2), np.float32)}
    saver = ckptlib.Saver(max_to_keep=3)
    saver.restore(target, latest)
    assert_same_values(target, 4)
    for s in range(5, 8):
        saver.save(values(s), tmp_path / "model.ckpt", global_step=s)
    assert prefixes_left(tmp_path) == [f"model.ckpt-{s}" for s in (5, 6, 7)]
    st = tf.train.get_checkpoint_state(str(tmp_path))
    assert [os.path.basename(p) for p in st.all_model_checkpoint_paths] == [
        "model.ckpt-5",
        "model.ckpt-6",
        "model.ckpt-7",
    ]
    assert_same_values(tf1_restore(tf.train.latest_checkpoint(str(tmp_path))), 7)


def test_moved_tf1_directory_differs_deliberately(tmp_path: Path) -> None:
    """TF1's state file holds absolute paths; after the run directory moves, TF finds nothing
    while ckptlib falls back to the same names inside the moved directory."""
    old, new = tmp_path / "old", tmp_path / "new"
    model = TF1Model(max_to_keep=2)
    for s in (1, 2, 3):
        model.save(str(old / "model.ckpt"), s)
    model.close()
    shutil.move(str(old), str(new))
    assert tf.train.latest_checkpoint(str(new)) is None
    assert ckptlib.latest_checkpoint(new) == str(new / "model.ckpt-3")
    assert_same_values(ckptlib.restore(new), 3)


def test_incomplete_newest_checkpoint_differs_deliberately(tmp_path: Path) -> None:
    """A missing data shard: TF's latest_checkpoint only looks for the index and returns the
    broken checkpoint; ckptlib's returns the newest complete one."""
    saver = ckptlib.Saver(max_to_keep=3)
    prefixes = [saver.save(values(s), tmp_path / "model.ckpt", global_step=s) for s in (1, 2, 3)]
    os.remove(prefixes[-1] + ".data-00000-of-00001")
    assert tf.train.latest_checkpoint(str(tmp_path)) == prefixes[-1]
    assert ckptlib.latest_checkpoint(tmp_path) == prefixes[-2]
    os.remove(prefixes[-1] + ".index")
    assert tf.train.latest_checkpoint(str(tmp_path)) is None
    assert ckptlib.latest_checkpoint(tmp_path) == prefixes[-2]


# ---------------------------------------------------------------------------------------------
# CheckpointManager
# ---------------------------------------------------------------------------------------------

V_KEY = "v/.ATTRIBUTES/VARIABLE_VALUE"
COUNTER_KEY = "save_counter/.ATTRIBUTES/VARIABLE_VALUE"


def object_graph() -> bytes:
    """The minimal ``TrackableObjectGraph`` of ``tf.train.Checkpoint(v=...)`` (FORMAT.md section 12)."""
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    root = graph.nodes.add()
    root.children.add(node_id=1, local_name="v")
    root.children.add(node_id=2, local_name="save_counter")
    graph.nodes.add().attributes.add(name="VARIABLE_VALUE", full_name="v", checkpoint_key=V_KEY)
    graph.nodes.add().attributes.add(name="VARIABLE_VALUE", full_name="save_counter", checkpoint_key=COUNTER_KEY)
    return graph.SerializeToString()


def manager_state(step: int, counter: int) -> dict:
    """What ckptlib's manager saves so that ``tf.train.Checkpoint(v=...)`` restores it."""
    return {
        V_KEY: values(step)["v"],
        COUNTER_KEY: np.int64(counter),
        "_CHECKPOINTABLE_OBJECT_GRAPH": object_graph(),
    }


class TFManager:
    def __init__(self, directory: Path, **kwargs):
        self.v = tf.Variable(np.zeros(3, np.float32))
        self.ckpt = tf.train.Checkpoint(v=self.v)
        self.manager = tf.train.CheckpointManager(self.ckpt, str(directory), **kwargs)

    def save(self, step: int, **kwargs) -> str:
        self.v.assign(values(step)["v"])
        return self.manager.save(**kwargs)


def tf2_restore(prefix: str) -> np.ndarray:
    v = tf.Variable(np.zeros(3, np.float32))
    tf.train.Checkpoint(v=v).restore(prefix).assert_consumed()
    return v.numpy()


def run_managers(
    d_tf: Path,
    d_ck: Path,
    steps: Sequence[int],
    clock: Clock | None = None,
    times: Sequence[float] | None = None,
    **kwargs,
) -> tuple[tuple[TFManager, ckptlib.CheckpointManager], tuple[list[str], list[str]]]:
    """The same sequence with TF's manager and ckptlib's (each built at ``T0`` when clocked)."""

    def tick(i: int) -> None:
        if clock is not None and times is not None:
            clock.now = times[i]

    if clock is not None:
        clock.now = T0
    tfm = TFManager(d_tf, **kwargs)
    p_tf = []
    for i, step in enumerate(steps):
        tick(i)
        p_tf.append(tfm.save(step))

    if clock is not None:
        clock.now = T0
    ckm = ckptlib.CheckpointManager(d_ck, **kwargs)
    p_ck = []
    for i, step in enumerate(steps):
        tick(i)
        p_ck.append(ckm.save(manager_state(step, i + 1)))
    return (tfm, ckm), (p_tf, p_ck)


def compare_managers(d_tf: Path, d_ck: Path, tfm: TFManager, ckm: ckptlib.CheckpointManager) -> None:
    # files left: identical except ckptlib's hidden lock file
    assert files_left(d_tf) == files_left(d_ck)
    assert [os.path.basename(p) for p in tfm.manager.checkpoints] == [os.path.basename(p) for p in ckm.checkpoints]
    assert os.path.basename(tfm.manager.latest_checkpoint) == os.path.basename(ckm.latest_checkpoint)
    raw = {k: read_state_file(str(d / "checkpoint")) for k, d in (("tf", d_tf), ("ck", d_ck))}
    assert raw["tf"] is not None and raw["ck"] is not None
    # both write relative paths and one timestamp per path
    assert raw["ck"].model_checkpoint_path == raw["tf"].model_checkpoint_path
    assert raw["ck"].all_model_checkpoint_paths == raw["tf"].all_model_checkpoint_paths
    assert len(raw["ck"].all_model_checkpoint_timestamps) == len(raw["tf"].all_model_checkpoint_timestamps)
    assert len(raw["tf"].all_model_checkpoint_timestamps) == len(raw["tf"].all_model_checkpoint_paths)
    for d in (d_tf, d_ck):
        assert tf.train.latest_checkpoint(str(d)) == ckptlib.latest_checkpoint(d)
        st_tf, st_ck = tf.train.get_checkpoint_state(str(d)), ckptlib.get_checkpoint_state(d)
        assert list(st_tf.all_model_checkpoint_paths) == list(st_ck.all_model_checkpoint_paths)
        assert list(st_tf.all_model_checkpoint_timestamps) == list(st_ck.all_model_checkpoint_timestamps)
        assert st_tf.last_preserved_timestamp == st_ck.last_preserved_timestamp
    # restores by each side
    latest_tf, latest_ck = tfm.manager.latest_checkpoint, ckm.latest_checkpoint
    step = int(ckptlib.restore(latest_ck)[V_KEY][0])
    from_tf = ckptlib.restore(latest_tf)
    np.testing.assert_array_equal(from_tf[V_KEY], values(step)["v"])
    assert COUNTER_KEY in from_tf and "_CHECKPOINTABLE_OBJECT_GRAPH" in from_tf
    np.testing.assert_array_equal(tf2_restore(latest_ck), values(step)["v"])


@pytest.mark.parametrize("max_to_keep", [1, 3, None])
def test_manager_max_to_keep(dirs: tuple[Path, Path], max_to_keep: int | None) -> None:
    d_tf, d_ck = dirs
    (tfm, ckm), (p_tf, p_ck) = run_managers(d_tf, d_ck, [1, 2, 3, 4, 5], max_to_keep=max_to_keep)
    assert [os.path.basename(p) for p in p_tf] == [os.path.basename(p) for p in p_ck]
    assert [os.path.basename(p) for p in p_ck] == [f"ckpt-{n}" for n in range(1, 6)]
    compare_managers(d_tf, d_ck, tfm, ckm)


def test_manager_keep_checkpoint_every_n_hours(dirs: tuple[Path, Path], clock: Clock) -> None:
    d_tf, d_ck = dirs
    steps = list(range(1, 11))
    times = [T0 + k * 1500.0 for k in steps]
    (tfm, ckm), _ = run_managers(
        d_tf, d_ck, steps, clock=clock, times=times, max_to_keep=2, keep_checkpoint_every_n_hours=1.0
    )
    assert len(prefixes_left(d_tf)) > 2
    compare_managers(d_tf, d_ck, tfm, ckm)
    raw_tf, raw_ck = read_state_file(str(d_tf / "checkpoint")), read_state_file(str(d_ck / "checkpoint"))
    assert raw_ck == raw_tf  # same clock: the state files say exactly the same
    # restart over the same directories at a later time: the same managed set on both sides
    clock.now = times[-1] + 100
    tf_again = TFManager(d_tf, max_to_keep=2, keep_checkpoint_every_n_hours=1.0)
    ck_again = ckptlib.CheckpointManager(d_ck, max_to_keep=2, keep_checkpoint_every_n_hours=1.0)
    assert [os.path.basename(p) for p in tf_again.manager.checkpoints] == [
        os.path.basename(p) for p in ck_again.checkpoints
    ]


def test_manager_clock_stepping_back(dirs: tuple[Path, Path], clock: Clock) -> None:
    """TF's manager writes its OrderedDict in save order, and so does ckptlib's, even after
    the clock steps back."""
    d_tf, d_ck = dirs
    (tfm, ckm), _ = run_managers(
        d_tf, d_ck, [1, 2, 3], clock=clock, times=[T0 + 1000, T0 + 2000, T0 + 500], max_to_keep=3
    )
    assert [os.path.basename(p) for p in tfm.manager.checkpoints] == ["ckpt-1", "ckpt-2", "ckpt-3"]
    compare_managers(d_tf, d_ck, tfm, ckm)


def test_manager_checkpoint_number(dirs: tuple[Path, Path]) -> None:
    d_tf, d_ck = dirs
    tfm = TFManager(d_tf, max_to_keep=3)
    ckm = ckptlib.CheckpointManager(d_ck, max_to_keep=3)
    out_tf, out_ck = [], []
    for i, number in enumerate([None, 100, None, 7, None, 100, None]):
        out_tf.append(tfm.save(i, checkpoint_number=number))
        out_ck.append(ckm.save(manager_state(i, i + 1), checkpoint_number=number))
    assert [os.path.basename(p) for p in out_tf] == [os.path.basename(p) for p in out_ck]
    compare_managers(d_tf, d_ck, tfm, ckm)


def test_manager_checkpoint_interval(dirs: tuple[Path, Path]) -> None:
    d_tf, d_ck = dirs
    tf_step = tf.Variable(0, dtype=tf.int64)
    ck_step = {"n": 0}
    tfm = TFManager(d_tf, max_to_keep=None, step_counter=tf_step, checkpoint_interval=10)
    ckm = ckptlib.CheckpointManager(d_ck, max_to_keep=None, step_counter=lambda: ck_step["n"], checkpoint_interval=10)
    out_tf, out_ck = [], []
    for i, (n, check) in enumerate([(0, True), (5, True), (10, True), (10, True), (15, False), (20, True), (25, True)]):
        tf_step.assign(n)
        ck_step["n"] = n
        out_tf.append(tfm.save(i, check_interval=check))
        out_ck.append(ckm.save(manager_state(i, i + 1), check_interval=check))
    assert [p and os.path.basename(p) for p in out_tf] == [p and os.path.basename(p) for p in out_ck]
    assert files_left(d_tf) == files_left(d_ck)


def test_manager_restore_or_initialize_then_interval(dirs: tuple[Path, Path]) -> None:
    """After restore_or_initialize, neither TF's manager nor ckptlib's saves again at the
    restored step."""
    d_tf, d_ck = dirs
    tf_step = tf.Variable(0, dtype=tf.int64)
    TFManager(d_tf, max_to_keep=3).save(0)
    ckptlib.CheckpointManager(d_ck, max_to_keep=3).save(manager_state(0, 1))
    tf_step.assign(5)
    tfm = TFManager(d_tf, max_to_keep=3, step_counter=tf_step, checkpoint_interval=10)
    ckm = ckptlib.CheckpointManager(d_ck, max_to_keep=3, step_counter=lambda: 5, checkpoint_interval=10)
    assert os.path.basename(tfm.manager.restore_or_initialize()) == os.path.basename(ckm.restore_or_initialize())
    assert tfm.save(1) is None
    assert ckm.save(manager_state(1, 2)) is None


def test_manager_restore_or_initialize(dirs: tuple[Path, Path]) -> None:
    d_tf, d_ck = dirs
    calls: list[str] = []
    v = tf.Variable(np.zeros(3, np.float32))
    tfm = tf.train.CheckpointManager(
        tf.train.Checkpoint(v=v), str(d_tf), max_to_keep=2, init_fn=lambda: calls.append("tf")
    )
    ckm = ckptlib.CheckpointManager(d_ck, max_to_keep=2)
    assert tfm.restore_or_initialize() is None
    assert ckm.restore_or_initialize(init_fn=lambda: calls.append("ck")) is None
    assert calls == ["tf", "ck"]
    # with checkpoints: each restores the one the *other* library wrote
    TFManager(d_tf, max_to_keep=2).save(3)
    ckptlib.CheckpointManager(d_ck, max_to_keep=2).save(manager_state(4, 1))
    swapped_tf = d_tf.parent / "tf_reads_ck"
    swapped_ck = d_tf.parent / "ck_reads_tf"
    shutil.copytree(d_ck, swapped_tf)
    shutil.copytree(d_tf, swapped_ck)
    v2 = tf.Variable(np.zeros(3, np.float32))
    tfm2 = tf.train.CheckpointManager(tf.train.Checkpoint(v=v2), str(swapped_tf), max_to_keep=2)
    assert tfm2.restore_or_initialize() == str(swapped_tf / "ckpt-1")
    np.testing.assert_array_equal(v2.numpy(), values(4)["v"])
    ckm2 = ckptlib.CheckpointManager(swapped_ck, max_to_keep=2)
    target = {V_KEY: np.zeros(3, np.float32)}
    assert ckptlib.restore(swapped_ck / "ckpt-1", into=target, strict=False).restored == [V_KEY]
    assert ckm2.restore_or_initialize() == str(swapped_ck / "ckpt-1")
    np.testing.assert_array_equal(target[V_KEY], values(3)["v"])


@pytest.mark.parametrize("writer", ["tf", "ck"])
def test_manager_restart_over_an_existing_directory(tmp_path: Path, writer: str) -> None:
    """A new TF manager and a new ckptlib manager over the same directory manage the same
    checkpoints, and continue the rotation the same way once TF's counter is restored."""
    origin = tmp_path / "origin"
    origin.mkdir()
    if writer == "tf":
        first = TFManager(origin, max_to_keep=3)
        for s in range(1, 5):
            first.save(s)
    else:
        ck_first = ckptlib.CheckpointManager(origin, max_to_keep=3)
        for s in range(1, 5):
            ck_first.save(manager_state(s, s))
    d_tf, d_ck = tmp_path / "tf", tmp_path / "ck"
    shutil.copytree(origin, d_tf)
    shutil.copytree(origin, d_ck)

    tfm = TFManager(d_tf, max_to_keep=3)
    ckm = ckptlib.CheckpointManager(d_ck, max_to_keep=3)
    assert [os.path.basename(p) for p in tfm.manager.checkpoints] == ["ckpt-2", "ckpt-3", "ckpt-4"]
    assert [os.path.basename(p) for p in ckm.checkpoints] == ["ckpt-2", "ckpt-3", "ckpt-4"]
    assert os.path.basename(tfm.manager.latest_checkpoint) == os.path.basename(ckm.latest_checkpoint) == "ckpt-4"
    # TF continues the numbering only once restore_or_initialize restored save_counter;
    # ckptlib's manager continues it regardless (deliberate difference)
    tfm.manager.restore_or_initialize()
    np.testing.assert_array_equal(tfm.v.numpy(), values(4)["v"])
    assert os.path.basename(tfm.save(5)) == "ckpt-5"
    assert os.path.basename(ckm.save(manager_state(5, 5))) == "ckpt-5"
    compare_managers(d_tf, d_ck, tfm, ckm)


def test_manager_numbering_after_restart_differs_deliberately(dirs: tuple[Path, Path]) -> None:
    d_tf, d_ck = dirs
    TFManager(d_tf, max_to_keep=3).save(1)
    ckptlib.CheckpointManager(d_ck, max_to_keep=3).save(manager_state(1, 1))
    # no restore: TF's fresh save_counter starts at 1 again and overwrites ckpt-1
    assert os.path.basename(TFManager(d_tf, max_to_keep=3).save(2)) == "ckpt-1"
    assert os.path.basename(ckptlib.CheckpointManager(d_ck, max_to_keep=3).save(manager_state(2, 2))) == "ckpt-2"


# ---------------------------------------------------------------------------------------------
# state files across libraries
# ---------------------------------------------------------------------------------------------


def test_ckptlib_state_file_read_by_tensorflow(tmp_path: Path) -> None:
    manager = ckptlib.CheckpointManager(tmp_path / "m", max_to_keep=3)
    for s in range(5):
        manager.save(manager_state(s, s + 1))
    saver = ckptlib.Saver(max_to_keep=2)
    for s in range(3):
        saver.save(values(s), tmp_path / "s" / "model.ckpt", global_step=s)
    for d in (tmp_path / "m", tmp_path / "s"):
        st_tf = tf.train.get_checkpoint_state(str(d))
        st_ck = ckptlib.get_checkpoint_state(d)
        assert st_tf.model_checkpoint_path == st_ck.model_checkpoint_path
        assert list(st_tf.all_model_checkpoint_paths) == list(st_ck.all_model_checkpoint_paths)
        assert list(st_tf.all_model_checkpoint_timestamps) == list(st_ck.all_model_checkpoint_timestamps)
        assert st_tf.last_preserved_timestamp == st_ck.last_preserved_timestamp
        assert len(st_ck.all_model_checkpoint_timestamps) == len(st_ck.all_model_checkpoint_paths)
        assert tf.train.latest_checkpoint(str(d)) == ckptlib.latest_checkpoint(d)
    tf_mgr = TFManager(tmp_path / "m", max_to_keep=3)
    assert [os.path.basename(p) for p in tf_mgr.manager.checkpoints] == ["ckpt-3", "ckpt-4", "ckpt-5"]


def test_tensorflow_state_files_read_by_ckptlib(tmp_path: Path) -> None:
    m = TFManager(tmp_path / "m", max_to_keep=2)
    for s in range(4):
        m.save(s)
    model = TF1Model(max_to_keep=2)
    for s in range(3):
        model.save(str(tmp_path / "s" / "model.ckpt"), s)
    model.close()
    tf.train.Checkpoint(v=tf.Variable(np.ones(3, np.float32))).save(str(tmp_path / "c" / "ckpt"))
    for d in ("m", "s", "c"):
        st_tf = tf.train.get_checkpoint_state(str(tmp_path / d))
        st_ck = ckptlib.get_checkpoint_state(tmp_path / d)
        assert st_ck is not None
        assert st_ck.model_checkpoint_path == st_tf.model_checkpoint_path
        assert list(st_ck.all_model_checkpoint_paths) == list(st_tf.all_model_checkpoint_paths)
        assert list(st_ck.all_model_checkpoint_timestamps) == list(st_tf.all_model_checkpoint_timestamps)
        assert st_ck.last_preserved_timestamp == st_tf.last_preserved_timestamp
        assert ckptlib.latest_checkpoint(tmp_path / d) == tf.train.latest_checkpoint(str(tmp_path / d))
        assert ckptlib.restore(ckptlib.latest_checkpoint(tmp_path / d))
