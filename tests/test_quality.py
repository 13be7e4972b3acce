"""Lint, format and type checks run as part of the test suite."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(tool: str, *args: str) -> None:
    if shutil.which(tool) is None and not (Path(sys.executable).parent / tool).exists():
        pytest.skip(f"{tool} is not installed (pip install -e .[test])")
    exe = str(Path(sys.executable).parent / tool) if (Path(sys.executable).parent / tool).exists() else tool
    result = subprocess.run([exe, *args], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_lint() -> None:
    _run("ruff", "check", "ckptlib", "tests", "examples", "benchmarks", "tools")


def test_ruff_format() -> None:
    _run("ruff", "format", "--check", "ckptlib")


def test_mypy() -> None:
    _run("mypy")


def test_public_api_is_pinned() -> None:
    import ckptlib

    assert sorted(ckptlib.__all__) == sorted(
        [
            "BundleWriter",
            "CheckpointError",
            "CheckpointManager",
            "CheckpointNotFoundError",
            "CheckpointReader",
            "CheckpointState",
            "CheckpointTooLargeError",
            "ChecksumMismatchError",
            "CorruptCheckpointError",
            "DtypeMismatchError",
            "IOPolicy",
            "InvalidStructureError",
            "InvalidTensorError",
            "ObjectGraph",
            "ReadOnlyTargetError",
            "RestoreMismatchError",
            "RestoreReport",
            "Saver",
            "ShapeMismatchError",
            "Slice",
            "StorageError",
            "TensorNotFoundError",
            "TensorSlice",
            "UnsupportedFeatureError",
            "checkpoint_exists",
            "get_checkpoint_state",
            "latest_checkpoint",
            "list_variables",
            "load_checkpoint",
            "load_variable",
            "merge_bundles",
            "release_cached_memory",
            "repair",
            "restore",
            "save",
            "save_async",
        ]
    )
    for name in ckptlib.__all__:
        assert getattr(ckptlib, name) is not None
