"""Errors say what went wrong in the user's terms: values that cannot be saved, targets that
cannot be written, states that are not mappings, and full disks (the file is named)."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest

import ckptlib


# -- values that cannot be saved ------------------------------------------------------
@pytest.mark.parametrize("value", [2**70, -(2**70), [1, 2**64], np.array([3, 2**65], dtype=object)])
def test_an_integer_beyond_64_bits_is_out_of_range(tmp_path: Path, value: object) -> None:
    with pytest.raises(ckptlib.InvalidTensorError, match=r"tensor 't'.*out of range for int64 and uint64") as info:
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
        ckptlib.save({"t": [b"a", 1.5]}, tmp_path / "m")


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
    with pytest.raises(ckptlib.ReadOnlyTargetError, match="step: int in a mappingproxy cannot be updated in place"):
        ckptlib.restore(prefix, into=immutable)
    # with a shape problem too: the general class, listing both
    with pytest.raises(ckptlib.RestoreMismatchError, match=r"(?s)target shape.*read-only") as info:
        ckptlib.restore(prefix, into={"w": frozen[:2], "step": 0})
    assert type(info.value) is ckptlib.RestoreMismatchError


# -- states that are not mappings ---------------------------------------------------------
@pytest.mark.parametrize("state", [[1, 2], None, "weights", np.zeros(3)])
def test_a_state_that_is_not_a_mapping_is_a_type_error(tmp_path: Path, state: object) -> None:
    calls = [
        lambda: ckptlib.save(state, tmp_path / "a"),  # type: ignore[arg-type]
        lambda: ckptlib.Saver().save(state, str(tmp_path / "b")),  # type: ignore[arg-type]
        lambda: ckptlib.CheckpointManager(tmp_path / "c", max_to_keep=1).save(state),  # type: ignore[arg-type]
    ]
    for call in calls:
        with pytest.raises(ckptlib.InvalidStructureError, match="must be a mapping") as info:
            call()
        assert isinstance(info.value, TypeError) and isinstance(info.value, ckptlib.CheckpointError)
    if state is None:  # restore(into=None) means "return a new dict"
        return
    prefix = ckptlib.save({"x": np.ones(2)}, tmp_path / "d")
    with pytest.raises(ckptlib.InvalidStructureError, match="takes a mapping"):
        ckptlib.restore(prefix, into=state)  # type: ignore[call-overload]


# -- an empty state: one rule everywhere ----------------------------------------------------
def test_an_empty_state_saves_a_checkpoint_of_no_tensors_everywhere(tmp_path: Path) -> None:
    """``save``, ``Saver.save`` and ``CheckpointManager.save`` all write an index holding only
    its header (as TensorFlow does for an empty ``tf.train.Checkpoint``), and it restores as {}."""
    prefixes = [
        ckptlib.save({}, tmp_path / "plain"),
        ckptlib.Saver().save({}, str(tmp_path / "saver" / "model.ckpt"), global_step=1),
        ckptlib.CheckpointManager(tmp_path / "manager", max_to_keep=2).save({"nested": {}}),
    ]
    assert ckptlib.latest_checkpoint(tmp_path / "saver") == prefixes[1]
    assert ckptlib.latest_checkpoint(tmp_path / "manager") == prefixes[2]
    for prefix in prefixes:
        assert prefix is not None and ckptlib.restore(prefix) == {}
        assert ckptlib.restore(prefix, into={}).restored == []
        with ckptlib.load_checkpoint(prefix) as reader:
            assert reader.keys_list() == [] and reader.verify() == []
