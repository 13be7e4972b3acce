"""SSTable builder and reader against a plain dict model (FORMAT.md section 3)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ckptlib
from ckptlib.format.footer import FOOTER_SIZE, TABLE_MAGIC, BlockHandle, Footer
from ckptlib.format.table import (
    BLOCK_SIZE,
    BytesSource,
    TableBuilder,
    TableReader,
    build_table,
    short_successor,
    shortest_separator,
)

SETTINGS = settings(database=None, deadline=None, max_examples=150)

KEY = st.one_of(
    st.binary(max_size=20),
    st.lists(st.sampled_from([b"", b"\x00", b"\xff", b"a", b"ab", b"\xfe", b"\x01"]), max_size=6).map(b"".join),
)
MODEL = st.dictionaries(
    KEY,
    st.one_of(st.binary(max_size=64), st.binary(min_size=1000, max_size=5000)),
    max_size=40,
)


def build(model: dict[bytes, bytes], block_size: int = BLOCK_SIZE) -> bytes:
    chunks: list[bytes] = []
    builder = TableBuilder(chunks.append, block_size=block_size)
    for key in sorted(model):
        builder.add(key, model[key])
    size = builder.finish()
    data = b"".join(chunks)
    assert size == len(data)
    assert builder.num_entries == len(model)
    return data


@SETTINGS
@given(MODEL, st.sampled_from([1, 16, 64, 300, 4096, BLOCK_SIZE]), st.lists(KEY, max_size=10))
def test_round_trip_against_dict(model: dict[bytes, bytes], block_size: int, probes: list[bytes]) -> None:
    data = build(model, block_size)
    reader = TableReader(BytesSource(data))
    assert list(reader.items()) == sorted(model.items())
    for key, value in model.items():
        assert reader.get(key) == value
    for key in probes:
        if key in model:
            assert reader.get(key) == model[key]
        else:
            with pytest.raises(ckptlib.TensorNotFoundError):
                reader.get(key)
    if model:
        assert reader.first() == min(model.items())
    else:
        with pytest.raises(ckptlib.CorruptCheckpointError):
            reader.first()
    reader.verify_all()
    if block_size == 1:
        # every entry closes its block
        assert reader.num_blocks == len(model)
    # deterministic output
    assert build(model, block_size) == data


@SETTINGS
@given(MODEL)
def test_build_table_default_block_size(model: dict[bytes, bytes]) -> None:
    data = build_table(sorted(model.items()))
    assert data == build(model)
    reader = TableReader(BytesSource(data))
    assert reader.num_blocks == (1 if model else 0)
    assert dict(reader.items()) == model


@SETTINGS
@given(st.binary(max_size=12), st.binary(max_size=12))
def test_shortest_separator_invariants(a: bytes, b: bytes) -> None:
    if a == b:
        return
    start, limit = min(a, b), max(a, b)
    sep = shortest_separator(start, limit)
    assert start <= sep < limit
    assert len(sep) <= len(start)


@SETTINGS
@given(st.binary(max_size=12))
def test_short_successor_invariants(key: bytes) -> None:
    succ = short_successor(key)
    assert key <= succ
    assert len(succ) <= len(key)
    if key.strip(b"\xff"):
        assert key < succ


@pytest.mark.parametrize(
    ("start", "limit", "expected"),
    [
        (b"abc", b"abe", b"abd"),
        (b"abc", b"abd", b"abc"),  # next byte is only one higher: unchanged
        (b"ab", b"abc", b"ab"),  # prefix: unchanged
        (b"a\xff", b"b", b"a\xff"),
        (b"a\xffz", b"a\xff\xff", b"a\xff{"),
        (b"v", b"x", b"w"),
        (b"helloworld", b"hellz", b"hellp"),
    ],
)
def test_shortest_separator_examples(start: bytes, limit: bytes, expected: bytes) -> None:
    assert shortest_separator(start, limit) == expected


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (b"v/.ATTRIBUTES/VARIABLE_VALUE", b"w"),
        (b"v", b"w"),
        (b"\xff\xffa", b"\xff\xffb"),
        (b"\xff\xff", b"\xff\xff"),
        (b"", b""),
    ],
)
def test_short_successor_examples(key: bytes, expected: bytes) -> None:
    assert short_successor(key) == expected


def test_index_keys_are_separators() -> None:
    """Blocks are split at block_size and indexed by TF's separator keys."""
    model = {b"apple": b"x" * 10, b"banana": b"y" * 10, b"cherry": b"z" * 10, b"egg": b""}
    data = build(model, block_size=1)
    footer = Footer.decode(data[-FOOTER_SIZE:])
    from ckptlib.format.block import parse_block

    index = parse_block(data[footer.index.offset : footer.index.offset + footer.index.size])
    # apple|banana and banana|cherry: first byte + 1 is not below the next key's, so unchanged;
    # cherry|egg -> "d"; the last block gets the short successor of "egg": "f"
    assert [k for k, _ in index] == [b"apple", b"banana", b"d", b"f"]
    handles = [BlockHandle.decode_exact(v) for _, v in index]
    assert handles[0].offset == 0
    for prev, nxt in zip(handles, handles[1:]):
        assert nxt.offset == prev.offset + prev.size + 5


def test_large_entry_flushes_before() -> None:
    """An entry with len(key)+len(value) >= 2*block_size starts a new block (TableBuilder::Add)."""
    block_size = 100
    model = {b"a": b"1", b"b": b"x" * 200, b"c": b"2"}
    reader = TableReader(BytesSource(build(model, block_size)))
    # "a" alone, then "b" (flushed after adding: estimate >= block size), then "c"
    assert reader.num_blocks == 3
    assert dict(reader.items()) == model


