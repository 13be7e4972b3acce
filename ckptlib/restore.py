"""Restore a checkpoint: as a new tree, or into an existing one (in place where leaves allow)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np

from ckptlib import frameworks, tree
from ckptlib.checkpoint import load_checkpoint
from ckptlib.errors import (
    DtypeMismatchError,
    InvalidStructureError,
    ReadOnlyTargetError,
    RestoreMismatchError,
    ShapeMismatchError,
)
from ckptlib.reader import CheckpointReader


@dataclass(frozen=True)
class RestoreReport:
    """What an in-place restore did. ``missing``: targets the checkpoint lacks;
    ``unexpected``: stored tensors no target asked for; ``tree``: the restored tree (the
    target itself, or a copy of it where immutable leaves such as JAX arrays, Python
    scalars or tuples had to be replaced)."""

    restored: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    tree: Any = None


@overload
def restore(
    save_path: str | os.PathLike[str],
    into: None = None,
    *,
    strict: bool = True,
    verify_checksums: bool = True,
    mmap: bool = False,
) -> Any: ...
@overload
def restore(
    save_path: str | os.PathLike[str],
    into: Any,
    *,
    strict: bool = True,
    verify_checksums: bool = True,
    mmap: bool = False,
) -> RestoreReport: ...


def restore(
    save_path: str | os.PathLike[str],
    into: Any = None,
    *,
    strict: bool = True,
    verify_checksums: bool = True,
    mmap: bool = False,
) -> Any:
    """Read a checkpoint (prefix, directory or one of its files).

    Without ``into``: returns the saved tree, with its containers and Python types as they
    were saved (``{0: ...}`` stays an int key, a tuple a tuple, ``3`` an int, ``"a"`` a str,
    ``None`` None) and every array as a numpy array. A checkpoint without ckptlib's
    structure record (TensorFlow's, or a flat dict of arrays) gives ``{name: array}``.

    With ``into`` (a tree shaped like the saved one: dicts, lists, tuples, namedtuples,
    dataclasses): every leaf is filled from the tensor of its path's name (``"a/0/b"``):
    numpy arrays and torch tensors in place, TF and Keras variables by ``assign``; other
    leaves (JAX arrays, Python scalars, strings) are replaced, in place in dicts and lists,
    by rebuilding tuples and frozen dataclasses. Returns a ``RestoreReport`` whose ``tree``
    is the restored tree.

    Every target is checked before anything is written. A shape or dtype mismatch, and in
    ``strict`` mode (the default) any target the checkpoint lacks or stored tensor no
    target takes, raises a ``RestoreMismatchError`` (``ShapeMismatchError``,
    ``DtypeMismatchError`` or ``ReadOnlyTargetError`` when those are the only problems)
    listing every offending path with what was expected and found. ``into`` that is not a
    container raises ``InvalidStructureError``.

    A restore is all or nothing: every tensor a target takes is read and its checksum
    verified, and every target checked, before the first target is written, so a damaged
    checkpoint (``ChecksumMismatchError``) or a mismatch leaves every target as it was.

    Tensors are read into private memory (numeric ones are views of one buffer, which any
    of them still held keeps whole); no file stays open. With ``mmap=True`` they are
    copy-on-write views of the memory-mapped data files instead (see ``load_checkpoint``
    for what that risks).
    """
    if into is not None and not tree.is_container(into):
        raise InvalidStructureError(
            "restore(into=...) takes a tree of targets (a dict, list, tuple, namedtuple or dataclass), "
            f"got {type(into).__name__}"
        )
    with load_checkpoint(save_path, verify_checksums=verify_checksums, mmap=mmap) as reader:
        if into is None:
            return _read_tree(reader)
        targets = dict(tree.target_leaves(into))
        keys = reader.keys_list()
        stored = set(keys) - {tree.STRUCTURE_KEY}
        # the record is read too, though unused here: damage anywhere in what ckptlib wrote is reported
        wanted = [name for name in targets if name in stored] + [tree.STRUCTURE_KEY] * (len(stored) < len(keys))
        values = reader.read_all(wanted)
        report = _check(reader, targets, stored, strict, values)
        restored = tree.rebuild(into, lambda name, leaf: _assign(leaf, values[name]) if name in values else leaf)
        return dataclasses.replace(report, tree=restored)


def _read_tree(reader: CheckpointReader) -> Any:
    values = reader.read_all()
    raw = values.pop(tree.STRUCTURE_KEY, None)
    if raw is None:
        return values
    return tree.unflatten(tree.parse_record(raw, reader.prefix), values, reader.prefix)


def _check(
    reader: CheckpointReader,
    targets: Mapping[str, Any],
    stored: set[str],
    strict: bool,
    values: Mapping[str, np.ndarray],
) -> RestoreReport:
    """Every problem with the targets at once, as one error; ``values`` (every stored
    tensor a target takes, already read) tell shapes and dtypes without an index lookup."""
    wanted = set(targets)
    missing = sorted(name for name in wanted - stored if targets[name] is not None)  # None: a placeholder
    unexpected = sorted(stored - wanted)
    shape_problems, dtype_problems, readonly_problems = [], [], []
    for name, leaf in targets.items():
        if name not in stored:
            continue
        shape, dtype = values[name].shape, values[name].dtype
        spec = frameworks.target_spec(leaf)
        if spec is None:
            continue
        target_shape, target_dtype = spec
        if target_shape != shape:
            shape_problems.append(f"{name}: target shape {list(target_shape)}, checkpoint has {list(shape)}")
        if target_dtype is not None and target_dtype != dtype:
            dtype_problems.append(f"{name}: target dtype {target_dtype}, checkpoint has {dtype}")
        why = frameworks.cannot_fill(leaf)
        if why is not None:
            readonly_problems.append(f"{name}: {why}")
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


def _assign(leaf: Any, value: np.ndarray) -> Any:
    """Fill ``leaf`` with ``value`` and return it, or return the value to put in its place."""
    if frameworks.is_in_place(leaf):
        frameworks.fill(leaf, value)
        return leaf
    if frameworks.target_spec(leaf) is not None:
        return frameworks.replacement(leaf, value)
    return _like(leaf, value)


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
