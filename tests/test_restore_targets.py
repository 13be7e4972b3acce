"""restore(into=...) with targets that are not numpy arrays: the in-place ``copy_`` protocol
(torch tensors use it) and plain Python values replaced in their mapping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ckptlib


class FrameworkTensor:
    """Stands in for a torch tensor: ``shape``, a ``dtype`` spelled ``framework.float32``,
    and an in-place ``copy_``."""

    __module__ = "framework.tensor"

    def __init__(self, shape: tuple[int, ...], dtype: str):
        self.shape = shape
        self.dtype = f"framework.{dtype}"
        self.data = np.zeros(shape, dtype)
        self.copies = 0

    def copy_(self, source: Any) -> None:
        self.data[...] = source
        self.copies += 1


@pytest.fixture()
def prefix(tmp_path: Path) -> str:
    return ckptlib.save(
        {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "step": np.int64(7), "name": "run-1", "lr": 0.5},
        tmp_path / "model",
    )


def test_copy_protocol_targets_are_filled_in_place(prefix: str) -> None:
    w = FrameworkTensor((2, 3), "float32")
    state = {"w": w, "step": 0, "name": "", "lr": 0.0}
    report = ckptlib.restore(prefix, into=state)
    assert state["w"] is w and w.copies == 1
    np.testing.assert_array_equal(w.data, np.arange(6, dtype=np.float32).reshape(2, 3))
    # immutable leaves are replaced in their mapping, keeping their Python type
    assert state["step"] == 7 and type(state["step"]) is int
    assert state["name"] == "run-1" and isinstance(state["name"], str)
    assert state["lr"] == 0.5 and type(state["lr"]) is float
    assert report.restored == ["lr", "name", "step", "w"] and not report.missing and not report.unexpected


def test_copy_protocol_targets_are_checked_before_anything_is_written(prefix: str) -> None:
    wrong_shape = FrameworkTensor((3, 2), "float32")
    wrong_dtype = FrameworkTensor((2, 3), "float64")
    for target, error in [(wrong_shape, ckptlib.ShapeMismatchError), (wrong_dtype, ckptlib.DtypeMismatchError)]:
        state = {"w": target, "step": 0, "name": "", "lr": 0.0}
        with pytest.raises(error, match="w: target"):
            ckptlib.restore(prefix, into=state)
        assert target.copies == 0 and state["step"] == 0


def test_non_strict_restore_reports_missing_and_unexpected(prefix: str) -> None:
    state = {"w": np.zeros((2, 3), np.float32), "extra": np.zeros(2)}
    report = ckptlib.restore(prefix, into=state, strict=False)
    assert report.missing == ["extra"] and report.unexpected == ["lr", "name", "step"]
    assert report.restored == ["w"]
    np.testing.assert_array_equal(state["extra"], np.zeros(2))


def test_read_only_target_is_refused_before_anything_is_written(prefix: str) -> None:
    frozen = np.zeros((2, 3), np.float32)
    frozen.flags.writeable = False
    state = {"w": frozen, "step": 0, "name": "", "lr": 0.0}
    with pytest.raises(ckptlib.RestoreMismatchError, match="read-only"):
        ckptlib.restore(prefix, into=state)
    assert state["step"] == 0


def test_a_refused_value_does_not_reserve_its_name(tmp_path: Path) -> None:
    writer = ckptlib.BundleWriter(tmp_path / "m")
    with pytest.raises(ckptlib.InvalidTensorError):
        writer.add("x", np.array(["a", 1], dtype=object))
    writer.add("x", np.arange(3))
    writer.finish()
    np.testing.assert_array_equal(ckptlib.restore(tmp_path / "m")["x"], np.arange(3))
