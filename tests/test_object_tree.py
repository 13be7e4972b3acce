"""Object graphs written without TensorFlow: keys, graph layout, and ckptlib's own round trip.

What TensorFlow makes of these files is in ``test_object_graph_tf.py``; here, with no
TensorFlow, the graph ckptlib writes is checked node by node against the layout TF writes
(FORMAT.md section 12), and ``ckptlib.restore`` gives back the saved tree and fills targets.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

import ckptlib
from ckptlib.format.object_graph import OBJECT_GRAPH_KEY, decode_graph
from ckptlib.tree import SAVE_COUNTER_KEY, STRUCTURE_KEY

GOLDEN = Path(__file__).parent / "data" / "golden"
Pair = collections.namedtuple("Pair", "first second")


@dataclasses.dataclass
class Opt:
    step: int
    mu: np.ndarray


def _tree() -> dict:
    return {
        "model": {"dense": {"kernel": np.arange(6.0).reshape(2, 3), "k.w/x": np.ones(2, np.float32)}},
        "opt": [np.int32(3), 2.5, "hi", b"by", None, [], {}],
        "pair": Pair(1, np.zeros(1)),
        "dc": Opt(4, np.ones(2)),
        7: {"flag": True},
    }


def _keys(prefix: str) -> set[str]:
    with ckptlib.load_checkpoint(prefix) as reader:
        return set(reader.keys_list())


def _graph(prefix: str):
    with ckptlib.load_checkpoint(prefix) as reader:
        return decode_graph(reader.get_tensor(OBJECT_GRAPH_KEY).item())


def test_keys_are_object_graph_keys(tmp_path):
    prefix = ckptlib.save(_tree(), tmp_path / "ckpt", object_graph=True)
    assert _keys(prefix) == {
        "model/dense/kernel/.ATTRIBUTES/VARIABLE_VALUE",
        "model/dense/k..w.Sx/.ATTRIBUTES/VARIABLE_VALUE",
        *(f"opt/{i}/.ATTRIBUTES/VARIABLE_VALUE" for i in range(4)),
        "pair/first/.ATTRIBUTES/VARIABLE_VALUE",
        "pair/second/.ATTRIBUTES/VARIABLE_VALUE",
        "dc/step/.ATTRIBUTES/VARIABLE_VALUE",
        "dc/mu/.ATTRIBUTES/VARIABLE_VALUE",
        "7/flag/.ATTRIBUTES/VARIABLE_VALUE",
        SAVE_COUNTER_KEY,
        OBJECT_GRAPH_KEY,
        STRUCTURE_KEY,
    }
    assert ckptlib.load_variable(prefix, SAVE_COUNTER_KEY) == 1
    assert ckptlib.load_variable(prefix, SAVE_COUNTER_KEY).dtype == np.int64


def test_graph_layout(tmp_path):
    """Root first, breadth first; one VARIABLE_VALUE attribute per variable, full_name its path;
    no objects for None or empty containers."""
    prefix = ckptlib.save(_tree(), tmp_path / "ckpt", object_graph=True)
    graph = _graph(prefix)
    root = graph.nodes[0]
    assert [c.local_name for c in root.children] == ["model", "opt", "pair", "dc", "7", "save_counter"]
    assert [c.node_id for c in root.children] == [1, 2, 3, 4, 5, 6]
    opt = graph.nodes[2]
    assert [c.local_name for c in opt.children] == ["0", "1", "2", "3"]
    by_key = {a.checkpoint_key: a for node in graph.nodes for a in node.attributes}
    assert set(by_key) == _keys(prefix) - {OBJECT_GRAPH_KEY, STRUCTURE_KEY}
    escaped = by_key["model/dense/k..w.Sx/.ATTRIBUTES/VARIABLE_VALUE"]
    assert (escaped.name, escaped.full_name) == ("VARIABLE_VALUE", "model/dense/k.w/x")
    assert by_key[SAVE_COUNTER_KEY].full_name == "save_counter"
    assert all(node.has_checkpoint_values.value for node in graph.nodes)
    assert all(len(node.attributes) == (not node.children) for node in graph.nodes)
    # every edge of the graph leads to a node reached once
    targets = [c.node_id for node in graph.nodes for c in node.children]
    assert sorted(targets) == list(range(1, len(graph.nodes)))


def test_restore_gives_the_tree_back(tmp_path):
    tree = _tree()
    prefix = ckptlib.save(tree, tmp_path / "ckpt", object_graph=True)
    back = ckptlib.restore(prefix)
    assert back.keys() == tree.keys()
    assert back["opt"] == [np.int32(3), 2.5, "hi", b"by", None, [], {}]
    assert type(back["opt"][0]) is np.int32
    assert back["model"]["dense"]["kernel"].tobytes() == tree["model"]["dense"]["kernel"].tobytes()
    assert back["pair"].first == 1 and isinstance(back["pair"], Pair)
    assert isinstance(back["dc"], Opt) and back["dc"].step == 4
    assert back[7] == {"flag": True}


def test_restore_into_fills_the_tree(tmp_path):
    prefix = ckptlib.save(_tree(), tmp_path / "ckpt", object_graph=True)
    kernel = np.zeros((2, 3))
    target = {
        "model": {"dense": {"kernel": kernel, "k.w/x": np.zeros(2, np.float32)}},
        "opt": [np.int32(0), 0.0, "", b"", None, [], {}],
        "pair": Pair(0, np.ones(1)),
        "dc": Opt(0, np.zeros(2)),
        7: {"flag": False},
    }
    report = ckptlib.restore(prefix, into=target)  # strict: the graph and counter are not "unexpected"
    assert report.missing == [] and report.unexpected == []
    assert kernel.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert report.tree["opt"][:4] == [3, 2.5, "hi", b"by"]
    assert report.tree["pair"].first == 1 and report.tree[7]["flag"] is True


def test_restore_into_reports_by_tree_path(tmp_path):
    """Reports and errors name tree paths (unescaped), not the object-graph keys they are stored under."""
    prefix = ckptlib.save({"a": np.ones(2), "b": np.ones(1), "k.w/x": {"y": 1}}, tmp_path / "ckpt", object_graph=True)
    with pytest.raises(ckptlib.RestoreMismatchError, match=r"(?m)^  b: in the checkpoint but not"):
        ckptlib.restore(prefix, into={"a": np.zeros(2), "k.w/x": {"y": 0}})
    with pytest.raises(ckptlib.ShapeMismatchError, match=r"(?m)^  a: target shape \[3\]"):
        ckptlib.restore(prefix, into={"a": np.zeros(3), "b": np.zeros(1), "k.w/x": {"y": 0}})
    report = ckptlib.restore(prefix, into={"a": np.zeros(2), "c": np.zeros(1), "k.w/x": {"y": 0}}, strict=False)
    assert report.missing == ["c"] and report.unexpected == ["b"] and report.restored == ["a", "k.w/x/y"]


def test_own_save_counter_is_kept(tmp_path):
    tree = {"w": np.ones(1), "save_counter": np.int64(9)}
    prefix = ckptlib.save(tree, tmp_path / "ckpt", object_graph=True)
    assert ckptlib.load_variable(prefix, SAVE_COUNTER_KEY) == 9
    assert ckptlib.restore(prefix) == tree
    assert ckptlib.restore(prefix, into={"w": np.zeros(1), "save_counter": np.int64(0)}).unexpected == []


def test_refused_trees(tmp_path):
    with pytest.raises(ckptlib.InvalidTensorError, match="same object"):
        ckptlib.save({0: np.ones(1), "0": np.ones(1)}, tmp_path / "a", object_graph=True)
    with pytest.raises(ckptlib.InvalidTensorError, match="save_counter"):
        ckptlib.save({"save_counter": {"x": np.ones(1)}}, tmp_path / "b", object_graph=True)
    assert not list(tmp_path.iterdir())


def test_reserved_names_are_plain_children(tmp_path):
    """Names ckptlib and TF reserve for whole entries are ordinary edge names in an object graph."""
    tree = {"a": {OBJECT_GRAPH_KEY: np.ones(1)}, STRUCTURE_KEY: "x"}
    prefix = ckptlib.save(tree, tmp_path / "ckpt", object_graph=True)
    assert f"a/{OBJECT_GRAPH_KEY}/.ATTRIBUTES/VARIABLE_VALUE" in _keys(prefix)
    assert f"{STRUCTURE_KEY}/.ATTRIBUTES/VARIABLE_VALUE" in _keys(prefix)
    assert ckptlib.restore(prefix) == tree


def test_flat_dict_gets_a_graph(tmp_path):
    """Even TF's own model, a flat dict of arrays, is written as objects when asked."""
    prefix = ckptlib.save({"w": np.ones(2)}, tmp_path / "ckpt", object_graph=True)
    assert _keys(prefix) == {"w/.ATTRIBUTES/VARIABLE_VALUE", SAVE_COUNTER_KEY, OBJECT_GRAPH_KEY, STRUCTURE_KEY}
    with ckptlib.load_checkpoint(prefix) as reader:
        record = json.loads(reader.get_tensor(STRUCTURE_KEY).item())
    assert record["version"] == 2 and record["root"][0] == "object_graph"
    assert ckptlib.restore(prefix)["w"].tolist() == [1, 1]


