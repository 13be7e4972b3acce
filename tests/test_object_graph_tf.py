"""Live: TensorFlow restores the object graphs ckptlib writes, and ckptlib edits TF2 checkpoints.

ckptlib writes a tree with ``object_graph=True`` (or through ``CheckpointManager``); a TF
mirror of the same tree (``tf.Module`` objects, dicts and lists of ``tf.Variable``s at the same
paths) restores it with ``tf.train.Checkpoint(**mirror).restore(p).assert_consumed()``, bit for
bit; ``tf.train.CheckpointManager`` lists and restores ckptlib's directory; TF1's ``Saver``
restores by variable name through the graph's ``full_name``. And a TF2 checkpoint read by
ckptlib, edited and written again keeps its object graph and restores in TF.

Skipped as a whole, with a visible reason, where TensorFlow is not installed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

tf = pytest.importorskip(
    "tensorflow",
    reason="TensorFlow is not installed: live interop tests need tensorflow-cpu (pip install -e .[tf])",
)

import ckptlib  # noqa: E402
from ckptlib.format.object_graph import OBJECT_GRAPH_KEY  # noqa: E402

GOLDEN = Path(__file__).parent / "data" / "golden"


def _variables(tree: Any) -> Any:
    """A TF mirror of ``tree``: dicts and lists as they are (TF wraps them), leaves as zeroed
    ``tf.Variable``s of the leaf's dtype and shape."""
    if isinstance(tree, dict):
        return {k: _variables(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_variables(v) for v in tree]
    value = np.asarray(tree)
    if value.dtype.kind in "SUO":
        return tf.Variable(np.zeros(value.shape, dtype=object).astype(bytes), dtype=tf.string)
    return tf.Variable(np.zeros_like(value))


def _leaves(tree: Any, mirror: Any) -> list[tuple[Any, Any]]:
    if isinstance(tree, dict):
        return [pair for k in tree for pair in _leaves(tree[k], mirror[k])]
    if isinstance(tree, list):
        return [pair for a, b in zip(tree, mirror, strict=True) for pair in _leaves(a, b)]
    return [(tree, mirror)]


def _assert_restored(tree: Any, mirror: Any) -> None:
    for value, variable in _leaves(tree, mirror):
        got = variable.numpy()
        want = np.asarray(value)
        if want.dtype.kind in "SUO":
            want = np.asarray(want.tolist() if want.dtype.kind == "O" else value, dtype=object)
            want = np.vectorize(lambda s: s.encode() if isinstance(s, str) else s, otypes=[object])(want)
            assert got.tolist() == want.tolist()
        else:
            assert got.dtype == want.dtype and got.shape == want.shape
            assert got.tobytes() == want.tobytes()


def _tree() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    nan = np.frombuffer(np.uint32(0x7FC0DEAD).tobytes(), dtype=np.float32)[0]
    return {
        "model": {
            "dense": {"kernel": rng.standard_normal((4, 3)).astype(np.float32), "bias": np.array([nan, -0.0, 1e-45])},
            "embed": rng.integers(-9, 9, (5, 2), dtype=np.int64),
        },
        "slots": [rng.standard_normal(3).astype(np.float16), np.array([True, False])],
        "step": np.int64(41),
        "names": np.array([b"a", b"bc"], dtype=object),
    }


def test_mirror_restores_bit_for_bit(tmp_path):
    """A mirror of dicts, lists and variables restores ckptlib's checkpoint, every object matched."""
    tree = _tree()
    prefix = ckptlib.save(tree, tmp_path / "ckpt", object_graph=True)
    mirror = _variables(tree)
    checkpoint = tf.train.Checkpoint(**mirror)
    checkpoint.restore(prefix).assert_consumed()
    _assert_restored(tree, mirror)
    assert int(checkpoint.save_counter.numpy()) == 1


def test_modules_restore(tmp_path):
    """``tf.Module`` objects at the paths of dicts restore as the dicts' mirrors do."""
    tree = {"model": {"dense": {"kernel": np.ones((2, 2), np.float32), "bias": np.arange(2.0)}}}
    prefix = ckptlib.save(tree, tmp_path / "ckpt", object_graph=True)
    dense = tf.Module()
    dense.kernel = tf.Variable(np.zeros((2, 2), np.float32))
    dense.bias = tf.Variable(np.zeros(2))
    model = tf.Module()
    model.dense = dense
    tf.train.Checkpoint(model=model).restore(prefix).assert_consumed()
    assert dense.kernel.numpy().tolist() == [[1, 1], [1, 1]] and dense.bias.numpy().tolist() == [0, 1]


def test_python_leaves_restore_as_scalar_variables(tmp_path):
    """Python scalars and strings are 0-d variables; None and empty containers have no object."""
    tree = {"lr": 0.5, "epoch": 3, "done": True, "tag": "run-1", "raw": b"\x00\xff", "none": None, "empty": {}}
    prefix = ckptlib.save(tree, tmp_path / "ckpt", object_graph=True)
    mirror = {
        "lr": tf.Variable(0.0, dtype=tf.float64),
        "epoch": tf.Variable(0, dtype=tf.int64),
        "done": tf.Variable(False),
        "tag": tf.Variable(b""),
        "raw": tf.Variable(b""),
    }
    tf.train.Checkpoint(**mirror).restore(prefix).assert_consumed()
    assert [mirror[k].numpy() for k in mirror] == [0.5, 3, True, b"run-1", b"\x00\xff"]
    assert ckptlib.restore(prefix) == tree


def test_escaped_names(tmp_path):
    """Dict keys holding ``.`` and ``/`` are escaped in keys and restore into the same dict keys."""
    tree = {"la.yer": {"k.w/x": np.arange(3.0), "a/b/c": {"..": np.ones(1, np.int32)}}}
    prefix = ckptlib.save(tree, tmp_path / "ckpt", object_graph=True)
    keys = {name for name, _ in tf.train.list_variables(prefix)}
    assert "la..yer/k..w.Sx/.ATTRIBUTES/VARIABLE_VALUE" in keys
    assert "la..yer/a.Sb.Sc/..../.ATTRIBUTES/VARIABLE_VALUE" in keys
    mirror = _variables(tree)
    tf.train.Checkpoint(**mirror).restore(prefix).assert_consumed()
    _assert_restored(tree, mirror)
    # TF writes the same keys for the same mirror
    written = tf.train.Checkpoint(**_variables(tree)).save(str(tmp_path / "tf"))
    assert {n for n, _ in tf.train.list_variables(written)} == keys - {"_CKPTLIB_STRUCTURE"}


def test_keras_like_nesting(tmp_path):
    """A model of layer lists beside an optimizer of iterations and per-variable slots."""
    rng = np.random.default_rng(1)
    layers = [{"kernel": rng.standard_normal((3, 2)), "bias": np.zeros(2)} for _ in range(2)]
    tree = {
        "model": {"layers": layers},
        "optimizer": {
            "iterations": np.int64(10),
            "learning_rate": np.float32(0.001),
            "momentums": [rng.standard_normal((3, 2)), np.zeros(2)],
        },
    }
    prefix = ckptlib.save(tree, tmp_path / "ckpt", object_graph=True)

    class Layer(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.kernel = tf.Variable(np.zeros((3, 2)))
            self.bias = tf.Variable(np.zeros(2))

    model = tf.Module()
    model.layers = [Layer(), Layer()]
    optimizer = tf.Module()
    optimizer.iterations = tf.Variable(np.int64(0))
    optimizer.learning_rate = tf.Variable(np.float32(0))
    optimizer.momentums = [tf.Variable(np.zeros((3, 2))), tf.Variable(np.zeros(2))]
    tf.train.Checkpoint(model=model, optimizer=optimizer).restore(prefix).assert_consumed()
    for layer, values in zip(model.layers, layers, strict=True):
        assert layer.kernel.numpy().tobytes() == values["kernel"].tobytes()
    assert optimizer.iterations.numpy() == 10


def test_tf_checkpoint_manager_lists_and_restores(tmp_path):
    """TF's manager adopts ckptlib's directory: same list, same latest, counter = checkpoint number."""
    manager = ckptlib.CheckpointManager(tmp_path, max_to_keep=2)
    trees = [{"w": np.full(3, i, np.float32), "b": {"x": np.int32(i)}} for i in range(3)]
    prefixes = [manager.save(tree) for tree in trees]
    assert [os.path.basename(p) for p in prefixes] == ["ckpt-1", "ckpt-2", "ckpt-3"]
    mirror = _variables(trees[0])
    checkpoint = tf.train.Checkpoint(**mirror)
    tf_manager = tf.train.CheckpointManager(checkpoint, str(tmp_path), max_to_keep=2)
    assert tf_manager.checkpoints == manager.checkpoints == prefixes[1:]
    assert tf_manager.latest_checkpoint == manager.latest_checkpoint == prefixes[2]
    assert tf.train.latest_checkpoint(str(tmp_path)) == prefixes[2]
    assert tf_manager.restore_or_initialize() == prefixes[2]
    checkpoint.restore(prefixes[2]).assert_consumed()
    _assert_restored(trees[2], mirror)
    assert int(checkpoint.save_counter.numpy()) == 3
    # TF's manager saves on: its numbering follows the restored counter
    assert tf_manager.save() == str(tmp_path / "ckpt-4")


def test_tf1_saver_restores_by_name(tmp_path):
    """TF1's Saver finds each variable by its name through the graph's ``full_name``."""
    tree = {"model": {"dense": {"kernel": np.arange(6.0).reshape(2, 3), "bias": np.ones(3, np.float32)}}}
    prefix = ckptlib.save(tree, tmp_path / "ckpt", object_graph=True)
    with tf.Graph().as_default():
        kernel = tf.compat.v1.get_variable("model/dense/kernel", shape=(2, 3), dtype=tf.float64)
        bias = tf.compat.v1.get_variable("model/dense/bias", shape=(3,), dtype=tf.float32)
        saver = tf.compat.v1.train.Saver([kernel, bias])
        with tf.compat.v1.Session() as sess:
            saver.restore(sess, prefix)
            got_kernel, got_bias = sess.run([kernel, bias])
    assert got_kernel.tobytes() == tree["model"]["dense"]["kernel"].tobytes()
    assert got_bias.tobytes() == tree["model"]["dense"]["bias"].tobytes()


def _edit_and_write_back(source: str, target: str) -> dict[str, np.ndarray]:
    """Every tensor of ``source`` read by ckptlib, float ones doubled, written to ``target``."""
    with ckptlib.load_checkpoint(source) as reader:
        flat = reader.read_all()
    edited = {k: v * 2 if v.dtype.kind == "f" else v for k, v in flat.items()}
    ckptlib.save(edited, target)
    return edited


def test_edit_tf2_checkpoint_keeps_its_graph(tmp_path):
    """A TF-written object-graph checkpoint, edited by ckptlib, restores in TF with the edits."""
    rng = np.random.default_rng(2)
    source = {"layer.1": {"k/w": rng.standard_normal((2, 2)).astype(np.float32)}, "steps": [np.int64(7)]}
    with_values = {"layer.1": {"k/w": tf.Variable(source["layer.1"]["k/w"])}, "steps": [tf.Variable(np.int64(7))]}
    written = tf.train.Checkpoint(**with_values).save(str(tmp_path / "tf"))
    edited = _edit_and_write_back(written, str(tmp_path / "edited"))
    with ckptlib.load_checkpoint(written) as before, ckptlib.load_checkpoint(tmp_path / "edited") as after:
        assert after.keys_list() == before.keys_list()
        assert after.get_tensor(OBJECT_GRAPH_KEY).item() == before.get_tensor(OBJECT_GRAPH_KEY).item()
    mirror = {"layer.1": {"k/w": tf.Variable(np.zeros((2, 2), np.float32))}, "steps": [tf.Variable(np.int64(0))]}
    tf.train.Checkpoint(**mirror).restore(str(tmp_path / "edited")).assert_consumed()
    key = "layer..1/k.Sw/.ATTRIBUTES/VARIABLE_VALUE"
    assert mirror["layer.1"]["k/w"].numpy().tobytes() == edited[key].tobytes()
    assert mirror["layer.1"]["k/w"].numpy().tobytes() == (source["layer.1"]["k/w"] * 2).tobytes()
    assert mirror["steps"][0].numpy() == 7


def test_edit_golden_keras_checkpoint(tmp_path):
    """The golden Keras 3 checkpoint (Dense model + Adam), edited, restores into a fresh model."""
    keras = pytest.importorskip("keras")
    golden = str(GOLDEN / "tf2_keras" / "ckpt-1")
    edited = _edit_and_write_back(golden, str(tmp_path / "edited"))
    with ckptlib.load_checkpoint(golden) as before, ckptlib.load_checkpoint(tmp_path / "edited") as after:
        assert after.keys_list() == before.keys_list()
        assert after.get_tensor(OBJECT_GRAPH_KEY).item() == before.get_tensor(OBJECT_GRAPH_KEY).item()
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="relu"), keras.layers.Dense(2)])
    optimizer = keras.optimizers.Adam(0.01)
    optimizer.build(model.trainable_variables)
    tf.train.Checkpoint(model=model, optimizer=optimizer).restore(str(tmp_path / "edited")).assert_consumed()
    kernel = model.layers[0].kernel.numpy()
    assert any(kernel.tobytes() == v.tobytes() for v in edited.values())


def test_tuples_and_namedtuples_restore(tmp_path):
    """Namedtuple children are named by field (as TF's tuple wrapper names them), tuple children by index."""
    import collections

    pair = collections.namedtuple("pair", "mu nu")
    tree = {"m": {"moments": pair(np.ones(2), np.full(2, 2.0)), "t": (np.arange(3.0),)}}
    prefix = ckptlib.save(tree, tmp_path / "ckpt", object_graph=True)
    module = tf.Module()
    module.moments = pair(tf.Variable(np.zeros(2)), tf.Variable(np.zeros(2)))
    module.t = (tf.Variable(np.zeros(3)),)
    tf.train.Checkpoint(m=module).restore(prefix).assert_consumed()
    assert module.moments.nu.numpy().tolist() == [2, 2] and module.t[0].numpy().tolist() == [0, 1, 2]
    assert ckptlib.restore(prefix)["m"]["moments"].nu.tolist() == [2, 2]
