"""Reading TF2 object graphs: object paths and slots per tensor, restore by object path,
``inspect``'s object paths, and hostile graphs refused in bounded time."""

from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest

import ckptlib
from ckptlib import object_graph_view
from ckptlib.cli import main
from ckptlib.format.object_graph import OBJECT_GRAPH_KEY, TrackableObjectGraph, encode_graph
from ckptlib.object_graph_view import ObjectGraph

GOLDEN = Path(__file__).parent / "data" / "golden"
CASES = ["graph_sequential", "graph_functional", "graph_module", "graph_escapes", "graph_slots"]


def expected(case: str) -> dict:
    return json.loads((GOLDEN / case / "expected_paths.json").read_text(encoding="utf-8"))


def prefix(case: str) -> str:
    return str(GOLDEN / case / expected(case)["prefix"])


def ckptlib_view(case: str) -> dict[str, dict]:
    """ckptlib's reading in the manifest's shape."""
    with ckptlib.load_checkpoint(prefix(case)) as reader:
        graph = reader.object_graph
    assert graph is not None
    out = {}
    for key, tensor in graph.tensors.items():
        slot = tensor.slot
        out[key] = {
            "paths": sorted(list(p) for p in tensor.paths),
            "slot": None
            if slot is None
            else {"name": slot.name, "variable": list(slot.variable), "optimizer": list(slot.optimizer)},
        }
    return out


@pytest.mark.parametrize("case", CASES)
def test_paths_and_slots_match_tensorflows_objects(case):
    """Every tensor's object paths and slot equal what the live TF objects had (recorded by
    make_golden_object_graph.py)."""
    assert ckptlib_view(case) == expected(case)["tensors"]


def tf_view(path: str) -> dict[str, dict]:
    """The same reading done with TensorFlow's reader, proto and escaping: every simple path."""
    tf = pytest.importorskip("tensorflow")
    from tensorflow.core.protobuf import trackable_object_graph_pb2
    from tensorflow.python.trackable import trackable_utils

    reader = tf.train.load_checkpoint(path)
    graph = trackable_object_graph_pb2.TrackableObjectGraph.FromString(reader.get_tensor(OBJECT_GRAPH_KEY))
    paths: dict[int, list[list[str]]] = {}

    def walk(node: int, path: list[str], on_path: set[int]) -> None:
        paths.setdefault(node, []).append(path)
        for child in graph.nodes[node].children:
            if child.node_id not in on_path:
                walk(child.node_id, [*path, child.local_name], on_path | {child.node_id})

    walk(0, [], {0})
    first = {node: min(p, key=len) for node, p in paths.items()}
    out = {}
    for node_id, node in enumerate(graph.nodes):
        for attr in node.attributes:
            assert attr.checkpoint_key in reader.get_variable_to_shape_map()
            out[attr.checkpoint_key] = {"paths": sorted(paths.get(node_id, [])), "slot": None}
    for node_id, node in enumerate(graph.nodes):
        for ref in node.slot_variables:
            for attr in graph.nodes[ref.slot_variable_node_id].attributes:
                variable, optimizer = first[ref.original_variable_node_id], first[node_id]
                slot_key = trackable_utils.slot_variable_key(
                    "/".join(map(trackable_utils.escape_local_name, variable)),
                    "/".join(map(trackable_utils.escape_local_name, optimizer)),
                    ref.slot_name,
                )
                assert attr.checkpoint_key.startswith(slot_key)
                out[attr.checkpoint_key]["slot"] = {"name": ref.slot_name, "variable": variable, "optimizer": optimizer}
    return out


@pytest.mark.parametrize("case", [*CASES, "tf2_keras", "tf2_slots"])
def test_paths_match_tensorflows_reading_live(case):
    """With TensorFlow installed: its reader, proto and escaping give the same paths and slots."""
    path = prefix(case) if case in CASES else str(GOLDEN / case / "ckpt-1")
    with ckptlib.load_checkpoint(path) as reader:
        graph = reader.object_graph
    assert graph is not None
    mine = {
        key: {
            "paths": sorted(list(p) for p in t.paths),
            "slot": None
            if t.slot is None
            else {"name": t.slot.name, "variable": list(t.slot.variable), "optimizer": list(t.slot.optimizer)},
        }
        for key, t in graph.tensors.items()
    }
    assert mine == tf_view(path)


