"""Restore a checkpoint: into a new dict, or in place into an existing structure."""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np

from ckptlib.checkpoint import load_checkpoint
from ckptlib.errors import (
    DtypeMismatchError,
    InvalidStructureError,
    InvalidTensorError,
    ReadOnlyTargetError,
    RestoreMismatchError,
    ShapeMismatchError,
)
from ckptlib.format import dtypes
from ckptlib.reader import CheckpointReader


@dataclass(frozen=True)
class RestoreReport:
    """What an in-place restore did. ``missing``: targets the checkpoint lacks;
    ``unexpected``: stored tensors no target asked for."""

    restored: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Target:
    name: str
    parent: MutableMapping[str, Any] | Mapping[str, Any]
    key: str
    leaf: Any


@overload
def restore(
    save_path: str | os.PathLike[str],
    into: None = None,
    *,
    strict: bool = True,
    verify_checksums: bool = True,
    mmap: bool = False,
) -> dict[str, np.ndarray]: ...
@overload
def restore(
    save_path: str | os.PathLike[str],
    into: Mapping[str, Any],
    *,
    strict: bool = True,
    verify_checksums: bool = True,
    mmap: bool = False,
) -> RestoreReport: ...


def restore(
    save_path: str | os.PathLike[str],
    into: Mapping[str, Any] | None = None,
    *,
    strict: bool = True,
    verify_checksums: bool = True,
    mmap: bool = False,
) -> dict[str, np.ndarray] | RestoreReport:
    """Read a checkpoint (prefix, directory or one of its files).

    Without ``into``: returns ``{name: array}`` for every tensor. With ``into`` (a nested
    mapping whose leaves are numpy arrays, objects with an in-place ``copy_`` such as torch
    tensors, or plain values in a mutable mapping, which are replaced): every leaf is
    filled in place from the tensor of the same ``/``-joined name, and a ``RestoreReport``
    is returned.

    Every target is checked before anything is written. A shape or dtype mismatch, and in
    ``strict`` mode (the default) any target the checkpoint lacks or stored tensor no
    target takes, raises a ``RestoreMismatchError`` (``ShapeMismatchError``,
    ``DtypeMismatchError`` or ``ReadOnlyTargetError`` when those are the only problems)
    listing every offending name with what was expected and found. ``into`` that is not a
    mapping raises ``InvalidStructureError``.

    A restore is all or nothing: every tensor a target takes is read and its checksum
    verified, and every target checked, before the first target is written, so a damaged
    checkpoint (``ChecksumMismatchError``) or a mismatch leaves every target as it was.

    Tensors are read into private memory (numeric ones returned without ``into`` are views
    of one buffer, which any of them still held keeps whole); no file stays open. With
    ``mmap=True`` they are copy-on-write views of the memory-mapped data files instead
    (see ``load_checkpoint`` for what that risks).
    """
    if into is not None and not isinstance(into, Mapping):
        raise InvalidStructureError(
            f"restore(into=...) takes a mapping of names to arrays (a dict), got {type(into).__name__}"
        )
    with load_checkpoint(save_path, verify_checksums=verify_checksums, mmap=mmap) as reader:
        if into is None:
            return reader.read_all()
        targets = list(_targets(into, ""))
        stored = set(reader.keys_list())
        values = reader.read_all([t.name for t in targets if t.name in stored])
        report = _check(reader, targets, strict, values)
        for target in targets:
            if target.name in values:
                _assign(target, values[target.name])
        return report


def _targets(tree: Mapping[str, Any], prefix: str) -> list[_Target]:
    out = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.extend(_targets(value, name + "/"))
        else:
            out.append(_Target(name, tree, key, value))
    return out


