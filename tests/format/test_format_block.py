"""Table blocks: prefix-compressed entries plus a restart array (FORMAT.md section 3)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ckptlib
from ckptlib.format import block as block_module
from ckptlib.format.block import BlockBuilder, parse_block
from ckptlib.format.coding import decode_fixed32, decode_varint

SETTINGS = settings(database=None, deadline=None, max_examples=200)

# Keys with shared prefixes are what exercises prefix compression: draw from a small alphabet.
KEY = st.one_of(st.binary(max_size=24), st.text("ab\x00\xff/", max_size=12).map(lambda s: s.encode("latin-1")))
ENTRIES = st.dictionaries(KEY, st.binary(max_size=200), max_size=60).map(lambda d: sorted(d.items()))


def test_empty_block_bytes() -> None:
    assert BlockBuilder().finish() == bytes.fromhex("00000000 01000000")
    assert parse_block(bytes.fromhex("0000000001000000")) == []


def test_golden_data_block() -> None:
    """The data block of FORMAT.md's golden index (header, "s", "v"; restart interval 16)."""
    builder = BlockBuilder()
    builder.add(b"", bytes.fromhex("08011a020801"))
    builder.add(b"s", bytes.fromhex("0807120412020801200428073526 19a635".replace(" ", "")))
    builder.add(b"v", bytes.fromhex("0801120028043581a5da2b"))
    expected = bytes.fromhex(
        """
        00000608011a020801
        00011173 0807120412020801200428073526 19a635
        00010b76 0801120028043581a5da2b
        00000000 01000000
        """
    )
    assert builder.finish() == expected
    assert parse_block(expected) == [
        (b"", bytes.fromhex("08011a020801")),
        (b"s", bytes.fromhex("080712041202080120042807352619a635")),
        (b"v", bytes.fromhex("0801120028043581a5da2b")),
    ]


def test_golden_index_block() -> None:
    builder = BlockBuilder(restart_interval=1)
    builder.add(b"w", bytes.fromhex("0035"))
    assert builder.finish() == bytes.fromhex("00010277 0035 00000000 01000000".replace(" ", ""))


def test_shared_prefix_encoding() -> None:
    builder = BlockBuilder()
    builder.add(b"abc", b"1")
    builder.add(b"abd", b"22")
    data = builder.finish()
    # second entry: shared 2, non_shared 1, value_length 2, "d", "22"
    assert data[: 3 + 3 + 1] == bytes.fromhex("000301") + b"abc1"
    assert data[7:13] == bytes.fromhex("020102") + b"d22"