def test_saver_object_graph(tmp_path):
    saver = ckptlib.Saver(object_graph=True)
    first = saver.save({"w": np.ones(1)}, tmp_path / "model.ckpt")
    stepped = saver.save({"w": np.ones(1)}, tmp_path / "model.ckpt", global_step=40)
    again = saver.save({"w": np.ones(1)}, tmp_path / "other.ckpt")
    assert [ckptlib.load_variable(p, SAVE_COUNTER_KEY) for p in (first, stepped, again)] == [1, 40, 3]
    plain = ckptlib.Saver().save({"w": np.ones(1)}, tmp_path / "plain.ckpt")
    assert _keys(plain) == {"w"}


def test_manager_writes_graphs_by_default(tmp_path):
    manager = ckptlib.CheckpointManager(tmp_path / "run", max_to_keep=3)
    prefixes = [manager.save({"w": np.full(2, i)}) for i in range(2)]
    numbered = manager.save({"w": np.full(2, 7)}, checkpoint_number=10)
    assert [ckptlib.load_variable(p, SAVE_COUNTER_KEY) for p in [*prefixes, numbered]] == [1, 2, 3]
    target = {"w": np.zeros(2, np.int64)}
    assert manager.restore_or_initialize(into=target) == numbered
    assert target["w"].tolist() == [7, 7]
    # a new manager numbers on, and so does the counter
    later = ckptlib.CheckpointManager(tmp_path / "run", max_to_keep=3).save({"w": np.zeros(2)})
    assert later.endswith("ckpt-11") and ckptlib.load_variable(later, SAVE_COUNTER_KEY) == 11
    plain = ckptlib.CheckpointManager(tmp_path / "plain", max_to_keep=1, object_graph=False).save({"w": np.ones(1)})
    assert _keys(plain) == {"w"}


