"""ckptlib.tf with real TensorFlow 2: a ``tf.train.Checkpoint`` of a Keras 3 model and its Adam
optimizer (TF backend) saved through ckptlib's ``CheckpointManager`` restores in TensorFlow with
``assert_consumed()``, is what ``Checkpoint.write`` writes, keeps ``save_counter`` as TF does,
resumes training to exactly the losses of an uninterrupted run (restored by TF and by
``ckptlib.tf.restore``), and a damaged or mismatched checkpoint assigns nothing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import ckptlib  # noqa: E402
import ckptlib.tf  # noqa: E402
from ckptlib.errors import (  # noqa: E402
    ChecksumMismatchError,
    InvalidStructureError,
    RestoreMismatchError,
    ShapeMismatchError,
)
from ckptlib.format.object_graph import OBJECT_GRAPH_KEY, TrackableObjectGraph  # noqa: E402

needs_tf_backend = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason=f"Keras runs on {keras.backend.backend()}, not TensorFlow"
)
X = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
Y = np.sin(X.sum(axis=1, keepdims=True))


def new_objects(seed: int = 0, width: int = 8) -> tuple[Any, Any]:
    """A fresh model and a built Adam optimizer, named as the first ones were."""
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
    model.optimizer.build(model.trainable_variables)
    return model, model.optimizer


def fit(model: Any, epochs: range) -> list[float]:
    losses = []
    for epoch in epochs:
        order = np.random.default_rng(epoch).permutation(len(X))
        history = model.fit(X[order], Y[order], batch_size=16, epochs=1, shuffle=False, verbose=0)
        losses += history.history["loss"]
    return losses


def values(model: Any) -> list[bytes]:
    return [np.asarray(v.numpy()).tobytes() for v in [*model.weights, *model.optimizer.variables]]


@needs_tf_backend
def test_keras_model_and_adam_restore_in_tensorflow_with_assert_consumed(tmp_path: Path):
    model, optimizer = new_objects()
    fit(model, range(1))
    ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer)
    manager = ckptlib.CheckpointManager(str(tmp_path), max_to_keep=2)
    for _ in range(3):
        manager.save(ckptlib.tf.state(ckpt))
    assert [Path(p).name for p in manager.checkpoints] == ["ckpt-2", "ckpt-3"]
    assert int(ckpt.save_counter) == 3

    fresh, fresh_optimizer = new_objects(seed=1)
    restored = tf.train.Checkpoint(model=fresh, optimizer=fresh_optimizer)
    tf_manager = tf.train.CheckpointManager(restored, str(tmp_path), max_to_keep=2)
    assert tf_manager.latest_checkpoint == str(tmp_path / "ckpt-3")
    assert tf_manager.checkpoints == [str(tmp_path / "ckpt-2"), str(tmp_path / "ckpt-3")]
    restored.restore(tf_manager.latest_checkpoint).assert_consumed()
    assert values(fresh) == values(model)
    assert int(restored.save_counter) == 3
    assert Path(tf_manager.save()).name == "ckpt-4"  # TF numbers on from the restored counter


@needs_tf_backend
def test_the_files_hold_what_checkpoint_write_writes(tmp_path: Path):
    model, optimizer = new_objects()
    fit(model, range(1))
    ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer)
    ckpt.save_counter.assign(7)
    ckptlib.save(ckptlib.tf.state(ckpt, count=False), str(tmp_path / "ours"))
    ckpt.write(str(tmp_path / "theirs"))
    assert int(ckpt.save_counter) == 7
    ours, theirs = ckptlib.restore(str(tmp_path / "ours")), ckptlib.restore(str(tmp_path / "theirs"))
    assert sorted(ours) == sorted(theirs)
    graphs = [TrackableObjectGraph.FromString(tree.pop(OBJECT_GRAPH_KEY).item()) for tree in (ours, theirs)]
    assert graphs[0] == graphs[1]
    for key, value in theirs.items():
        assert ours[key].dtype == value.dtype and ours[key].tobytes() == value.tobytes(), key
    reader = tf.train.load_checkpoint(str(tmp_path / "ours"))
    assert reader.get_tensor("save_counter/.ATTRIBUTES/VARIABLE_VALUE") == 7


@needs_tf_backend
@pytest.mark.parametrize("restorer", ["tensorflow", "ckptlib"])
def test_resumed_training_gives_the_same_losses(tmp_path: Path, restorer: str):
    straight = fit(new_objects()[0], range(4))

    model, optimizer = new_objects()
    losses = fit(model, range(2))
    manager = ckptlib.CheckpointManager(str(tmp_path), max_to_keep=1)
    manager.save(ckptlib.tf.state(tf.train.Checkpoint(model=model, optimizer=optimizer)))

    resumed, resumed_optimizer = new_objects(seed=5)
    ckpt = tf.train.Checkpoint(model=resumed, optimizer=resumed_optimizer)
    if restorer == "tensorflow":
        ckpt.restore(manager.latest_checkpoint).assert_consumed()
    else:
        ckptlib.tf.restore(str(tmp_path), ckpt)
    assert int(resumed_optimizer.iterations.numpy()) == 2 * len(X) // 16
    assert losses + fit(resumed, range(2, 4)) == straight


@needs_tf_backend
def test_ckptlib_restores_what_tensorflow_wrote(tmp_path: Path):
    model, optimizer = new_objects()
    fit(model, range(1))
    prefix = tf.train.Checkpoint(model=model, optimizer=optimizer).save(str(tmp_path / "ckpt"))
    fresh, fresh_optimizer = new_objects(seed=3)
    ckpt = tf.train.Checkpoint(model=fresh, optimizer=fresh_optimizer)
    assert ckptlib.tf.restore(str(tmp_path), ckpt) == prefix
    assert values(fresh) == values(model)
    assert int(ckpt.save_counter) == 1


def test_save_counter_counts_saves_as_tensorflow_does(tmp_path: Path):
    ckpt = tf.train.Checkpoint(v=tf.Variable([1.0, 2.0]))
    assert ckptlib.tf.state(ckpt)["save_counter/.ATTRIBUTES/VARIABLE_VALUE"] == 1
    assert ckptlib.tf.state(ckpt, count=False)["save_counter/.ATTRIBUTES/VARIABLE_VALUE"] == 1
    prefix = ckptlib.CheckpointManager(str(tmp_path), max_to_keep=None).save(ckptlib.tf.state(ckpt))
    assert Path(prefix).name == "ckpt-1" and int(ckpt.save_counter) == 2
    assert ckptlib.tf.load(prefix)["save_counter/.ATTRIBUTES/VARIABLE_VALUE"] == 2
    assert Path(ckpt.save(str(tmp_path / "ckpt"))).name == "ckpt-3"


def test_plain_modules_dicts_and_names_needing_escapes(tmp_path: Path):
    net = tf.Module()
    net.layers = {"k.w/x": tf.Variable(np.arange(6, dtype=np.float32).reshape(2, 3))}
    net.steps = [tf.Variable(3, dtype=tf.int64), tf.Variable(b"text")]
    flat = ckptlib.tf.state({"net": net})
    assert "net/layers/k..w.Sx/.ATTRIBUTES/VARIABLE_VALUE" in flat
    assert all(isinstance(value, np.ndarray) for value in flat.values())
    ckptlib.save(flat, str(tmp_path / "ckpt-1"))
    assert "_CKPTLIB_STRUCTURE" not in dict(ckptlib.list_variables(str(tmp_path / "ckpt-1")))  # written as TF would

    other = tf.Module()
    other.layers = {"k.w/x": tf.Variable(tf.zeros([2, 3]))}
    other.steps = [tf.Variable(0, dtype=tf.int64), tf.Variable(b"")]
    tf.train.Checkpoint(net=other).restore(str(tmp_path / "ckpt-1")).assert_consumed()
    assert other.layers["k.w/x"].numpy().tolist() == [[0, 1, 2], [3, 4, 5]]
    assert other.steps[1].numpy() == b"text"

    again = tf.Module()
    again.layers = {"k.w/x": tf.Variable(tf.zeros([2, 3]))}
    again.steps = [tf.Variable(0, dtype=tf.int64), tf.Variable(b"")]
    ckptlib.tf.restore(str(tmp_path / "ckpt-1"), {"net": again})
    assert int(again.steps[0].numpy()) == 3 and again.steps[1].numpy() == b"text"


def _net(first: Any, second: Any = 0.0) -> tf.train.Checkpoint:
    return tf.train.Checkpoint(a=tf.Variable(first), b=tf.Variable(second))


def test_damaged_checkpoint_assigns_nothing(tmp_path: Path):
    prefix = ckptlib.save(ckptlib.tf.state(_net(np.ones(1000, np.float32), 2.0)), str(tmp_path / "ckpt-1"))
    data = f"{prefix}.data-00000-of-00001"
    raw = bytearray(Path(data).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    Path(data).write_bytes(bytes(raw))
    target = _net(np.zeros(1000, np.float32))
    with pytest.raises(ChecksumMismatchError):
        ckptlib.tf.restore(prefix, target)
    assert not target.a.numpy().any() and float(target.b.numpy()) == 0.0 and int(target.save_counter) == 0


def test_mismatch_assigns_nothing_and_names_every_key(tmp_path: Path):
    prefix = ckptlib.save(ckptlib.tf.state(_net(np.ones(3, np.float32), 2.0)), str(tmp_path / "ckpt-1"))
    target = _net(np.zeros(4, np.float32))
    with pytest.raises(
        ShapeMismatchError, match=r"a/\.ATTRIBUTES/VARIABLE_VALUE: target shape \[4\], checkpoint has \[3\]"
    ):
        ckptlib.tf.restore(prefix, target)
    assert float(target.b.numpy()) == 0.0 and int(target.save_counter) == 0

    with pytest.raises(RestoreMismatchError, match="target dtype int32, checkpoint has float"):
        ckptlib.tf.restore(prefix, _net(np.zeros(3, np.int32), 0.0))


def test_strict_wants_exactly_the_objects_tensors(tmp_path: Path):
    prefix = ckptlib.save(ckptlib.tf.state(_net(np.ones(3, np.float32), 2.0)), str(tmp_path / "ckpt-1"))
    fewer = tf.train.Checkpoint(a=tf.Variable(np.zeros(3, np.float32)))
    with pytest.raises(RestoreMismatchError, match=r"b/\.ATTRIBUTES/VARIABLE_VALUE: in the checkpoint, but no object"):
        ckptlib.tf.restore(prefix, fewer)
    more = tf.train.Checkpoint(a=tf.Variable(np.zeros(3, np.float32)), c=tf.Variable(5.0))
    with pytest.raises(RestoreMismatchError, match=r"c/\.ATTRIBUTES/VARIABLE_VALUE: missing from the checkpoint"):
        ckptlib.tf.restore(prefix, more)
    assert not more.a.numpy().any()
    ckptlib.tf.restore(prefix, more, strict=False)
    assert more.a.numpy().tolist() == [1, 1, 1] and float(more.c.numpy()) == 5.0


def test_refuses_what_is_not_a_tf2_object_checkpoint(tmp_path: Path):
    with pytest.raises(InvalidStructureError):
        ckptlib.tf.state([tf.Variable(1.0)])
    prefix = ckptlib.save({"a": np.ones(3, np.float32)}, str(tmp_path / "plain"))
    with pytest.raises(RestoreMismatchError, match=OBJECT_GRAPH_KEY):
        ckptlib.tf.restore(prefix, _net(np.zeros(3, np.float32)))


def test_load_needs_no_objects(tmp_path: Path):
    prefix = ckptlib.save(ckptlib.tf.state(_net(np.ones(3, np.float32))), os.path.join(tmp_path, "ckpt-1"))
    tree = ckptlib.tf.load(prefix)
    assert tree["a/.ATTRIBUTES/VARIABLE_VALUE"].tolist() == [1, 1, 1]
    assert TrackableObjectGraph.FromString(tree[OBJECT_GRAPH_KEY].item()).nodes[0].children


def test_every_dtype_restores_bit_for_bit(tmp_path: Path):
    rng = np.random.default_rng(0)
    values = {
        "f32": rng.normal(size=(33, 7)).astype(np.float32),
        "f16": rng.normal(size=5).astype(np.float16),
        "bf16": tf.constant(rng.normal(size=(4, 4)), dtype=tf.bfloat16),
        "f64": rng.normal(size=3),
        "i8": np.arange(-3, 3, dtype=np.int8),
        "u16": np.arange(9, dtype=np.uint16),
        "i64": np.int64(2**40),
        "flag": np.array([True, False]),
        "c64": np.array([1 + 2j], np.complex64),
        "text": np.array([b"a", b"bc"], dtype=object),
    }
    source = tf.train.Checkpoint(**{name: tf.Variable(value) for name, value in values.items()})
    prefix = ckptlib.save(ckptlib.tf.state(source), str(tmp_path / "ckpt-1"))
    target = tf.train.Checkpoint(**{name: tf.Variable(tf.zeros_like(value)) for name, value in values.items()})
    ckptlib.tf.restore(prefix, target)
    for name in values:
        want, got = getattr(source, name), getattr(target, name)
        same = got.numpy().tolist() if name == "text" else got.numpy().tobytes()
        assert got.dtype == want.dtype and same == (want.numpy().tolist() if name == "text" else want.numpy().tobytes())
    target.f32.assign_add(tf.ones((33, 7)))  # the restored memory is the variable's own
    assert np.array_equal(target.f32.numpy(), values["f32"] + 1)


@needs_tf_backend
def test_an_optimizer_not_built_yet_is_refused_with_a_hint(tmp_path: Path):
    model, optimizer = new_objects()
    prefix = ckptlib.save(ckptlib.tf.state(tf.train.Checkpoint(model=model, optimizer=optimizer)), str(tmp_path / "c"))
    keras.backend.clear_session()
    fresh = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(1),
        ]
    )
    with pytest.raises(RestoreMismatchError, match=r"optimizer\.build\(model\.trainable_variables\)"):
        ckptlib.tf.restore(prefix, {"model": fresh, "optimizer": keras.optimizers.Adam(1e-2)})


def test_state_is_a_snapshot_that_later_updates_leave_alone(tmp_path: Path):
    ckpt = _net(np.ones(1000, np.float32), 2.0)
    flat = ckptlib.tf.state(ckpt)
    ckpt.a.assign_add(tf.ones(1000))
    ckpt.b.assign(5.0)
    prefix = ckptlib.save(flat, str(tmp_path / "ckpt-1"))
    assert ckptlib.tf.load(prefix)["a/.ATTRIBUTES/VARIABLE_VALUE"].tolist() == [1.0] * 1000
    assert ckptlib.tf.load(prefix)["b/.ATTRIBUTES/VARIABLE_VALUE"] == 2.0


def test_a_model_alone_restores_from_a_checkpoint_of_model_and_optimizer(tmp_path: Path):
    """Keras 3 stores each weight once, under the optimizer's ``_trainable_variables``; a
    ``Checkpoint(model=...)`` alone names it by the model's path: found through the graph."""
    model, optimizer = new_objects(seed=1)
    fit(model, range(1))
    prefix = ckptlib.CheckpointManager(tmp_path, max_to_keep=1).save(
        ckptlib.tf.state(tf.train.Checkpoint(model=model, optimizer=optimizer))
    )
    fresh, _ = new_objects(seed=2)
    assert values(fresh) != values(model)
    ckptlib.tf.restore(prefix, tf.train.Checkpoint(model=fresh), strict=False)
    assert values(fresh) == values(model)
    other, _ = new_objects(seed=3)
    unbuilt = keras.optimizers.Adam(1e-3)
    ckptlib.tf.restore(prefix, {"model": other, "optimizer": unbuilt}, strict=False)
    assert [np.asarray(v.numpy()).tobytes() for v in other.weights] == values(model)[: len(other.weights)]
    assert int(unbuilt.iterations.numpy()) == int(optimizer.iterations.numpy()) > 0
