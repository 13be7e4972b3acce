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


def test_distributed_example_resumes_with_the_same_final_loss(tmp_path):
    """Two processes save together each epoch; a second run resumes from the latest
    checkpoint and ends on the loss of a run never stopped."""
    pytest.importorskip("torch.distributed")
    from kill_resume import final_loss, run_example

    script = example("distributed_train.py")
    straight = run_example(script, tmp_path / "straight", 4)
    first = run_example(script, tmp_path / "resumed", 2)
    assert "final loss" in first.stdout, first.explain()
    resumed = run_example(script, tmp_path / "resumed", 4)
    assert "resumed from" in resumed.stdout and "(epoch 2)" in resumed.stdout, resumed.explain()
    assert final_loss(resumed) == final_loss(straight)
    assert sorted(p.name for p in (tmp_path / "resumed").glob("*.index")) == [f"ckpt-{i}.index" for i in (2, 3, 4)]