def test_keras_weight_is_named_by_its_model_path():
    """A Keras 3 weight stored under optimizer/_trainable_variables is named by its model path."""
    with ckptlib.load_checkpoint(prefix("graph_sequential")) as reader:
        graph = reader.object_graph
        assert graph is not None
        tensor = graph.tensors["optimizer/_trainable_variables/0/.ATTRIBUTES/VARIABLE_VALUE"]
        assert tensor.path == ("model", "_functional", "_operations", "1", "_kernel")
        assert ("optimizer", "_trainable_variables", "0") in tensor.paths
        kernel = reader.get_tensor(tensor.key)
    tree = ckptlib.restore(prefix("graph_sequential"), object_paths=True)
    assert set(tree) == {"model", "optimizer", "save_counter"}
    np.testing.assert_array_equal(tree["model"]["_functional"]["_operations"]["1"]["_kernel"], kernel)
    assert "_trainable_variables" not in tree["optimizer"]
    assert tree["save_counter"] == 1


def test_restore_by_object_path_undoes_escaping_and_places_slots():
    tree = ckptlib.restore(prefix("graph_escapes"), object_paths=True)
    assert tree["net"]["table"]["a.b"] == 1.0 and tree["net"]["table"]["c/d"] == 2.0
    assert tree["net"]["table"]["e./.S.."] == 3.0
    np.testing.assert_array_equal(tree["net"]["x.y"], [4.0, 5.0])
    assert tree["net"]["inner"]["p/q"] == 6.0
    slots = ckptlib.restore(prefix("graph_slots"), object_paths=True)
    with ckptlib.load_checkpoint(prefix("graph_slots")) as reader:
        m = reader.get_tensor("model/dense/kernel/.OPTIMIZER_SLOT/optimizer/m/.ATTRIBUTES/VARIABLE_VALUE")
    np.testing.assert_array_equal(slots["optimizer"]["m"]["model"]["dense"]["kernel"], m)
    assert set(slots["optimizer"]) == {"beta1_power", "beta2_power", "m", "v"}
    module = ckptlib.restore(prefix("graph_module"), object_paths=True)
    assert set(module["net"]) == {"alias", "config", "layers"}  # the shared variable once, at its shorter path
    assert module["net"]["layers"]["1"] == {"w": pytest.approx([1.5, -2.0])}


def test_restore_by_object_path_refuses_what_it_cannot_do(tmp_path):
    ckptlib.save({"a": np.zeros(2)}, str(tmp_path / "plain"))
    assert ckptlib.load_checkpoint(str(tmp_path / "plain")).object_graph is None
    with pytest.raises(ckptlib.UnsupportedFeatureError, match="object graph"):
        ckptlib.restore(str(tmp_path / "plain"), object_paths=True)
    with pytest.raises(ckptlib.InvalidStructureError):
        ckptlib.restore(prefix("graph_module"), into={}, object_paths=True)


