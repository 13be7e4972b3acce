"""Paths that are not regular files, and data files no process can map.

A FIFO, socket, device or directory named as an index, data or state file must raise a
ckptlib error naming it, at once: opening a FIFO that no process writes would otherwise
block forever. A data file too large to memory-map must raise a ckptlib error naming it
(or be read without a map), never a bare ``OSError``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import ckptlib

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="FIFOs, sockets and rlimits as on Linux")

DATA = "model.ckpt.data-00000-of-00001"
VALUES = {"a": np.arange(3.0), "b": np.int32(7)}


@pytest.fixture
def prefix(tmp_path: Path) -> Path:
    path = tmp_path / "model.ckpt"
    ckptlib.Saver().save(VALUES, str(path))
    return path


def _replace(path: Path, kind: str) -> Iterator[None]:
    """Put a ``kind`` of non-regular file where ``path`` was."""
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
        yield
    elif kind == "socket":
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(str(path))
            yield
    elif kind == "device":
        os.symlink("/dev/null", path)
        yield
    else:
        path.mkdir()
        yield


def _without_blocking(call: Callable[[], object], fifo: Path) -> object:
    """``call()``'s result or exception; fails (instead of hanging) if it blocks, first
    releasing it by opening ``fifo`` for writing."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = call()
        except BaseException as e:  # handed to the test
            outcome["result"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10)
    blocked = thread.is_alive()
    while thread.is_alive():  # let the blocked open() return so that the thread ends
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(0.1)
    assert not blocked, f"blocked opening {fifo}"
    return outcome["result"]


KINDS = ["fifo", "socket", "device", "directory"]


@pytest.mark.parametrize("kind", KINDS)
def test_index_that_is_not_a_regular_file(prefix: Path, kind: str) -> None:
    index = prefix.with_name("model.ckpt.index")
    for _ in _replace(index, kind):
        result = _without_blocking(lambda: ckptlib.load_checkpoint(str(prefix)), index)
        assert isinstance(result, ckptlib.CorruptCheckpointError), repr(result)
        assert str(index) in str(result) and "not a regular file" in str(result)
        found = _without_blocking(lambda: ckptlib.latest_checkpoint(str(prefix.parent)), index)
        assert found is None


@pytest.mark.parametrize("mmap", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_data_file_that_is_not_a_regular_file(prefix: Path, kind: str, mmap: bool) -> None:
    data = prefix.with_name(DATA)
    for _ in _replace(data, kind):
        calls: list[Callable[[], object]] = [
            lambda: ckptlib.load_checkpoint(str(prefix), mmap=mmap).get_tensor("a"),
            lambda: ckptlib.restore(str(prefix), mmap=mmap),
            lambda: ckptlib.restore(str(prefix), into={"a": np.zeros(3), "b": np.zeros((), np.int32)}, mmap=mmap),
        ]
        for call in calls:
            result = _without_blocking(call, data)
            assert isinstance(result, ckptlib.CorruptCheckpointError), repr(result)
            assert str(data) in str(result) and "not a regular file" in str(result)
        problems = _without_blocking(lambda: ckptlib.load_checkpoint(str(prefix), mmap=mmap).verify(), data)
        assert isinstance(problems, list) and problems
        assert all(str(data) in str(p) for p in problems), problems


@pytest.mark.parametrize("kind", KINDS)
def test_state_file_that_is_not_a_regular_file(prefix: Path, kind: str) -> None:
    state = prefix.parent / "checkpoint"
    for _ in _replace(state, kind):
        result = _without_blocking(lambda: ckptlib.get_checkpoint_state(str(prefix.parent)), state)
        assert isinstance(result, ckptlib.CorruptCheckpointError), repr(result)
        assert str(state) in str(result)
        assert _without_blocking(lambda: ckptlib.latest_checkpoint(str(prefix.parent)), state) is None
        assert ckptlib.restore(str(prefix))["b"] == 7  # the checkpoint itself is still readable by prefix


# Runs in a child whose address space is capped well below 64 GiB, so that mapping the
# sparse file fails on every machine, whatever its memory and overcommit policy.
SPARSE_CHILD = textwrap.dedent(
    """
    import json, resource, sys, traceback
    import numpy as np
    import ckptlib

    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    cap = vm + (4 << 30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    prefix = sys.argv[1]
    calls = {
        "get_tensor": lambda mmap: ckptlib.load_checkpoint(prefix, mmap=mmap).get_tensor("a").tolist(),
        "restore": lambda mmap: ckptlib.restore(prefix, mmap=mmap)["a"].tolist(),
        "restore_into": lambda mmap: ckptlib.restore(
            prefix, into={"a": np.zeros(3), "b": np.zeros((), np.int32)}, mmap=mmap
        ).restored,
        "verify": lambda mmap: [str(p) for p in ckptlib.load_checkpoint(prefix, mmap=mmap).verify()],
    }
    out = {}
    for mmap in (True, False):
        for name, call in calls.items():
            try:
                out[f"{name} mmap={mmap}"] = ["value", call(mmap)]
            except ckptlib.CheckpointError as e:
                out[f"{name} mmap={mmap}"] = ["ckptlib", type(e).__name__, str(e)]
            except BaseException as e:
                out[f"{name} mmap={mmap}"] = ["FOREIGN", type(e).__name__, traceback.format_exc()[-800:]]
    print(json.dumps(out))
    """
)


def test_sparse_64_gib_data_file(prefix: Path) -> None:
    """A data file with a 64 GiB apparent size (the tensors are in its first bytes):
    copying reads work; a memory map that cannot be had is a ckptlib error naming the file."""
    data = prefix.with_name(DATA)
    os.truncate(data, 64 << 30)
    child = subprocess.run(
        [sys.executable, "-c", SPARSE_CHILD, str(prefix)], capture_output=True, text=True, timeout=120
    )
    assert child.returncode == 0, child.stderr[-3000:]
    outcomes = json.loads(child.stdout.strip().splitlines()[-1])
    expected = {"get_tensor": [0.0, 1.0, 2.0], "restore": [0.0, 1.0, 2.0], "restore_into": ["a", "b"], "verify": []}
    for call, outcome in outcomes.items():
        name, mmap = call.split()
        if name == "verify" and mmap == "mmap=True" and outcome[0] == "value" and outcome[1]:
            assert all(str(data) in p and "too large for this memory" in p for p in outcome[1]), outcome
        elif outcome[0] == "value":
            assert outcome[1] == expected[name], (call, outcome)
        else:
            assert outcome[0] == "ckptlib" and mmap == "mmap=True", (call, outcome)
            assert outcome[1] == "CheckpointTooLargeError" and str(data) in outcome[2], (call, outcome)
    for name, value in expected.items():  # without a map the file reads as if it were small
        assert outcomes[f"{name} mmap=False"] == ["value", value]


def test_too_large_error_is_a_memory_error() -> None:
    error = ckptlib.CheckpointTooLargeError("too large for this memory", path="p")
    assert isinstance(error, MemoryError) and isinstance(error, ckptlib.CheckpointError)
    assert str(error) == "p: too large for this memory"