def test_golden_tf2_written_back_unchanged(tmp_path):
    """A TF2 checkpoint read and written by ckptlib keeps every key and its graph entry as TF wrote it."""
    golden = str(GOLDEN / "tf2_keras" / "ckpt-1")
    with ckptlib.load_checkpoint(golden) as reader:
        flat = reader.read_all()
    flat["optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"] = np.array(5, np.int64)
    prefix = ckptlib.save(flat, tmp_path / "edited")
    with ckptlib.load_checkpoint(golden) as before, ckptlib.load_checkpoint(prefix) as after:
        assert after.keys_list() == before.keys_list()
        assert after.get_tensor(OBJECT_GRAPH_KEY).item() == before.get_tensor(OBJECT_GRAPH_KEY).item()
        assert after.get_tensor("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE") == 5


def test_state_with_its_own_graph_is_written_by_name(tmp_path):
    """A TF2 checkpoint read by name goes through ``CheckpointManager`` (object graphs on) as it is."""
    with ckptlib.load_checkpoint(GOLDEN / "tf2_keras" / "ckpt-1") as reader:
        flat = reader.read_all()
        keys = reader.keys_list()
    prefix = ckptlib.CheckpointManager(tmp_path, max_to_keep=1).save(flat)
    assert prefix is not None and sorted(_keys(prefix)) == sorted(keys)
    assert ckptlib.save(flat, tmp_path / "direct", object_graph=True) and _keys(str(tmp_path / "direct")) == set(keys)


