"""The object graph of TF2 checkpoints: key escaping as TensorFlow does it, and parsing its graph."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import ckptlib
from ckptlib.format.object_graph import (
    OBJECT_GRAPH_KEY,
    attribute_key,
    decode_graph,
    encode_graph,
    escape_local_name,
    unescape_local_name,
)

GOLDEN = Path(__file__).resolve().parent.parent / "data" / "golden"


def test_escaping_matches_format_md() -> None:
    assert escape_local_name("k.w/x") == "k..w.Sx"
    assert attribute_key(["layer", "k.w/x"]) == "layer/k..w.Sx/.ATTRIBUTES/VARIABLE_VALUE"
    with pytest.raises(ValueError):
        unescape_local_name("a.b")


@given(st.text(alphabet="ab./S", max_size=12))
def test_unescape_undoes_escape(name: str) -> None:
    assert unescape_local_name(escape_local_name(name)) == name


def test_the_graph_tensorflow_wrote_parses_and_names_its_keys() -> None:
    with ckptlib.load_checkpoint(GOLDEN / "tf2_keras") as reader:
        graph = decode_graph(reader.get_tensor(OBJECT_GRAPH_KEY).item())
        keys = {a.checkpoint_key for node in graph.nodes for a in node.attributes}
        assert keys == set(reader.keys_list()) - {OBJECT_GRAPH_KEY}
    assert [c.local_name for c in graph.nodes[0].children] == ["model", "optimizer", "save_counter"]
    assert decode_graph(encode_graph(graph)) == graph


def test_a_damaged_graph_is_a_corrupt_checkpoint() -> None:
    with pytest.raises(ckptlib.CorruptCheckpointError, match="damaged object graph"):
        decode_graph(b"\x0a\x05\x0a\x03\x08\x07")  # a child pointing at node 7 of 1
    with pytest.raises(ckptlib.CorruptCheckpointError, match="damaged object graph"):
        decode_graph(b"\xff\xff\xff")
