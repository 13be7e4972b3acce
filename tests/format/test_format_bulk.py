"""Column-wise encoders against their one-at-a-time twins: the same bytes, always."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptlib.format.bulk_table import build_table_from_columns
from ckptlib.format.bundle import encode_plain_entry
from ckptlib.format.bundle_columns import encode_plain_entries
from ckptlib.format.coding import encode_varint
from ckptlib.format.table import BLOCK_SIZE, TableBuilder
from ckptlib.format.vector_coding import concat_segments, place, row_prefixes, varints

SETTINGS = settings(database=None, deadline=None, max_examples=150)

KEY = st.one_of(
    st.binary(max_size=40),
    st.lists(st.sampled_from([b"", b"\x00", b"\xff", b"a", b"ab", b"\xfe", b"\x01"]), max_size=8).map(b"".join),
)
SMALL_MODEL = st.dictionaries(KEY, st.binary(max_size=127), max_size=300)
ANY_MODEL = st.dictionaries(KEY, st.one_of(st.binary(max_size=64), st.binary(min_size=100, max_size=400)), max_size=40)
BLOCK_SIZES = st.sampled_from([1, 16, 64, 300, 1000, 4096, BLOCK_SIZE])


def table_builder_bytes(model: dict[bytes, bytes], block_size: int) -> bytes:
    chunks: list[bytes] = []
    builder = TableBuilder(chunks.append, block_size=block_size)
    for key in sorted(model):
        builder.add(key, model[key])
    builder.finish()
    return b"".join(chunks)


def columns(model: dict[bytes, bytes]) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    keys = sorted(model)
    values = np.frombuffer(b"".join(model[k] for k in keys), dtype=np.uint8)
    return keys, values, np.array([len(model[k]) for k in keys], dtype=np.int64)


@SETTINGS
@given(st.one_of(SMALL_MODEL, ANY_MODEL), BLOCK_SIZES)
def test_bulk_tables_are_byte_identical_to_table_builder_tables(model: dict[bytes, bytes], block_size: int) -> None:
    assert build_table_from_columns(*columns(model), block_size=block_size) == table_builder_bytes(model, block_size)


def test_many_entries_over_many_blocks() -> None:
    rng = np.random.default_rng(3)
    model = {
        f"block_{i // 100:03d}/param_{i % 100:02d}".encode(): rng.bytes(int(rng.integers(0, 60))) for i in range(20_000)
    }
    for block_size in (4096, BLOCK_SIZE):
        assert build_table_from_columns(*columns(model), block_size=block_size) == table_builder_bytes(
            model, block_size
        )


def test_keys_out_of_order_are_refused() -> None:
    with pytest.raises(ValueError):
        build_table_from_columns([b"b", b"a"], np.zeros(0, np.uint8), np.zeros(2, np.int64))


@SETTINGS
@given(st.lists(st.one_of(st.integers(0, 300), st.integers(0, (1 << 64) - 1)), max_size=50))
def test_varints_match_encode_varint(values: list[int]) -> None:
    matrix, lengths = varints(np.array(values, dtype=np.uint64))
    assert [bytes(matrix[i, : lengths[i]]) for i in range(len(values))] == [encode_varint(v) for v in values]


@SETTINGS
@given(st.binary(max_size=50), st.data())
def test_concat_segments_matches_slicing(source: bytes, data: st.DataObject) -> None:
    spans = data.draw(st.lists(st.tuples(st.integers(0, len(source)), st.integers(0, len(source))), max_size=10))
    spans = [(min(a, b), abs(a - b)) for a, b in spans]
    got = concat_segments(
        np.frombuffer(source, np.uint8), np.array([s for s, _ in spans]), np.array([n for _, n in spans])
    )
    assert got.tobytes() == b"".join(source[s : s + n] for s, n in spans)


ENTRY_FIELDS = st.tuples(
    st.integers(0, 40),
    st.lists(st.one_of(st.integers(0, 5), st.integers(0, 1 << 40)), max_size=5).map(tuple),
    st.one_of(st.integers(0, 3), st.integers(0, (1 << 31) - 1)),
    st.one_of(st.integers(0, 300), st.integers(0, (1 << 63) - 1)),
    st.one_of(st.integers(0, 300), st.integers(0, (1 << 63) - 1)),
    st.one_of(st.just(0), st.integers(0, (1 << 32) - 1)),
)


@SETTINGS
@given(st.lists(ENTRY_FIELDS, max_size=40))
def test_entries_encoded_together_match_entries_encoded_alone(entries: list[tuple]) -> None:
    values, lengths = encode_plain_entries(
        [e[0] for e in entries],
        [e[1] for e in entries],
        np.array([e[2] for e in entries], dtype=np.int64),
        np.array([e[3] for e in entries], dtype=np.int64),
        np.array([e[4] for e in entries], dtype=np.int64),
        np.array([e[5] for e in entries], dtype=np.int64),
    )
    alone = [encode_plain_entry(*e) for e in entries]
    assert lengths.tolist() == [len(v) for v in alone]
    assert values.tobytes() == b"".join(alone)


@SETTINGS
@given(st.lists(st.binary(max_size=6), max_size=12), st.data())
def test_row_prefixes_and_place_match_slicing(rows: list[bytes], data: st.DataObject) -> None:
    """``row_prefixes`` and ``place`` against plain slicing and concatenation, row by row."""
    width = 6
    matrix = np.zeros((len(rows), width), dtype=np.uint8)
    for i, row in enumerate(rows):
        matrix[i, : len(row)] = np.frombuffer(row, np.uint8)
    lengths = np.array([data.draw(st.integers(0, len(row))) for row in rows], dtype=np.int64)
    prefixes = [row[:n] for row, n in zip(rows, lengths.tolist())]
    assert row_prefixes(matrix, lengths).tobytes() == b"".join(prefixes)
    before = [data.draw(st.binary(max_size=4)) for _ in rows]
    out = np.zeros((len(rows), 4 + width), dtype=np.uint8)
    for i, head in enumerate(before):
        out[i, : len(head)] = np.frombuffer(head, np.uint8)
    cursor = np.array([len(head) for head in before], dtype=np.int64)
    place(out, cursor, matrix, lengths)
    assert cursor.tolist() == [len(head) + len(prefix) for head, prefix in zip(before, prefixes)]
    assert [bytes(out[i, : cursor[i]]) for i in range(len(rows))] == [h + p for h, p in zip(before, prefixes)]