def run_cli(*argv: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(list(argv)) == 0
    return out.getvalue()


def test_inspect_shows_object_paths_and_slots():
    text = run_cli("inspect", prefix("graph_sequential"))
    assert "    object path: model/_functional/_operations/1/_kernel  (also optimizer/_trainable_variables/0)" in text
    text = run_cli("inspect", prefix("graph_slots"))
    assert "    slot 'm' of model/dense/kernel for optimizer optimizer" in text
    escapes = json.loads(run_cli("inspect", prefix("graph_escapes"), "--json"))
    rows = {row["name"]: row for row in escapes["tensors"]}
    assert rows["net/table/c.Sd/.ATTRIBUTES/VARIABLE_VALUE"]["object_path"] == "net/table/c.Sd"
    assert rows[OBJECT_GRAPH_KEY]["object_path"] is None
    slot = json.loads(run_cli("inspect", prefix("graph_slots"), "--json"))["tensors"]
    assert {"name": "v", "variable": "model/dense/bias", "optimizer": "optimizer"} in [r["slot"] for r in slot]


# -- hostile graphs ----------------------------------------------------------------------
def graph_of(edges: dict[int, list[tuple[str, int]]], count: int, keyed: dict[int, str]) -> bytes:
    graph = TrackableObjectGraph()
    for node_id in range(count):
        node = graph.nodes.add()
        for name, target in edges.get(node_id, []):
            node.children.add(node_id=target, local_name=name)
        if node_id in keyed:
            node.attributes.add(name="VARIABLE_VALUE", checkpoint_key=keyed[node_id])
    return encode_graph(graph)


def timed_parse(data: bytes, keys: set[str]) -> ObjectGraph:
    start = time.monotonic()
    try:
        return ObjectGraph.parse(data, keys, "hostile")
    finally:
        assert time.monotonic() - start < 10


def test_cycles_end():
    data = graph_of({0: [("a", 1)], 1: [("back", 0), ("self", 1), ("v", 2)], 2: [("up", 1)]}, 3, {2: "k"})
    assert timed_parse(data, {"k"}).tensors["k"].paths == (("a", "v"),)


def test_exponentially_many_paths_are_capped():
    """Levels of two nodes, each linked to both of the next: 2**60 paths to the last node."""
    levels = 60
    edges = {0: [("x", 1), ("y", 2)]}
    for level in range(levels - 1):
        for node in (1 + 2 * level, 2 + 2 * level):
            edges[node] = [("x", 3 + 2 * level), ("y", 4 + 2 * level)]
    count = 1 + 2 * levels
    paths = timed_parse(graph_of(edges, count, {count - 1: "k"}), {"k"}).tensors["k"].paths
    assert 1 <= len(paths) <= object_graph_view.MAX_PATHS and all(len(p) == levels for p in paths)


def test_too_deep_paths_are_not_followed():
    chain = {i: [("c", i + 1)] for i in range(200)}
    graph = timed_parse(graph_of(chain, 201, {200: "k"}), {"k"})
    assert graph.tensors["k"].paths == () and graph.tree_path("k") == ("k",)


def test_huge_fan_out_is_bounded(monkeypatch):
    monkeypatch.setattr(object_graph_view, "MAX_STEPS", 50_000)
    data = graph_of({0: [(str(i), 1) for i in range(100_000)]}, 2, {1: "k"})
    with pytest.raises(ckptlib.CorruptCheckpointError, match="too tangled"):
        timed_parse(data, {"k"})


@pytest.mark.parametrize(
    ("edges", "count", "keyed", "keys", "match"),
    [
        ({0: [("a", 5)]}, 2, {1: "k"}, {"k"}, "node it does not have"),
        ({0: [("a", 1)]}, 2, {1: "k"}, set(), "lacks"),
        ({0: [("a", 1), ("b", 2)]}, 3, {1: "k", 2: "k"}, {"k"}, "two nodes"),
    ],
)
def test_damaged_graphs_are_corrupt(edges, count, keyed, keys, match):
    with pytest.raises(ckptlib.CorruptCheckpointError, match=match):
        timed_parse(graph_of(edges, count, keyed), keys)


def test_graph_entry_that_is_not_a_string_is_corrupt(tmp_path):
    writer = ckptlib.BundleWriter(str(tmp_path / "odd"))  # ckptlib.save refuses to write it
    writer.add_all({OBJECT_GRAPH_KEY: np.zeros(3)})
    writer.finish()
    with pytest.raises(ckptlib.CorruptCheckpointError, match="string scalar"):
        _ = ckptlib.load_checkpoint(str(tmp_path / "odd")).object_graph


def test_a_damaged_or_oversized_graph_still_lets_inspect_list_the_tensors(tmp_path: Path, capsys) -> None:
    from ckptlib.cli import main

    writer = ckptlib.BundleWriter(tmp_path / "m")
    writer.add_all({"w": np.ones(2), OBJECT_GRAPH_KEY: np.array(b"\x0a\x00" * (600 << 10), dtype=object)})
    writer.finish()
    with (
        ckptlib.load_checkpoint(tmp_path / "m") as reader,
        pytest.raises(ckptlib.CorruptCheckpointError, match=r"more than the \d+ allowed beside 2 tensors"),
    ):
        reader.object_graph  # noqa: B018
    assert main(["inspect", str(tmp_path / "m")]) == 0
    out, err = capsys.readouterr()
    assert "w" in out and "object paths not shown" in err
