"""Write the TF2 object-graph golden checkpoints under ``tests/data/golden/`` with real TensorFlow.

Rerun (needs TensorFlow and Keras 3; tested with tensorflow-cpu 2.21)::

    cd /work/main && TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python tests/data/make_golden_object_graph.py

Every case directory is deleted and rewritten; values come from fixed seeds. Pass case names as
arguments to regenerate only those. ``tests/test_object_graph_read.py`` reads the result with
ckptlib and does not need TensorFlow.

Each ``golden/<case>/`` holds what ``tf.train.Checkpoint.save`` wrote (prefix ``ckpt-1``, the
``checkpoint`` state file), make_golden.py's ``expected.json`` / ``expected.npz`` (so
``tests/test_golden.py`` checks their values like every other case) and ``expected_paths.json``:
``prefix``, ``tensorflow`` (version), and ``tensors``: for every tensor key the graph names,
``paths`` (every object path that reaches the variable, each a list of unescaped edge names,
sorted) and ``slot`` (None, or ``name``, ``variable`` and ``optimizer`` paths). The paths come
from walking the live Python objects (``_trackable_children``, as TF's own graph view does) from
the ``tf.train.Checkpoint`` root, not from the file; a variable is tied to its key by the one
path of it whose key is stored.

Cases: graph_sequential (Keras 3 ``Sequential`` + Keras Adam after one step: the weights sit under
``model`` and in the optimizer's ``_trainable_variables``), graph_functional (a Keras 3 functional
model with two branches + Adam, one step), graph_module (``tf.Module`` with dict and list children
and one variable held twice), graph_escapes (dict keys and attribute names with ``.`` and ``/``),
graph_slots (``tf.compat.v1.train.AdamOptimizer`` on a ``tf.Module``: ``.OPTIMIZER_SLOT`` slot
variables, which Keras 3 optimizers do not make).
"""

from __future__ import annotations

import json
import os
import shutil
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_golden  # its expected.json / expected.npz, which every golden case has

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "golden")


def escape(name: str) -> str:
    return name.replace(".", "..").replace("/", ".S")


def key_of(path: tuple[str, ...]) -> str:
    return "/".join(escape(p) for p in path) + "/.ATTRIBUTES/VARIABLE_VALUE"


def live_paths(root) -> dict[int, tuple[object, list[tuple[str, ...]]]]:
    """id(object) -> (object, every simple path reaching it from ``root``)."""
    found: dict[int, tuple[object, list[tuple[str, ...]]]] = {}

    def walk(obj, path, on_path):
        found.setdefault(id(obj), (obj, []))[1].append(path)
        for name, child in obj._trackable_children(save_type="checkpoint").items():
            if id(child) not in on_path:
                walk(child, (*path, name), on_path | {id(child)})

    walk(root, (), {id(root)})
    return found


def record(case: str, root: tf.train.Checkpoint, description: str, optimizers: list = ()) -> None:
    """Save ``root``; write make_golden's ``expected.json`` / ``expected.npz`` and
    ``expected_paths.json`` from the live objects."""
    case_dir = os.path.join(GOLDEN, case)
    prefix = root.save(os.path.join(case_dir, "ckpt"))
    make_golden.record(case, os.path.basename(prefix), description=description)
    stored = set(tf.train.load_checkpoint(prefix).get_variable_to_shape_map())
    tensors: dict[str, dict] = {}
    key_by_object: dict[int, str] = {}
    paths_by_object = live_paths(root)
    for obj_id, (_obj, paths) in paths_by_object.items():
        keys = {key_of(p) for p in paths} & stored
        if keys:
            (key,) = keys
            key_by_object[obj_id] = key
            tensors[key] = {"paths": sorted(list(p) for p in paths), "slot": None}
    for optimizer in optimizers:
        (opt_path,) = paths_by_object[id(optimizer)][1]
        for slot_name in optimizer.get_slot_names():
            for variable_id, (variable, var_paths) in paths_by_object.items():
                if variable_id not in key_by_object or "/.OPTIMIZER_SLOT/" in key_by_object[variable_id]:
                    continue
                slot = optimizer.get_slot(variable, slot_name)
                if slot is None:
                    continue
                var_key = key_by_object[variable_id]
                key = var_key.replace("/.ATTRIBUTES/VARIABLE_VALUE", "") + "/.OPTIMIZER_SLOT/"
                key += "/".join(escape(p) for p in opt_path) + "/" + escape(slot_name) + "/.ATTRIBUTES/VARIABLE_VALUE"
                assert key in stored, key
                (var_path,) = [p for p in var_paths if key_of(p) == var_key]
                tensors[key] = {
                    "paths": [],
                    "slot": {"name": slot_name, "variable": list(var_path), "optimizer": list(opt_path)},
                }
    missing = stored - set(tensors) - {"_CHECKPOINTABLE_OBJECT_GRAPH"}
    assert not missing, missing
    manifest = {"case": case, "tensorflow": tf.__version__, "prefix": os.path.basename(prefix)}
    lines = ["{"] + [f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}," for k, v in manifest.items()]
    inner = [
        f"  {json.dumps(k, ensure_ascii=False)}: {json.dumps(v, ensure_ascii=False)}"
        for k, v in sorted(tensors.items())
    ]
    lines += [' "tensors": {', ",\n".join(inner), " }", "}"]
    with open(os.path.join(case_dir, "expected_paths.json"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def fresh(case: str) -> str:
    case_dir = os.path.join(GOLDEN, case)
    shutil.rmtree(case_dir, ignore_errors=True)
    os.makedirs(case_dir)
    return case_dir


def train_one_step(model, optimizer, n_in: int, n_out: int) -> None:
    x = np.random.RandomState(0).randn(4, n_in).astype(np.float32)
    y = np.random.RandomState(1).randn(4, n_out).astype(np.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean((model(x) - y) ** 2)
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))


def case_graph_sequential() -> None:
    fresh("graph_sequential")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="relu"), keras.layers.Dense(1)])
    optimizer = keras.optimizers.Adam(0.01)
    train_one_step(model, optimizer, 3, 1)
    record(
        "graph_sequential",
        tf.train.Checkpoint(model=model, optimizer=optimizer),
        "Keras 3 Sequential + Keras Adam, one step: weights under model and optimizer/_trainable_variables",
    )


