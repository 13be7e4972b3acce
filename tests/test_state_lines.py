"""``state_lines``, the fast state-file reader and writer, against protobuf's text format."""

from __future__ import annotations

import math
import struct

import pytest
from google.protobuf import text_format
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptlib.errors import CorruptCheckpointError
from ckptlib.format.proto.checkpoint_state_pb2 import CheckpointState as Proto
from ckptlib.state import CheckpointState, format_state, parse_state
from ckptlib.state_lines import format_canonical, parse_canonical

paths = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12) | st.sampled_from(
    ["model.ckpt-7", "/abs/run/ckpt-12", 'a"b', "a\\b", "it's", "é/ü", "tab\there", "new\nline", ""]
)
times = st.floats(allow_nan=True) | st.sampled_from([0.0, -0.0, 1795737976.199231, 1e-07, 5.0])
states = st.builds(
    CheckpointState,
    paths,
    st.lists(paths, max_size=4).map(tuple),
    st.lists(times, max_size=4).map(tuple),
    times,
)


def reference_parse(text: str) -> Proto | None:
    proto = Proto()
    try:
        text_format.Parse(text, proto)
    except (text_format.ParseError, UnicodeDecodeError, ValueError):
        return None
    return proto


def same_float(a: float, b: float) -> bool:
    return struct.pack("<d", a) == struct.pack("<d", b) or (math.isnan(a) and math.isnan(b))


def assert_same(fast: tuple[str, list[str], list[float], float], proto: Proto) -> None:
    latest, listed, stamps, preserved = fast
    assert latest == proto.model_checkpoint_path
    assert listed == list(proto.all_model_checkpoint_paths)
    assert len(stamps) == len(proto.all_model_checkpoint_timestamps)
    assert all(same_float(a, b) for a, b in zip(stamps, proto.all_model_checkpoint_timestamps))
    assert same_float(preserved, proto.last_preserved_timestamp)


@settings(max_examples=400, deadline=None, database=None)
@given(states)
def test_writes_exactly_what_protobuf_writes(state: CheckpointState) -> None:
    fast = format_canonical(
        state.model_checkpoint_path,
        state.all_model_checkpoint_paths,
        state.all_model_checkpoint_timestamps,
        state.last_preserved_timestamp,
    )
    assert fast == format_state(state)


@settings(max_examples=400, deadline=None, database=None)
@given(states)
def test_reads_what_protobuf_writes_as_protobuf_does(state: CheckpointState) -> None:
    text = format_state(state)
    fast = parse_canonical(text)
    assert fast is not None, text
    proto = reference_parse(text)
    assert proto is not None
    assert_same(fast, proto)


@pytest.mark.filterwarnings("ignore:invalid escape sequence:DeprecationWarning")  # protobuf's, on odd escapes
@settings(max_examples=1000, deadline=None, database=None)
@given(states, st.data())
def test_any_other_text_is_left_to_protobuf_or_read_the_same(state: CheckpointState, data: st.DataObject) -> None:
    """Damage a written text anywhere: the fast reader declines, or agrees with protobuf
    (never accepts what protobuf refuses, never reads it differently)."""
    text = format_state(state)
    where = data.draw(st.integers(0, len(text)))
    cut = data.draw(st.integers(0, 3))
    insert = data.draw(st.text(st.sampled_from("\"\\\n\t\r #:'ae0.-xnfEi+"), max_size=3))
    mutated = text[:where] + insert + text[where + cut :]
    fast = parse_canonical(mutated)
    if fast is None:
        return
    proto = reference_parse(mutated)
    assert proto is not None, f"accepted what protobuf refuses: {mutated!r}"
    assert_same(fast, proto)


@pytest.mark.parametrize(
    "text",
    [
        '# a comment\nmodel_checkpoint_path: "a"\n',
        "model_checkpoint_path: 'a'\n",
        'model_checkpoint_path:"a"\n',
        'model_checkpoint_path: "a"\nmodel_checkpoint_path: "b"\n',
        'model_checkpoint_path: "a" "b"\n',
        "all_model_checkpoint_timestamps: 1_000\n",
        "all_model_checkpoint_timestamps: 05\n",
        'model_checkpoint_path: "a"\r\n',
    ],
)
def test_other_layouts_go_to_protobuf(text: str) -> None:
    assert parse_canonical(text) is None
    proto = reference_parse(text)
    if proto is None:
        with pytest.raises(CorruptCheckpointError):
            parse_state(text)
    else:
        assert parse_state(text).model_checkpoint_path == proto.model_checkpoint_path
