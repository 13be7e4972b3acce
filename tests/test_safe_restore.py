"""Restores are safe by default: private memory that no later change to the files can reach,
no file descriptor held, and all or nothing: a damaged checkpoint writes no target."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ckptlib
from ckptlib.format.filenames import data_filename

SENTINEL = -7.0


def child(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a fresh interpreter (a SIGBUS there must not kill the test run)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture()
def prefix(tmp_path: Path) -> str:
    rng = np.random.default_rng(0)
    state = {f"t{i}": rng.standard_normal(20_000).astype(np.float32) for i in range(4)}
    state["big"] = np.arange(3 << 20, dtype=np.uint8)
    return ckptlib.save(state, tmp_path / "model")


def test_values_survive_the_data_file_being_rewritten_in_place(prefix: str) -> None:
    restored = ckptlib.restore(prefix)
    with ckptlib.load_checkpoint(prefix) as reader:
        tensor = reader.get_tensor("big")
    want = {name: value.copy() for name, value in restored.items()}
    data_file = data_filename(prefix, 0, 1)
    with open(data_file, "r+b") as f:  # what cp or rsync --inplace do to an existing file
        f.write(b"\xff" * os.path.getsize(data_file))
    for name, value in restored.items():
        np.testing.assert_array_equal(value, want[name], err_msg=name)
    np.testing.assert_array_equal(tensor, want["big"])


def test_truncating_the_data_file_does_not_crash_a_holder_of_restored_tensors(prefix: str) -> None:
    result = child(
        """
        import sys
        import numpy as np
        import ckptlib

        prefix = sys.argv[1]
        restored = ckptlib.restore(prefix)
        with ckptlib.load_checkpoint(prefix) as reader:
            single = reader.get_tensor("big")
        before = {name: value.copy() for name, value in restored.items()}
        with open(prefix + ".data-00000-of-00001", "r+b") as f:
            f.truncate(0)
        assert all(np.array_equal(restored[name], value) for name, value in before.items())
        assert np.array_equal(single, before["big"])
        print("ok")
        """,
        prefix,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", (result.returncode, result.stderr[-2000:])


def test_held_restores_keep_no_file_descriptor_open(tmp_path: Path) -> None:
    """1,100 restores held at once, under a limit of 1,024 open files."""
    prefix = ckptlib.save({"w": np.arange(10, dtype=np.float32), "b": np.ones(3, np.int64)}, tmp_path / "m")
    result = child(
        """
        import os, resource, sys
        import ckptlib

        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        open_before = len(os.listdir("/proc/self/fd"))
        held = [ckptlib.restore(sys.argv[1]) for _ in range(1100)]
        held += [ckptlib.load_variable(sys.argv[1], "w") for _ in range(1100)]
        print(len(os.listdir("/proc/self/fd")) - open_before)
        """,
        prefix,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "0"


def damaged_checkpoint(tmp_path: Path) -> tuple[str, dict[str, np.ndarray]]:
    """Three tensors, the second (in key order) with one byte of its data flipped."""
    state = {name: np.full(50_000, value, np.float32) for name, value in [("a", 1.0), ("b", 2.0), ("c", 3.0)]}
    prefix = ckptlib.save(state, tmp_path / "m")
    with ckptlib.load_checkpoint(prefix) as reader:
        entry = reader.entry("b")  # type: ignore[attr-defined]
    with open(data_filename(prefix, 0, 1), "r+b") as f:
        f.seek(entry.offset + entry.size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x40]))
    return prefix, state


@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("names", [("a", "b", "c"), ("a", "b"), ("b", "c")])
def test_a_damaged_checkpoint_writes_no_byte_into_any_target(
    tmp_path: Path, mmap: bool, strict: bool, names: tuple[str, ...]
) -> None:
    prefix, state = damaged_checkpoint(tmp_path)
    targets: dict[str, Any] = {name: np.full_like(state[name], SENTINEL) for name in names}
    if strict and len(names) < len(state):
        targets.update({name: np.full_like(value, SENTINEL) for name, value in state.items()})
    with pytest.raises(ckptlib.ChecksumMismatchError, match="tensor 'b'"):
        ckptlib.restore(prefix, into=targets, strict=strict, mmap=mmap)
    for name, target in targets.items():
        assert (target == SENTINEL).all(), f"{name} was written"


def test_a_damaged_checkpoint_leaves_framework_and_plain_targets_alone(tmp_path: Path) -> None:
    prefix, state = damaged_checkpoint(tmp_path)

    class Tensor:  # the in-place copy_ protocol torch tensors follow
        def __init__(self) -> None:
            self.shape, self.dtype, self.copies = state["a"].shape, "torch.float32", 0

        def copy_(self, source: object) -> None:
            self.copies += 1

    first = Tensor()
    targets: dict[str, Any] = {"a": first, "b": np.full_like(state["b"], SENTINEL), "c": None}
    with pytest.raises(ckptlib.ChecksumMismatchError):
        ckptlib.restore(prefix, into=targets)
    assert first.copies == 0 and targets["c"] is None and (targets["b"] == SENTINEL).all()


def test_a_partial_restore_reads_only_what_its_targets_take(tmp_path: Path) -> None:
    prefix, state = damaged_checkpoint(tmp_path)
    targets = {"a": np.zeros_like(state["a"]), "c": np.zeros_like(state["c"])}
    report = ckptlib.restore(prefix, into=targets, strict=False)
    assert report.restored == ["a", "c"] and report.unexpected == ["b"]
    np.testing.assert_array_equal(targets["a"], state["a"])
    np.testing.assert_array_equal(targets["c"], state["c"])