@SETTINGS
@given(ENTRIES, st.integers(1, 20))
def test_round_trip(entries: list[tuple[bytes, bytes]], restart_interval: int) -> None:
    builder = BlockBuilder(restart_interval)
    for key, value in entries:
        builder.add(key, value)
    estimate = builder.size_estimate()
    assert builder.empty() == (not entries)
    data = builder.finish()
    assert len(data) == estimate
    assert parse_block(data) == entries
    assert parse_block(memoryview(data)) == entries
    assert parse_block(bytearray(data)) == entries

    # restart array: one restart every restart_interval entries, the first at offset 0
    num_restarts = decode_fixed32(data, len(data) - 4)
    assert num_restarts == max(1, -(-len(entries) // restart_interval))
    restarts = [decode_fixed32(data, len(data) - 4 * (num_restarts + 1) + 4 * i) for i in range(num_restarts)]
    assert restarts[0] == 0
    for r in restarts:
        if entries:
            shared, _ = decode_varint(data, r)
            assert shared == 0  # a restart entry stores its whole key

    # the builder is reusable after finish()
    assert builder.empty()
    assert builder.finish() == bytes.fromhex("0000000001000000")


@SETTINGS
@given(st.binary(max_size=120))
def test_parse_arbitrary_bytes(data: bytes) -> None:
    """Arbitrary bytes parse to strictly increasing keys or raise CorruptCheckpointError."""
    try:
        entries = parse_block(data)
    except ckptlib.CorruptCheckpointError:
        return
    keys = [k for k, _ in entries]
    assert all(a < b for a, b in zip(keys, keys[1:]))


@SETTINGS
@given(ENTRIES.filter(bool), st.data())
def test_parse_damaged_block(entries: list[tuple[bytes, bytes]], data: st.DataObject) -> None:
    builder = BlockBuilder(data.draw(st.integers(1, 4)))
    for key, value in entries:
        builder.add(key, value)
    block = bytearray(builder.finish())
    if data.draw(st.booleans()):
        block = block[: data.draw(st.integers(0, len(block) - 1))]
    else:
        i = data.draw(st.integers(0, len(block) - 1))
        block[i] ^= data.draw(st.integers(1, 255))
    try:
        parsed = parse_block(bytes(block))
    except ckptlib.CorruptCheckpointError:
        return
    keys = [k for k, _ in parsed]
    assert all(a < b for a, b in zip(keys, keys[1:]))


@pytest.mark.parametrize(
    "contents",
    [
        "",
        "000000",
        "01000000",  # one restart but no room for it
        "ffffffff",
        "00000000 05000000",  # 5 restarts in an 8-byte block
        "000103 61 00000000 01000000",  # value runs into the restart array
        "010161 00000000 01000000",  # shared prefix longer than the previous key
        "00010062 00010061 00000000 01000000",  # keys out of order: b then a
        "00010061 00010061 00000000 01000000",  # duplicate key
        "80 00000000 01000000",  # truncated varint
    ],
)
def test_malformed_blocks(contents: str) -> None:
    with pytest.raises(ckptlib.CorruptCheckpointError):
        parse_block(bytes.fromhex(contents))


def parse_with_threshold(block: bytes, threshold: int) -> object:
    """``parse_block``'s verdict (entries or error type) with the numpy walk tried on blocks
    of at least ``threshold`` restarts."""
    saved = block_module._BULK_MIN_RESTARTS
    block_module._BULK_MIN_RESTARTS = threshold
    try:
        return parse_block(block)
    except ckptlib.CorruptCheckpointError as e:
        return type(e)
    finally:
        block_module._BULK_MIN_RESTARTS = saved


SMALL_ENTRIES = st.dictionaries(KEY, st.binary(max_size=100), max_size=120).map(lambda d: sorted(d.items()))


@SETTINGS
@given(SMALL_ENTRIES, st.one_of(st.integers(1, 20), st.integers(60, 130)), st.data())
def test_the_numpy_walk_parses_blocks_exactly_as_the_loop_does(
    entries: list[tuple[bytes, bytes]], interval: int, data: st.DataObject
) -> None:
    """Intact or damaged (flipped, inserted or truncated bytes), one verdict for both paths."""
    builder = BlockBuilder(interval)
    for key, value in entries:
        builder.add(key, value)
    block = bytearray(builder.finish())
    mutations = data.draw(st.integers(0, 3))
    for _ in range(mutations):
        i = data.draw(st.integers(0, len(block) - 1))
        kind = data.draw(st.sampled_from(["flip", "insert", "cut"]))
        if kind == "flip":
            block[i] ^= data.draw(st.integers(1, 255))
        elif kind == "insert":
            block.insert(i, data.draw(st.integers(0, 255)))
        elif i:
            del block[i:]
    loop = parse_with_threshold(bytes(block), 1 << 30)
    assert parse_with_threshold(bytes(block), 1) == loop
    if not mutations:
        assert loop == entries


def test_the_numpy_walk_takes_real_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    builder = BlockBuilder()
    entries = [(f"layer_{i:05d}/kernel".encode(), bytes([i % 256]) * (i % 90)) for i in range(2000)]
    for key, value in entries:
        builder.add(key, value)
    block = builder.finish()
    calls = []
    real = block_module.parse_common_block

    def spy(*args: object) -> object:
        result = real(*args)  # type: ignore[arg-type]
        calls.append(result is not None)
        return result

    monkeypatch.setattr(block_module, "parse_common_block", spy)
    assert parse_block(block) == entries
    assert calls == [True]
