"""ckptlib.keras with real Keras 3: a model (batch norm included) and its Adam optimizer save
under their weight paths, restore bit for bit into a fresh model and an optimizer not built
yet, resume to exactly the losses of an uninterrupted run (in process, on the backend this
process has: TensorFlow by default; and on the JAX backend in a child process), and a damaged
or mismatched checkpoint assigns nothing."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import ckptlib  # noqa: E402
import ckptlib.keras  # noqa: E402
from ckptlib.errors import ChecksumMismatchError, InvalidStructureError, ShapeMismatchError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
X = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
Y = np.sin(X.sum(axis=1, keepdims=True))


def new_model(seed: int = 0, width: int = 8) -> Any:
    """A fresh model named as the first one was: Keras numbers automatic names per session."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(width, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    return model


def fit(model: Any, epochs: range) -> list[float]:
    losses = []
    for epoch in epochs:
        order = np.random.default_rng(epoch).permutation(len(X))
        history = model.fit(X[order], Y[order], batch_size=16, epochs=1, shuffle=False, verbose=0)
        losses += history.history["loss"]
    return losses


def values(model: Any) -> dict[str, bytes]:
    variables = [*model.weights, *model.optimizer.variables]
    return {v.path: keras.ops.convert_to_numpy(v).tobytes() for v in variables}


def save(model: Any, prefix: Path | str, **extra: Any) -> None:
    """Save with a Saver, so that the directory's state file names it as the latest."""
    ckptlib.Saver().save(ckptlib.keras.state(model=model, optimizer=model.optimizer, **extra), str(prefix))


def test_names_are_the_weight_paths(tmp_path: Path):
    model = new_model()
    fit(model, range(1))
    save(model, tmp_path / "ckpt-1", epoch=1)
    names = dict(ckptlib.list_variables(str(tmp_path / "ckpt-1")))
    assert names["model/sequential/dense/kernel"] == [4, 8]
    assert names["model/sequential/batch_normalization/moving_mean"] == [8]
    assert names["optimizer/adam/iteration"] == []
    assert names["optimizer/adam/sequential_dense_kernel_momentum"] == [4, 8]
    assert names["epoch"] == []


def test_round_trip_into_a_fresh_model_and_unbuilt_optimizer(tmp_path: Path):
    model = new_model()
    fit(model, range(2))
    save(model, tmp_path / "ckpt-2", epoch=2)
    expected = values(model)

    fresh = new_model(seed=1)
    assert not fresh.optimizer.built
    tree = ckptlib.keras.restore(str(tmp_path), model=fresh, optimizer=fresh.optimizer, epoch=0)
    assert fresh.optimizer.built
    assert values(fresh) == expected
    assert tree["epoch"] == 2 and isinstance(tree["epoch"], int)
    assert int(keras.ops.convert_to_numpy(fresh.optimizer.iterations)) == 2 * len(X) // 16


def test_a_checkpoint_saved_before_training_holds_the_optimizer_slots(tmp_path: Path):
    model = new_model()
    save(model, tmp_path / "ckpt-0")
    assert "optimizer/adam/sequential_dense_kernel_velocity" in dict(ckptlib.list_variables(str(tmp_path)))
    trained = new_model()
    fit(trained, range(1))
    ckptlib.keras.restore(str(tmp_path), model=trained, optimizer=trained.optimizer)
    assert values(trained) == values(model)


def test_load_gives_numpy_arrays(tmp_path: Path):
    model = new_model()
    save(model, tmp_path / "ckpt-0")
    tree = ckptlib.keras.load(str(tmp_path / "ckpt-0"))
    kernel = tree["model"]["sequential/dense/kernel"]
    assert isinstance(kernel, np.ndarray)
    assert np.array_equal(kernel, keras.ops.convert_to_numpy(model.weights[0]))


def test_resumed_training_gives_the_same_losses(tmp_path: Path):
    straight = fit(new_model(), range(4))

    model = new_model()
    losses = fit(model, range(2))
    save(model, tmp_path / "ckpt-2")
    resumed = new_model(seed=5)
    ckptlib.keras.restore(str(tmp_path / "ckpt-2"), model=resumed, optimizer=resumed.optimizer)
    assert losses + fit(resumed, range(2, 4)) == straight


def test_damaged_checkpoint_assigns_nothing(tmp_path: Path, damage_tensor):
    model = new_model()
    fit(model, range(1))
    prefix = tmp_path / "ckpt-1"
    save(model, prefix)
    # the variable a restore assigns last: every other one would be assigned first if not checked
    damaged = f"optimizer/{model.optimizer.variables[-1].path}"
    damage_tensor(prefix, damaged)

    target = new_model(seed=1)
    fit(target, range(1, 2))
    before = values(target)
    with pytest.raises(ChecksumMismatchError, match=damaged):
        ckptlib.keras.restore(str(prefix), model=target, optimizer=target.optimizer)
    assert values(target) == before


def test_mismatch_names_the_paths_and_assigns_nothing(tmp_path: Path):
    model = new_model()
    fit(model, range(1))
    save(model, tmp_path / "ckpt-1")
    target = new_model(width=16)
    fit(target, range(1))
    before = values(target)
    with pytest.raises(ShapeMismatchError) as caught:
        ckptlib.keras.restore(str(tmp_path), model=target, optimizer=target.optimizer)
    assert "model/sequential/dense/kernel" in str(caught.value)
    assert "optimizer/adam/sequential_dense_kernel_momentum" in str(caught.value)
    assert values(target) == before


def test_two_variables_with_one_path_are_refused():
    twins = [SimpleNamespace(path="dense/kernel"), SimpleNamespace(path="dense/kernel")]
    with pytest.raises(InvalidStructureError, match="model/dense/kernel"):
        ckptlib.keras.state(model=SimpleNamespace(weights=twins))


JAX_BACKEND_SCRIPT = """
import sys
import numpy as np
import keras
import ckptlib, ckptlib.keras
assert keras.backend.backend() == "jax", keras.backend.backend()
sys.path.insert(0, sys.argv[2])
from test_keras import fit, new_model, save, values

straight = fit(new_model(), range(3))
model = new_model()
losses = fit(model, range(2))
save(model, sys.argv[1] + "/ckpt-2", epoch=2)
expected = values(model)
resumed = new_model(seed=3)
tree = ckptlib.keras.restore(sys.argv[1], model=resumed, optimizer=resumed.optimizer, epoch=0)
assert values(resumed) == expected and tree["epoch"] == 2
assert losses + fit(resumed, range(2, 3)) == straight, (losses, straight)
print("JAX BACKEND OK")
"""


def test_the_jax_backend_works_too(tmp_path: Path):
    if importlib.util.find_spec("jax") is None:
        pytest.skip("JAX is not installed")
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(JAX_BACKEND_SCRIPT), str(tmp_path), str(ROOT / "tests")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "JAX BACKEND OK" in proc.stdout, proc.stdout + proc.stderr
