"""torch ``DTensor`` leaves: a process's part of a tensor spread over a device mesh, taken as
the ``Slice`` it is (saved with TF's slice keys, restored with its block filled)."""

from __future__ import annotations

from typing import Any

from ckptlib.errors import InvalidTensorError
from ckptlib.frameworks import framework_of
from ckptlib.slice_value import Slice


def is_dtensor(value: Any) -> bool:
    return type(value).__name__ == "DTensor" and framework_of(value) == "torch"


def as_slice(value: Any, name: str) -> Any:
    """This process's block of a DTensor as a ``Slice`` of its global shape, or the local
    tensor itself when every process holds all of it (replicated: written once)."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    placements = tuple(value.placements)
    if not all(isinstance(p, (Replicate, Shard)) for p in placements):
        raise InvalidTensorError(
            f"a DTensor placed as {placements} holds no complete values here: redistribute it to Shard or "
            "Replicate placements first",
            tensor=name,
        )
    local = value.to_local()
    if all(isinstance(p, Replicate) for p in placements):
        return local
    _, offsets = compute_local_shape_and_global_offset(value.shape, value.device_mesh, placements)
    return Slice(tuple(value.shape), tuple(offsets), local)
