"""Tensor slices and the OrderedCode keys under which a sliced tensor's pieces are stored.

A slice is one extent per dimension: ``(start, length)``, or full (written ``-``). Spec text
as TensorFlow writes it: ``"0,5:-"`` is rows 0-4 of every column. Slice keys::

    NumIncreasing(0) | String(name) | NumIncreasing(rank) | (SignedNum(start) SignedNum(length))*

with full extents as start 0, length -1. OrderedCode (``ordered_code.cc``) makes byte order
match value order:

    NumIncreasing(v)  one length byte n, then v big-endian in n bytes (0 -> 00, 2 -> 01 02)
    String(s)         s with 00 -> 00 ff and ff -> ff 00, then the terminator 00 01
    SignedNum(v)      n = bitlen(v >= 0 ? v : ~v) // 7 + 1 bytes of v's two's complement,
                      their top n bits (n <= 7; spilling into byte 1 for n > 7) replaced by
                      n ones then a zero (for v < 0 all of it inverted): 0 -> 80, -1 -> 7f,
                      100 -> c0 64, 70000 -> e1 11 70
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ckptlib.errors import CorruptCheckpointError, InvalidTensorError
from ckptlib.format.proto.tensor_slice_pb2 import TensorSliceProto

# Header bits XORed into the first two bytes of an n-byte SignedNum (index = n).
_SIGNED_HEADER_0 = (0, 0x80, 0xC0, 0xE0, 0xF0, 0xF8, 0xFC, 0xFE, 0xFF, 0xFF, 0xFF)
_SIGNED_HEADER_1 = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80, 0xC0)
_STRING_TERMINATOR = b"\x00\x01"
_SPECIAL_BYTE = re.compile(rb"[\x00\xff]")
_ESCAPED = {b"\x00": b"\x00\xff", b"\xff": b"\xff\x00"}


@dataclass(frozen=True)
class TensorSlice:
    """One extent per dimension: ``(start, length)``, length ``None`` meaning the whole dimension."""

    extents: tuple[tuple[int, int | None], ...]

    @classmethod
    def full(cls, rank: int) -> TensorSlice:
        return cls(((0, None),) * rank)

    @classmethod
    def parse(cls, spec: str) -> TensorSlice:
        """Parse TensorFlow's slice text, e.g. ``"0,5:-"`` (extents joined by ``:``)."""
        if spec == "":
            return cls(())
        extents: list[tuple[int, int | None]] = []
        for part in spec.split(":"):
            if part == "-":
                extents.append((0, None))
                continue
            try:
                start_text, length_text = part.split(",")
                start, length = int(start_text), int(length_text)
            except ValueError:
                raise InvalidTensorError(f"bad slice spec {spec!r}: expected 'start,length' or '-'") from None
            if start < 0 or length < 0:
                raise InvalidTensorError(f"bad slice spec {spec!r}: negative start or length")
            extents.append((start, length))
        return cls(tuple(extents))

    @classmethod
    def from_proto(cls, proto: TensorSliceProto) -> TensorSlice:
        return cls(tuple((e.start, e.length if e.HasField("length") else None) for e in proto.extent))

    @property
    def rank(self) -> int:
        return len(self.extents)

    def to_proto(self) -> TensorSliceProto:
        proto = TensorSliceProto()
        for start, length in self.extents:
            extent = proto.extent.add()
            if length is not None:
                extent.start = start
                extent.length = length
        return proto

    def bounds(self, shape: Sequence[int]) -> tuple[tuple[int, int], ...]:
        """``(start, stop)`` per dimension within a tensor of ``shape``; checks the slice fits."""
        if len(shape) != self.rank:
            raise InvalidTensorError(f"slice {self} has rank {self.rank}, tensor has rank {len(shape)}")
        out = []
        for (start, length), dim in zip(self.extents, shape, strict=True):
            if length is None:
                out.append((0, dim))
            elif start < 0 or length < 0 or start + length > dim:
                raise InvalidTensorError(f"slice {self} does not fit in shape {list(shape)}")
            else:
                out.append((start, start + length))
        return tuple(out)

    def shape(self, full_shape: Sequence[int]) -> tuple[int, ...]:
        return tuple(stop - start for start, stop in self.bounds(full_shape))

    def covers(self, full_shape: Sequence[int]) -> bool:
        return all(
            start == 0 and stop == dim for (start, stop), dim in zip(self.bounds(full_shape), full_shape, strict=True)
        )

    def __str__(self) -> str:
        return ":".join("-" if length is None else f"{start},{length}" for start, length in self.extents)


