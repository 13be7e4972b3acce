"""Errors say what went wrong in the user's terms: values that cannot be saved, targets that
cannot be written, states that are not mappings, and full disks (the file is named)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import types
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import ckptlib

ROOT = Path(__file__).resolve().parent.parent


# -- values that cannot be saved ------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "path"), [(2**70, "t"), (-(2**70), "t"), ([1, 2**64], "t/1"), (np.array([3, 2**65], dtype=object), "t")]
)
def test_an_integer_beyond_64_bits_is_out_of_range(tmp_path: Path, value: object, path: str) -> None:
    expected = rf"tensor '{path}'.*out of range for int64 and uint64"
    with pytest.raises(ckptlib.InvalidTensorError, match=expected) as info:
        ckptlib.save({"t": value}, tmp_path / "m")
    assert "string" not in str(info.value)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("value", [np.array([1.0, 2.5], dtype=object), np.array(0.5, dtype=object)])
def test_an_object_array_of_numbers_asks_for_a_numeric_dtype(tmp_path: Path, value: np.ndarray) -> None:
    with pytest.raises(ckptlib.InvalidTensorError, match=r"object array of float values.*numeric dtype") as info:
        ckptlib.save({"t": value}, tmp_path / "m")
    assert "string tensor" not in str(info.value)


def test_a_string_array_with_a_number_in_it_still_says_strings(tmp_path: Path) -> None:
    with pytest.raises(ckptlib.InvalidTensorError, match="may hold only str or bytes, found float"):
        ckptlib.save({"t": np.array([b"a", 1.5], dtype=object)}, tmp_path / "m")


# -- targets that cannot be written ------------------------------------------------------
def test_a_read_only_target_is_named_as_such(tmp_path: Path) -> None:
    prefix = ckptlib.save({"w": np.ones(3, np.float32), "step": 7}, tmp_path / "m")
    frozen = np.zeros(3, np.float32)
    frozen.flags.writeable = False
    with pytest.raises(ckptlib.ReadOnlyTargetError, match="w: the target array is read-only") as info:
        ckptlib.restore(prefix, into={"w": frozen, "step": 0})
    assert isinstance(info.value, ckptlib.RestoreMismatchError) and isinstance(info.value, ValueError)
    assert not isinstance(info.value, ckptlib.ShapeMismatchError)
    assert "cannot be written" in str(info.value) and "do not fit" not in str(info.value)

    immutable = types.MappingProxyType({"w": np.zeros(3, np.float32), "step": 0})
    report = ckptlib.restore(prefix, into=immutable)  # a mapping that cannot change is rebuilt, not refused
    assert immutable["step"] == 0 and report.tree["step"] == 7 and report.tree["w"] is immutable["w"]
    # with a shape problem too: the general class, listing both
    with pytest.raises(ckptlib.RestoreMismatchError, match=r"(?s)target shape.*read-only") as info:
        ckptlib.restore(prefix, into={"w": frozen[:2], "step": 0})
    assert type(info.value) is ckptlib.RestoreMismatchError


# -- states that are not containers -------------------------------------------------------
@pytest.mark.parametrize("state", [None, "weights", np.zeros(3), 3])
def test_a_state_that_is_not_a_container_is_a_type_error(tmp_path: Path, state: object) -> None:
    calls = [
        lambda: ckptlib.save(state, tmp_path / "a"),  # type: ignore[arg-type]
        lambda: ckptlib.Saver().save(state, str(tmp_path / "b")),  # type: ignore[arg-type]
        lambda: ckptlib.CheckpointManager(tmp_path / "c", max_to_keep=1).save(state),  # type: ignore[arg-type]
    ]
    for call in calls:
        with pytest.raises(ckptlib.InvalidStructureError, match="must be a container") as info:
            call()
        assert isinstance(info.value, TypeError) and isinstance(info.value, ckptlib.CheckpointError)
    if state is None:  # restore(into=None) means "return a new dict"
        return
    prefix = ckptlib.save({"x": np.ones(2)}, tmp_path / "d")
    with pytest.raises(ckptlib.InvalidStructureError, match="takes a tree of targets"):
        ckptlib.restore(prefix, into=state)  # type: ignore[call-overload]


# -- an empty state: one rule everywhere ----------------------------------------------------
def test_an_empty_state_saves_a_checkpoint_of_no_tensors_everywhere(tmp_path: Path) -> None:
    """``save``, ``Saver.save`` and ``CheckpointManager.save(object_graph=False)`` all write an
    index holding only its header; with its object graph (the default), the manager writes what
    TensorFlow writes for an empty ``tf.train.Checkpoint`` (the graph and ``save_counter``) and
    ckptlib's record. Every one restores as {}."""
    prefixes = [
        ckptlib.save({}, tmp_path / "plain"),
        ckptlib.Saver().save({}, str(tmp_path / "saver" / "model.ckpt"), global_step=1),
        ckptlib.CheckpointManager(tmp_path / "manager", max_to_keep=2, object_graph=False).save({}),
        ckptlib.CheckpointManager(tmp_path / "graph", max_to_keep=2).save({}),
    ]
    assert ckptlib.latest_checkpoint(tmp_path / "saver") == prefixes[1]
    assert ckptlib.latest_checkpoint(tmp_path / "manager") == prefixes[2]
    assert ckptlib.latest_checkpoint(tmp_path / "graph") == prefixes[3]
    graph_keys = ["_CHECKPOINTABLE_OBJECT_GRAPH", "_CKPTLIB_STRUCTURE", "save_counter/.ATTRIBUTES/VARIABLE_VALUE"]
    for prefix, keys in zip(prefixes, [[], [], [], graph_keys], strict=True):
        assert prefix is not None and ckptlib.restore(prefix) == {}
        assert ckptlib.restore(prefix, into={}).restored == []
        with ckptlib.load_checkpoint(prefix) as reader:
            assert reader.keys_list() == keys and reader.verify() == []