def _check(
    reader: CheckpointReader, targets: list[_Target], strict: bool, values: Mapping[str, np.ndarray]
) -> RestoreReport:
    """Every problem with the targets at once, as one error; ``values`` (every stored
    tensor a target takes, already read) tell shapes and dtypes without an index lookup."""
    stored = set(reader.keys_list())
    wanted = {t.name for t in targets}
    missing = sorted(wanted - stored)
    unexpected = sorted(stored - wanted)
    shape_problems, dtype_problems, readonly_problems = [], [], []
    for target in targets:
        if target.name not in stored:
            continue
        shape, dtype = values[target.name].shape, values[target.name].dtype
        target_shape, target_dtype = _describe(target.leaf)
        if target_shape is not None and tuple(target_shape) != shape:
            shape_problems.append(f"{target.name}: target shape {list(target_shape)}, checkpoint has {list(shape)}")
        if target_dtype is not None and target_dtype != dtype:
            dtype_problems.append(f"{target.name}: target dtype {target_dtype}, checkpoint has {dtype}")
        if isinstance(target.leaf, np.ndarray) and not target.leaf.flags.writeable:
            readonly_problems.append(f"{target.name}: the target array is read-only")
        if target_shape is None and not isinstance(target.parent, MutableMapping):
            readonly_problems.append(
                f"{target.name}: {type(target.leaf).__name__} in a {type(target.parent).__name__} "
                "cannot be updated in place"
            )
    problems = shape_problems + dtype_problems + readonly_problems
    if strict:
        problems += [f"{name}: missing from the checkpoint" for name in missing]
        problems += [f"{name}: in the checkpoint but not in the restore target" for name in unexpected]
    if problems:
        kind: type[RestoreMismatchError] = RestoreMismatchError
        if problems == shape_problems:
            kind = ShapeMismatchError
        elif problems == dtype_problems:
            kind = DtypeMismatchError
        detail = "\n  ".join(problems)
        if problems == readonly_problems:
            raise ReadOnlyTargetError(f"{len(problems)} target(s) cannot be written:\n  {detail}", path=reader.prefix)
        raise kind(f"{len(problems)} tensor(s) do not fit:\n  {detail}", path=reader.prefix)
    return RestoreReport(sorted(wanted & stored), missing, unexpected)


def _describe(leaf: Any) -> tuple[tuple[int, ...] | None, np.dtype | None]:
    """Shape and numpy dtype of an in-place target; (None, None) for values replaced whole."""
    if isinstance(leaf, np.ndarray):
        return leaf.shape, leaf.dtype
    if hasattr(leaf, "copy_") and hasattr(leaf, "shape"):
        return tuple(leaf.shape), _framework_dtype(leaf)
    return None, None


def _framework_dtype(leaf: Any) -> np.dtype | None:
    """numpy's name for a framework tensor's dtype (torch.float32 -> float32)."""
    name = str(getattr(leaf, "dtype", "")).rsplit(".", 1)[-1]
    if name == "bool":
        return np.dtype(bool)
    try:
        return dtypes.by_name(name).numpy
    except InvalidTensorError:
        return None


def _assign(target: _Target, value: np.ndarray) -> None:
    leaf = target.leaf
    if isinstance(leaf, np.ndarray):
        np.copyto(leaf, value, casting="no")
    elif hasattr(leaf, "copy_") and hasattr(leaf, "shape"):
        _copy_into_framework_tensor(leaf, value)
    else:
        assert isinstance(target.parent, MutableMapping)
        target.parent[target.key] = _like(leaf, value)


def _like(leaf: Any, value: np.ndarray) -> Any:
    """A replacement for an immutable leaf, of the leaf's own Python type where sensible."""
    if value.ndim != 0:
        return value
    if isinstance(leaf, np.generic):
        return value[()]
    item = value.item()
    if isinstance(item, bytes):
        return item.decode("utf-8") if isinstance(leaf, str) else item
    if isinstance(leaf, (bool, int, float, complex)):
        return type(leaf)(item)
    return value


def _copy_into_framework_tensor(leaf: Any, value: np.ndarray) -> None:
    module = type(leaf).__module__.split(".")[0]
    if module == "torch":
        import torch

        if value.dtype.name == "bfloat16":
            source = torch.from_numpy(value.view(np.int16)).view(torch.bfloat16)
        else:
            source = torch.from_numpy(np.ascontiguousarray(value))
        with torch.no_grad():
            leaf.copy_(source)
    else:
        leaf.copy_(value)