def encode_num_increasing(value: int) -> bytes:
    body = value.to_bytes((value.bit_length() + 7) // 8, "big") if value else b""
    return bytes((len(body),)) + body


def encode_string(value: bytes) -> bytes:
    return _SPECIAL_BYTE.sub(lambda m: _ESCAPED[m.group()], value) + _STRING_TERMINATOR


def encode_signed_num(value: int) -> bytes:
    if not -(1 << 63) <= value < 1 << 63:
        raise InvalidTensorError(f"slice bound out of int64 range: {value}")
    magnitude = value if value >= 0 else ~value
    n = magnitude.bit_length() // 7 + 1
    raw = bytearray((value & ((1 << 80) - 1)).to_bytes(10, "big")[10 - n :])
    raw[0] ^= _SIGNED_HEADER_0[n]
    if n > 1:
        raw[1] ^= _SIGNED_HEADER_1[n]
    return bytes(raw)


def slice_key(name: str, tensor_slice: TensorSlice) -> bytes:
    """The table key of one stored slice of tensor ``name`` (``EncodeTensorNameSlice``)."""
    out = bytearray(encode_num_increasing(0))
    out += encode_string(name.encode("utf-8", "surrogateescape"))
    out += encode_num_increasing(tensor_slice.rank)
    for start, length in tensor_slice.extents:
        out += encode_signed_num(0 if length is None else start)
        out += encode_signed_num(-1 if length is None else length)
    return bytes(out)


class _Cursor:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise CorruptCheckpointError("truncated slice key")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def num_increasing(self) -> int:
        (n,) = self.take(1)
        if n > 8:
            raise CorruptCheckpointError("slice key number longer than 8 bytes")
        return int.from_bytes(self.take(n), "big")

    def string(self) -> bytes:
        out = bytearray()
        while True:
            byte = self.take(1)[0]
            if byte not in (0x00, 0xFF):
                out.append(byte)
                continue
            follow = self.take(1)[0]
            if byte == 0x00 and follow == 0x01:
                return bytes(out)
            if (byte, follow) not in ((0x00, 0xFF), (0xFF, 0x00)):
                raise CorruptCheckpointError("bad escape in slice key string")
            out.append(byte)

    def signed_num(self) -> int:
        first = self.take(1)[0]
        second = self.data[self.pos] if self.pos < len(self.data) else 0
        head = (first << 8) | second
        if not first & 0x80:
            head ^= 0xFFFF
        n = 0
        while n < 10 and head & (0x8000 >> n):
            n += 1
        if n == 0 or n > 10:
            raise CorruptCheckpointError("bad signed number in slice key")
        raw = bytearray(bytes((first,)) + self.take(n - 1))
        raw[0] ^= _SIGNED_HEADER_0[n]
        if n > 1:
            raw[1] ^= _SIGNED_HEADER_1[n]
        value = int.from_bytes(raw, "big", signed=True)
        if not -(1 << 63) <= value < 1 << 63:
            raise CorruptCheckpointError("slice key number beyond int64")
        return value


def decode_slice_key(key: bytes) -> tuple[str, TensorSlice]:
    """Inverse of ``slice_key``."""
    cursor = _Cursor(key)
    if cursor.num_increasing() != 0:
        raise CorruptCheckpointError("slice key does not start with 0")
    name = cursor.string().decode("utf-8", "surrogateescape")
    rank = cursor.num_increasing()
    extents: list[tuple[int, int | None]] = []
    for _ in range(rank):
        start, length = cursor.signed_num(), cursor.signed_num()
        if length == -1:
            if start != 0:
                raise CorruptCheckpointError("full extent with a start in slice key")
            extents.append((0, None))
        elif start < 0 or length < 0:
            raise CorruptCheckpointError("negative extent in slice key")
        else:
            extents.append((start, length))
    if cursor.pos != len(key):
        raise CorruptCheckpointError("trailing bytes after slice key")
    return name, TensorSlice(tuple(extents))


def region(bounds: Sequence[tuple[int, int]]) -> tuple[Any, ...]:
    """A numpy index selecting ``bounds``; the trailing ``...`` makes assignments to 0-d
    object arrays store the element rather than the array holding it."""
    return (*(slice(start, stop) for start, stop in bounds), Ellipsis)


def overlaps(a: Sequence[tuple[int, int]], b: Sequence[tuple[int, int]]) -> bool:
    """Whether two slices, given as ``(start, stop)`` bounds per dimension, share an element."""
    return all(max(a0, b0) < min(a1, b1) for (a0, a1), (b0, b1) in zip(a, b, strict=True))


def intersection(a: Sequence[tuple[int, int]], b: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...] | None:
    """The bounds two slices share, or None when they share no element."""
    both = tuple((max(a0, b0), min(a1, b1)) for (a0, a1), (b0, b1) in zip(a, b, strict=True))
    return both if all(start < stop for start, stop in both) else None


def shifted(bounds: Sequence[tuple[int, int]], origin: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """``bounds`` relative to ``origin`` (the start of the region holding them)."""
    return tuple((start - o, stop - o) for (start, stop), o in zip(bounds, origin, strict=True))


def check_tiling(pieces: Sequence[tuple[tuple[int, int], ...]], shape: Sequence[int]) -> None:
    """Raise unless the slice bounds ``pieces`` (each inside ``shape``) cover it exactly once.

    Callers must already know the pieces' element counts to be backed by real data: the
    overlap check for many pieces marks a boolean map of the whole tensor.
    """
    volumes = [math.prod(stop - start for start, stop in bounds) for bounds in pieces]
    if sum(volumes) != math.prod(shape):
        raise CorruptCheckpointError("the stored slices do not cover the whole tensor exactly")
    solid = [bounds for bounds, volume in zip(pieces, volumes, strict=True) if volume]
    if len(solid) <= _PAIRWISE_LIMIT:
        for i, a in enumerate(solid):
            for b in solid[i + 1 :]:
                if overlaps(a, b):
                    raise CorruptCheckpointError("stored slices overlap")
        return
    seen = np.zeros(tuple(shape), dtype=bool)  # linear in pieces, unlike the pairwise check
    for bounds in solid:
        marks = seen[region(bounds)]
        if marks.any():
            raise CorruptCheckpointError("stored slices overlap")
        marks[...] = True


_PAIRWISE_LIMIT = 64