def case_graph_functional() -> None:
    fresh("graph_functional")
    keras.utils.set_random_seed(1)
    inputs = keras.Input((3,))
    left = keras.layers.Dense(2, name="left")(inputs)
    right = keras.layers.Dense(2, use_bias=False, name="right")(inputs)
    outputs = keras.layers.Dense(1, name="head")(keras.layers.Concatenate()([left, right]))
    model = keras.Model(inputs, outputs)
    optimizer = keras.optimizers.Adam(0.01)
    train_one_step(model, optimizer, 3, 1)
    record(
        "graph_functional",
        tf.train.Checkpoint(model=model, optimizer=optimizer),
        "Keras 3 functional model, two branches + Keras Adam, one step",
    )


def case_graph_module() -> None:
    fresh("graph_module")
    root = tf.Module()
    shared = tf.Variable(np.arange(3, dtype=np.float32), name="shared")
    root.layers = [tf.Variable(np.ones((2, 2), np.float32)), {"w": tf.Variable([1.5, -2.0]), "b": shared}]
    root.config = {"scale": tf.Variable(0.5), "nested": {"steps": tf.Variable(7, dtype=tf.int64)}}
    root.alias = shared
    record(
        "graph_module",
        tf.train.Checkpoint(net=root, step=tf.Variable(3, dtype=tf.int64)),
        "tf.Module with dict and list children, one variable held twice",
    )


def case_graph_escapes() -> None:
    fresh("graph_escapes")
    root = tf.Module()
    root.table = {"a.b": tf.Variable(1.0), "c/d": tf.Variable(2.0), "e./.S..": tf.Variable(3.0)}
    setattr(root, "x.y", tf.Variable([4.0, 5.0]))
    inner = tf.Module()
    setattr(inner, "p/q", tf.Variable(6.0))
    root.inner = inner
    record("graph_escapes", tf.train.Checkpoint(net=root), "edge names with . and / (dict keys, attribute names)")


def case_graph_slots() -> None:
    fresh("graph_slots")
    net = tf.Module()
    net.dense = {"kernel": tf.Variable(np.full((3, 2), 0.25, np.float32)), "bias": tf.Variable(np.zeros(2, np.float32))}
    optimizer = tf.compat.v1.train.AdamOptimizer(0.01)
    x = np.random.RandomState(0).randn(4, 3).astype(np.float32)
    variables = [net.dense["kernel"], net.dense["bias"]]
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean((tf.matmul(x, variables[0]) + variables[1]) ** 2)
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
    record(
        "graph_slots",
        tf.train.Checkpoint(model=net, optimizer=optimizer),
        "tf.Module + tf.compat.v1.train.AdamOptimizer: .OPTIMIZER_SLOT slot variables",
        [optimizer],
    )


CASES = {
    "graph_sequential": case_graph_sequential,
    "graph_functional": case_graph_functional,
    "graph_module": case_graph_module,
    "graph_escapes": case_graph_escapes,
    "graph_slots": case_graph_slots,
}


def main(argv: list[str]) -> None:
    names = argv or list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; known: {list(CASES)}")
    for name in names:
        CASES[name]()
        total = sum(os.path.getsize(os.path.join(GOLDEN, name, f)) for f in os.listdir(os.path.join(GOLDEN, name)))
        print(f"{name}: {total} bytes")


if __name__ == "__main__":
    main(sys.argv[1:])
