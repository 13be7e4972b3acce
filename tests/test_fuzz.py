"""Mutation fuzzing over real checkpoints (written by TensorFlow): hypothesis picks a file
of a golden checkpoint and damages it (bit flips, overwritten runs, inserted or deleted
bytes, truncation). Reading everything back may only produce ckptlib errors or the exact
original values. tools/fuzz_reader.py is the coverage-guided long-running counterpart.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckptlib

GOLDEN = Path(__file__).resolve().parent / "data" / "golden"
CASES = {
    "strings": "strings",
    "sliced": "sliced_savev2",
    "sharded": "tf1_sharded",
    "dtypes": "dtypes",
    "v1": "v1_format",
    "slots": "tf2_slots",
}


def _prefix(case_dir: Path) -> str:
    index = sorted(case_dir.glob("*.index"))
    if index:
        return str(index[-1])[: -len(".index")]
    state = ckptlib.get_checkpoint_state(case_dir)
    assert state is not None
    return state.model_checkpoint_path


def _read_all(prefix: str) -> dict[str, np.ndarray]:
    with ckptlib.load_checkpoint(prefix) as reader:
        values = {name: reader.get_tensor(name) for name in reader.keys_list()}
        problems = reader.verify()
    if problems:
        raise problems[0]
    return values


ORIGINALS = {case: _read_all(_prefix(GOLDEN / name)) for case, name in CASES.items()}


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == object:
        return all(x == y for x, y in zip(a.flat, b.flat))
    return a.tobytes() == b.tobytes()


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**9), st.integers(1, 255)),
    st.tuples(st.just("overwrite"), st.integers(0, 10**9), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("insert"), st.integers(0, 10**9), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.integers(0, 10**9), st.integers(1, 16)),
    st.tuples(st.just("truncate"), st.integers(0, 10**9), st.just(0)),
)


def _apply(data: bytes, op: tuple[str, int, object]) -> bytes:
    kind, where, arg = op
    pos = where % (len(data) + 1)
    if kind == "flip" and data:
        pos %= len(data)
        return data[:pos] + bytes([data[pos] ^ int(arg)]) + data[pos + 1 :]  # type: ignore[call-overload]
    if kind == "overwrite":
        assert isinstance(arg, bytes)
        return data[:pos] + arg + data[pos + len(arg) :]
    if kind == "insert":
        assert isinstance(arg, bytes)
        return data[:pos] + arg + data[pos:]
    if kind == "delete":
        return data[:pos] + data[pos + int(arg) :]  # type: ignore[call-overload]
    return data[:pos]


@pytest.mark.parametrize("case", sorted(CASES))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(file_choice=st.integers(0, 100), ops=st.lists(mutation, min_size=1, max_size=3))
def test_damaged_golden_checkpoint_gives_ckptlib_error_or_original_values(
    case: str, file_choice: int, ops: list[tuple[str, int, object]]
) -> None:
    work = Path(tempfile.mkdtemp(prefix="ckptlib-fuzz-"))
    try:
        source = GOLDEN / CASES[case]
        shutil.copytree(source, work / "c")
        prefix = _prefix(work / "c")
        files = sorted(
            p for p in (work / "c").iterdir() if p.name != "checkpoint" and not p.name.startswith("expected")
        )
        target = files[file_choice % len(files)]
        data = target.read_bytes()
        for op in ops:
            data = _apply(data, op)
        target.write_bytes(data)
        try:
            got = _read_all(prefix)
        except ckptlib.CheckpointError as e:
            assert target.name in str(e) or Path(prefix).name in str(e), str(e)
            return
        original = ORIGINALS[case]
        assert sorted(got) == sorted(original)
        for name, value in original.items():
            assert _same(got[name], value), f"{target.name} damaged, {name} came back different"
    finally:
        shutil.rmtree(work)