def test_keys_must_increase() -> None:
    builder = TableBuilder(lambda b: None)
    builder.add(b"b", b"")
    with pytest.raises(ValueError):
        builder.add(b"a", b"")
    with pytest.raises(ValueError):
        builder.add(b"b", b"")


def test_golden_index_table() -> None:
    header = bytes.fromhex("08011a020801")
    s_entry = bytes.fromhex("080712041202080120042807352619a635")
    v_entry = bytes.fromhex("0801120028043581a5da2b")
    data = build_table([(b"", header), (b"s", s_entry), (b"v", v_entry)])
    expected = bytes.fromhex(
        """
        00000608011a020801 00011173 080712041202080120042807352619a635
        00010b76 0801120028043581a5da2b 00000000 01000000 00 a8a0c813
        00000000 01000000 00 c0f2a1b0
        00010277 0035 00000000 01000000 00 53e3e012
        3a08 470e
        """
        + "00" * 36
        + "57fb808b247547db"
    )
    assert len(expected) == 138
    assert data == expected


def test_empty_table() -> None:
    data = build_table([])
    # metaindex block, empty index block (both "00000000 01000000" + trailer), footer
    assert data[:13] == bytes.fromhex("0000000001000000 00 c0f2a1b0")
    assert len(data) == 13 + 13 + FOOTER_SIZE
    reader = TableReader(BytesSource(data))
    assert reader.num_blocks == 0
    assert list(reader.items()) == []
    with pytest.raises(ckptlib.TensorNotFoundError):
        reader.get(b"")


def test_footer_bytes() -> None:
    footer = Footer(BlockHandle(58, 8), BlockHandle(71, 14)).encode()
    assert footer == bytes.fromhex("3a08470e") + bytes(36) + bytes.fromhex("57fb808b247547db")
    assert TABLE_MAGIC.to_bytes(8, "little") == bytes.fromhex("57fb808b247547db")
    assert Footer.decode(footer) == Footer(BlockHandle(58, 8), BlockHandle(71, 14))


def test_footer_with_large_handles() -> None:
    big = BlockHandle(2**64 - 1, 2**64 - 1)
    footer = Footer(big, big).encode()
    assert len(footer) == FOOTER_SIZE
    assert Footer.decode(footer) == Footer(big, big)


@pytest.mark.parametrize(
    "footer",
    [
        bytes(40) + bytes.fromhex("57fb808b247547dc"),  # bad magic
        bytes(48),
        bytes.fromhex("3a08470e") + bytes(36) + bytes.fromhex("57fb808b247547"),  # 47 bytes
        b"\x80" * 40 + bytes.fromhex("57fb808b247547db"),  # unterminated handle varints
    ],
)
def test_bad_footer(footer: bytes) -> None:
    with pytest.raises(ckptlib.CorruptCheckpointError):
        Footer.decode(footer)


@pytest.mark.parametrize("size", [0, 1, 47])
def test_too_short_for_a_table(size: int) -> None:
    with pytest.raises(ckptlib.CorruptCheckpointError, match="too short"):
        TableReader(BytesSource(bytes(size)))


def test_bad_block_handle_value() -> None:
    with pytest.raises(ckptlib.CorruptCheckpointError):
        BlockHandle.decode_exact(bytes.fromhex("003500"))  # trailing byte
    with pytest.raises(ckptlib.CorruptCheckpointError):
        BlockHandle.decode_exact(bytes.fromhex("00"))  # missing size


def test_unverified_reader_skips_crc() -> None:
    # data block: contents 00 01 01 61 31 | 00000000 01000000 (13 bytes), then type byte, then crc
    crc_pos = 13 + 1
    data = bytearray(build({b"a": b"1"}))
    data[crc_pos] ^= 0xFF
    with pytest.raises(ckptlib.ChecksumMismatchError):
        list(TableReader(BytesSource(bytes(data))).items())
    assert list(TableReader(BytesSource(bytes(data)), verify=False).items()) == [(b"a", b"1")]


def test_snappy_block_is_unsupported() -> None:
    from ckptlib.format.block import BlockBuilder
    from ckptlib.format.footer import block_trailer

    index = BlockBuilder(1).finish()
    blob = index + block_trailer(index, 1)
    data = blob + Footer(BlockHandle(0, len(index)), BlockHandle(0, len(index))).encode()
    with pytest.raises(ckptlib.UnsupportedFeatureError):
        TableReader(BytesSource(data))


@SETTINGS
@given(MODEL.filter(bool), st.sampled_from([1, 50, BLOCK_SIZE]), st.data())
def test_damaged_table_never_lies(model: dict[bytes, bytes], block_size: int, data: st.DataObject) -> None:
    """One damaged byte: the reader either raises CorruptCheckpointError or returns exactly the model."""
    table = bytearray(build(model, block_size))
    i = data.draw(st.integers(0, len(table) - 1), label="position")
    table[i] ^= data.draw(st.integers(1, 255), label="xor")
    try:
        reader = TableReader(BytesSource(bytes(table)))
        items = dict(reader.items())
        values = {k: reader.get(k) for k in model}
    except ckptlib.CorruptCheckpointError:
        return
    except ckptlib.TensorNotFoundError:
        pytest.fail(f"damaged byte {i} lost a key without an error")
    assert items == model
    assert values == model


@SETTINGS
@given(MODEL.filter(bool), st.data())
def test_truncated_table_raises(model: dict[bytes, bytes], data: st.DataObject) -> None:
    table = build(model, 64)
    cut = data.draw(st.integers(0, len(table) - 1))
    with pytest.raises(ckptlib.CorruptCheckpointError):
        reader = TableReader(BytesSource(table[:cut]))
        list(reader.items())
