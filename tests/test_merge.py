"""merge_bundles: a failure at any step leaves the input bundles as they were."""

from __future__ import annotations

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
def test_a_failed_merge_puts_every_data_file_back(mem_store: Any, fail_at: str) -> None:
    a = {"a/w": np.arange(6, dtype=np.float32), "a/b": np.ones(2, np.int64)}
    b = {"b/w": np.full(5, 3, np.float16)}
    parts = [ckptlib.save(a, "mem://run/part-a", num_shards=2), ckptlib.save(b, "mem://run/part-b")]
    expected = {**a, **b}
    before = sorted(mem_store.listdir("mem://run"))
    if fail_at == "index":
        mem_store.fail("finish", error=OSError(28, "No space left on device"))
    else:
        mem_store.fail("rename", after=1, times=1)
    with pytest.raises(OSError):
        ckptlib.merge_bundles(parts, "mem://run/merged")
    mem_store.faults.clear()
    assert sorted(mem_store.listdir("mem://run")) == before
    for part in parts:
        for name, value in ckptlib.restore(part).items():
            assert np.array_equal(value, expected[name])
