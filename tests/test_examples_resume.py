"""The example training jobs, killed with SIGKILL mid-run and started again, end on the same
final loss as a run never interrupted (see ``kill_resume.py`` for how)."""

from __future__ import annotations

from pathlib import Path

import pytest
from kill_resume import ROOT, assert_resumes_after_sigkill


def example(name: str) -> Path:
    script = ROOT / "examples" / name
    if not script.is_file():
        pytest.skip(f"examples/{name} does not exist yet")
    return script


def test_torch_example_resumes_after_sigkill(tmp_path):
    pytest.importorskip("torch")
    assert_resumes_after_sigkill(example("torch_train.py"), tmp_path)


def test_jax_example_resumes_after_sigkill(tmp_path):
    for module in ("jax", "flax", "optax"):
        pytest.importorskip(module)
    assert_resumes_after_sigkill(example("jax_train.py"), tmp_path)


def test_keras_example_resumes_after_sigkill(tmp_path):
    pytest.importorskip("keras")
    assert_resumes_after_sigkill(example("keras_train.py"), tmp_path)