# -- a full disk names the file ------------------------------------------------------------
@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (needs root and a kernel that lets this process mount)."""
    where = tmp_path / f"tiny-{uuid.uuid4().hex[:8]}"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a 1 MiB tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def visible(directory: Path) -> list[str]:
    """File names, ckptlib's hidden lock file left out."""
    return [name for name in os.listdir(directory) if not name.startswith(".")]


def test_a_full_disk_names_the_file_being_written(tiny_disk: Path) -> None:
    with pytest.raises(OSError) as data:
        ckptlib.save({"x": np.ones(2 << 20, np.uint8)}, tiny_disk / "big")
    assert data.value.errno == errno.ENOSPC
    assert data.value.filename == str(tiny_disk / "big.data-00000-of-00001"), data.value
    assert str(tiny_disk / "big.data-00000-of-00001") in str(data.value)
    assert visible(tiny_disk) == []  # nothing left behind

    # the data fills the disk exactly: the index is what does not fit
    with pytest.raises(OSError) as index:
        ckptlib.save({"x": np.ones(1 << 20, np.uint8)}, tiny_disk / "full")
    assert index.value.errno == errno.ENOSPC
    assert index.value.filename == str(tiny_disk / "full.index"), index.value
    assert visible(tiny_disk) == []


# Run in a child whose files may not grow past 64 KiB (RLIMIT_FSIZE; SIGXFSZ ignored, so a
# write past it fails with EFBIG): the same code path as ENOSPC, without root.
FSIZE_CHILD = textwrap.dedent(
    """
    import errno, resource, signal, sys
    import numpy as np
    import ckptlib

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
    try:
        ckptlib.Saver().save({"x": np.ones(1 << 20, np.uint8)}, sys.argv[1], global_step=3)
    except OSError as e:
        print(e.errno == errno.EFBIG, e.filename)
    """
)


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX only")
def test_a_write_past_the_file_size_limit_names_the_file(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    prefix = tmp_path / "model.ckpt"
    child = subprocess.run(
        [sys.executable, "-c", FSIZE_CHILD, str(prefix)], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == ["True", f"{prefix}-3.data-00000-of-00001"], child.stdout
