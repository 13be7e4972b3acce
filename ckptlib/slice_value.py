"""``Slice``: a leaf that is one block of a larger tensor, for saves and restores of parts.

Saved, a ``Slice`` is written as TensorFlow writes one piece of a partitioned variable (the
tensor's full entry listing its slices, and the piece under its slice key, see
``format/slices.py``). As a restore target, its ``value`` is filled with its block of the
stored tensor, however that was stored: whole, or as slices of any split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ckptlib.errors import InvalidTensorError
from ckptlib.format.slices import TensorSlice


@dataclass(frozen=True)
class Slice:
    """``value`` is the block of a tensor of shape ``full_shape`` that starts at ``offsets``
    (one per dimension) and spans ``value``'s own shape.

    ``value`` is any array ckptlib saves (numpy, torch, JAX, TF) or, as a restore target, one
    it fills (a writable numpy array or torch tensor; a JAX array is replaced). Negative or
    mismatched ``full_shape`` and ``offsets`` raise ``InvalidTensorError`` here; a block that
    does not fit in ``full_shape`` raises it where the slice is saved or restored, naming
    its path.
    """

    full_shape: tuple[int, ...]
    offsets: tuple[int, ...]
    value: Any

    def __post_init__(self) -> None:
        full_shape, offsets = _ints(self.full_shape, "full_shape"), _ints(self.offsets, "offsets")
        if len(full_shape) != len(offsets):
            raise InvalidTensorError(
                f"Slice: full_shape {list(full_shape)} has rank {len(full_shape)}, offsets {list(offsets)} "
                f"have {len(offsets)}"
            )
        object.__setattr__(self, "full_shape", full_shape)
        object.__setattr__(self, "offsets", offsets)

    @property
    def shape(self) -> tuple[int, ...]:
        """The block's extent: ``value``'s shape."""
        return tuple(int(d) for d in getattr(self.value, "shape", None) or np.shape(self.value))

    def bounds(self, name: str | None = None) -> tuple[tuple[int, int], ...]:
        """``(start, stop)`` per dimension of the block inside the full tensor; raises
        ``InvalidTensorError`` (naming ``name``) when it does not fit there."""
        shape = self.shape
        if len(shape) != len(self.full_shape):
            raise InvalidTensorError(
                f"a Slice of shape {list(self.full_shape)} (rank {len(self.full_shape)}) holds a value of "
                f"rank {len(shape)} (shape {list(shape)})",
                tensor=name,
            )
        bounds = tuple((start, start + n) for start, n in zip(self.offsets, shape, strict=True))
        if any(stop > dim for (_, stop), dim in zip(bounds, self.full_shape, strict=True)):
            raise InvalidTensorError(
                f"a Slice at offsets {list(self.offsets)} of shape {list(shape)} does not fit in "
                f"shape {list(self.full_shape)}",
                tensor=name,
            )
        return bounds

    def tensor_slice(self, name: str | None = None) -> TensorSlice:
        """The block as TensorFlow's slice spec, every extent explicit (as TF1 partitioners write it)."""
        return TensorSlice(tuple((start, stop - start) for start, stop in self.bounds(name)))


def _ints(values: Sequence[int], what: str) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise InvalidTensorError(f"Slice: {what} must be a sequence of ints, got {values!r}") from None
    if any(v < 0 for v in out):
        raise InvalidTensorError(f"Slice: {what} must not be negative, got {list(out)}")
    return out
