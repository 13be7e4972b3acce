"""merge_bundles: a failure at any step leaves the input bundles as they were."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ckptlib
import ckptlib.merge


def two_bundles(tmp_path: Path) -> tuple[list[Path], dict[str, np.ndarray]]:
    a = {"a/w": np.arange(6, dtype=np.float32), "a/b": np.ones(2, np.int64)}
    b = {"b/w": np.full(5, 3, np.float16)}
    ckptlib.save(a, tmp_path / "part-a", num_shards=2)
    ckptlib.save(b, tmp_path / "part-b")
    return [tmp_path / "part-a", tmp_path / "part-b"], {**a, **b}


def test_merge_joins_the_bundles(tmp_path: Path) -> None:
    parts, expected = two_bundles(tmp_path)
    ckptlib.merge_bundles(parts, tmp_path / "merged")
    merged = ckptlib.restore(tmp_path / "merged")
    assert sorted(merged) == sorted(expected)
    assert all(np.array_equal(merged[name], value) for name, value in expected.items())
    assert not any(p.name.startswith("part-") for p in tmp_path.iterdir())


@pytest.mark.parametrize("fail_at", ["second data file", "index"])
def test_a_failed_merge_puts_every_data_file_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: str
) -> None:
    parts, expected = two_bundles(tmp_path)
    before = sorted(os.listdir(tmp_path))
    real_replace = os.replace
    renames = []

    def flaky_replace(src: Any, dst: Any) -> None:
        renames.append(dst)
        if fail_at == "second data file" and len(renames) == 2:
            raise OSError(5, "Input/output error")
        real_replace(src, dst)

    def failing_write(*args: object, **kwargs: object) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckptlib.merge.os, "replace", flaky_replace)
    if fail_at == "index":
        monkeypatch.setattr(ckptlib.merge, "write_temp", failing_write)
    with pytest.raises(OSError):
        ckptlib.merge_bundles(parts, tmp_path / "merged")
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == before
    for part in parts:
        for name, value in ckptlib.restore(part).items():
            assert np.array_equal(value, expected[name])