def _record(version: int, root: object) -> bytes:
    return json.dumps({"format": "ckptlib.structure", "version": version, "root": root}).encode()


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (_record(2, ["dict", ["a"], ["array"]]), "no object graph root"),
        (_record(1, ["object_graph", ["dict", ["a"], ["array"]]]), "another object graph root"),
        (_record(2, ["object_graph", ["object_graph", ["dict", ["a"], ["array"]]]]), "unknown node"),
        (_record(2, ["object_graph", ["dict", ["b"], ["array"]]]), "lacks"),
    ],
)
def test_a_damaged_object_graph_record_is_a_corrupt_checkpoint(tmp_path, record, message):
    writer = ckptlib.BundleWriter(tmp_path / "m")
    writer.add_all({"a/.ATTRIBUTES/VARIABLE_VALUE": np.ones(2), STRUCTURE_KEY: np.array(record, dtype=object)})
    writer.finish()
    with pytest.raises(ckptlib.CorruptCheckpointError, match=message):
        ckptlib.restore(tmp_path / "m")
    target = np.zeros(2)
    with pytest.raises(ckptlib.CorruptCheckpointError, match=message):
        ckptlib.restore(tmp_path / "m", into={"a": target})
    assert not target.any()


def test_a_carried_graph_must_be_one_and_name_only_tensors_the_state_holds(tmp_path):
    """A mapping holding ``_CHECKPOINTABLE_OBJECT_GRAPH`` is written as it is (a TF2 checkpoint
    read by name and edited): only if that entry is a graph whose every tensor it holds."""
    for graph in (np.ones(2), "not bytes", np.array(b"\xff\xff\xff", dtype=object)):
        for save in (
            lambda t: ckptlib.save(t, tmp_path / "a", object_graph=True),
            lambda t: ckptlib.CheckpointManager(tmp_path / "m", max_to_keep=1).save(t),
        ):
            with pytest.raises(ckptlib.InvalidTensorError, match="object graph"):
                save({OBJECT_GRAPH_KEY: graph, "w": np.ones(2)})
    prefix = ckptlib.save({"a": np.ones(1), "b": np.zeros(1)}, tmp_path / "g", object_graph=True)
    tree = ckptlib.load_checkpoint(prefix).read_all()
    del tree["b/.ATTRIBUTES/VARIABLE_VALUE"]
    with pytest.raises(ckptlib.InvalidTensorError, match=r"names tensors the state lacks: b/\.ATTRIBUTES"):
        ckptlib.save(tree, tmp_path / "h")
    del tree[STRUCTURE_KEY]
    tree["a/.ATTRIBUTES/VARIABLE_VALUE"] = np.full(1, 5.0)
    with pytest.raises(ckptlib.InvalidTensorError, match="lacks"):
        ckptlib.save(tree, tmp_path / "h")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(("a.", "h."))]


def test_a_save_counter_of_the_tree_must_be_an_integer_scalar(tmp_path):
    for bad in (7.5, np.array([1, 2]), "x"):
        with pytest.raises(ckptlib.InvalidTensorError, match="integer scalar"):
            ckptlib.save({"save_counter": bad, "w": np.ones(1)}, tmp_path / "m", object_graph=True)
    prefix = ckptlib.save({"save_counter": np.int32(7), "w": np.ones(1)}, tmp_path / "m", object_graph=True)
    with ckptlib.load_checkpoint(prefix) as reader:
        assert reader.get_tensor(SAVE_COUNTER_KEY).dtype == np.int64 and reader.get_tensor(SAVE_COUNTER_KEY) == 7


def test_names_tensorflow_would_misread_are_refused(tmp_path):
    for name in (".ATTRIBUTES", "x.ATTRIBUTES", ".OPTIMIZER_SLOT"):
        with pytest.raises(ckptlib.InvalidTensorError, match="cannot name an object"):
            ckptlib.save({"a": {name: {"VARIABLE_VALUE": np.ones(1)}}}, tmp_path / "m", object_graph=True)
    ckptlib.save({"a": {".ATTRIBUTES": np.ones(1)}}, tmp_path / "plain")  # fine without a graph
