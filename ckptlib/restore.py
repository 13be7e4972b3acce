"""Restore a checkpoint: as a new tree, or into an existing one (in place where leaves allow)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np

from ckptlib import frameworks, tree
from ckptlib.checkpoint import load_checkpoint
from ckptlib.dtensor import as_slice, is_dtensor
from ckptlib.errors import (
    DtypeMismatchError,
    InvalidStructureError,
    InvalidTensorError,
    ReadOnlyTargetError,
    RestoreMismatchError,
    ShapeMismatchError,
    UnsupportedFeatureError,
)
from ckptlib.format.object_graph import OBJECT_GRAPH_KEY
from ckptlib.io_policy import DEFAULT, IOPolicy
from ckptlib.object_graph_view import path_text
from ckptlib.reader import CheckpointReader
from ckptlib.slice_value import Slice


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
    object_paths: bool = False,
    io: IOPolicy = DEFAULT,
) -> Any: ...
@overload
def restore(
    save_path: str | os.PathLike[str],
    into: Any,
    *,
    strict: bool = True,
    verify_checksums: bool = True,
    mmap: bool = False,
    object_paths: bool = False,
    io: IOPolicy = DEFAULT,
) -> RestoreReport: ...


def restore(
    save_path: str | os.PathLike[str],
    into: Any = None,
    *,
    strict: bool = True,
    verify_checksums: bool = True,
    mmap: bool = False,
    object_paths: bool = False,
    io: IOPolicy = DEFAULT,
) -> Any:
    """Read a checkpoint (prefix, directory or one of its files).

    Without ``into``: returns the saved tree, with its containers and Python types as they
    were saved (``{0: ...}`` stays an int key, a tuple a tuple, ``3`` an int, ``"a"`` a str,
    ``None`` None) and every array as a numpy array. A checkpoint without ckptlib's
    structure record (TensorFlow's, or a flat dict of arrays) gives ``{name: array}``.

    ``object_paths=True`` (TF2 ``tf.train.Checkpoint`` files only): returns nested dicts
    keyed by object path instead of by key, TF's escaping and ``.ATTRIBUTES/VARIABLE_VALUE``
    undone: ``{"model": {"dense": {"kernel": array}}, "optimizer": {...}, "save_counter": array}``.
    A tensor several paths reach is placed once, at the path that names it in
    ``reader.object_graph`` (a name beats a list position, so a Keras 3 weight sits under
    ``model``, not ``optimizer/_trainable_variables``); an optimizer slot at its optimizer's
    path, the slot's name, then its variable's path (``optimizer/m/model/dense/kernel``); a
    non-variable attribute one level below its object, under the attribute's name. A
    checkpoint without an object graph, or one where two tensors would share a place, raises
    ``UnsupportedFeatureError``; ``into`` with it raises ``InvalidStructureError``.

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

    A ``ckptlib.Slice(full_shape, offsets, target)`` leaf is filled with the block of its
    tensor that starts at ``offsets`` and spans ``target``'s shape, whether the tensor was
    stored whole or as slices of any split; only the stored pieces the block overlaps are
    read. Its ``full_shape`` must be the stored shape.

    A restore is all or nothing: every tensor a target takes is read and its checksum
    verified, and every target checked, before the first target is written, so a damaged
    checkpoint (``ChecksumMismatchError``) or a mismatch leaves every target as it was.

    Tensors are read into private memory (numeric ones are views of one buffer, which any
    of them still held keeps whole); no file stays open. With ``mmap=True`` they are
    copy-on-write views of the memory-mapped data files instead (see ``load_checkpoint``
    for what that risks). ``save_path`` may be a URL (``s3://bucket/run``), read with
    parallel ranged requests; ``io`` sets the threads and process-wide settings the read
    may use (``IOPolicy``).
    """
    if into is not None and not tree.is_container(into):
        raise InvalidStructureError(
            "restore(into=...) takes a tree of targets (a dict, list, tuple, namedtuple or dataclass), "
            f"got {type(into).__name__}"
        )
    if into is not None and object_paths:
        raise InvalidStructureError("restore(object_paths=True) returns a new tree; it takes no into=")
    with load_checkpoint(save_path, verify_checksums=verify_checksums, mmap=mmap, io=io) as reader:
        if object_paths:
            return _read_object_tree(reader)
        if into is None:
            return _read_tree(reader)
        keys = reader.keys_list()
        stored = set(keys) - {tree.STRUCTURE_KEY}
        kinds = {}
        object_graph = False
        if len(stored) < len(keys):
            # read even where no placeholder needs it: damage to it is reported as anywhere else
            raw = reader.read_all([tree.STRUCTURE_KEY])[tree.STRUCTURE_KEY]
            record = tree.parse_record(raw, reader.prefix, len(stored))
            kinds = tree.leaf_kinds(record, stored, reader.prefix)
            object_graph = tree.names_objects(record)  # leaves named by object-graph keys
            stored -= tree.added_tensors(record, kinds)
        targets = tree.target_leaves(into, object_graph=object_graph)
        targets = {name: as_slice(leaf, name) if is_dtensor(leaf) else leaf for name, leaf in targets.items()}
        shown = tree.tree_path_of if object_graph else str  # messages and the report speak of tree paths
        blocks = {name: leaf for name, leaf in targets.items() if isinstance(leaf, Slice) and name in stored}
        unfit = {name: _block_problems(reader, name, shown(name), leaf) for name, leaf in blocks.items()}
        values = reader.read_all([name for name in targets if name in stored and name not in blocks])
        for name, leaf in blocks.items():
            if not unfit[name]:  # only the stored pieces the block overlaps are read
                values[name] = reader.get_slice(name, leaf.offsets, leaf.shape)
        report, replacements = _check(reader, targets, stored, strict, values, kinds, shown, unfit)
        for name, leaf in targets.items():
            if name in values and name not in replacements:
                frameworks.fill(leaf.value if isinstance(leaf, Slice) else leaf, values[name])
        restored = tree.rebuild(into, lambda name, leaf: replacements.get(name, leaf), object_graph=object_graph)
        return dataclasses.replace(report, tree=restored)


def _read_tree(reader: CheckpointReader) -> Any:
    values = reader.read_all()
    raw = values.pop(tree.STRUCTURE_KEY, None)
    if raw is None:
        return values
    return tree.unflatten(tree.parse_record(raw, reader.prefix, len(values)), values, reader.prefix)


def _read_object_tree(reader: CheckpointReader) -> dict[str, Any]:
    graph = reader.object_graph
    if graph is None:
        raise UnsupportedFeatureError(
            "restore(object_paths=True) needs a TF2 object graph (tf.train.Checkpoint); this checkpoint has none",
            path=reader.prefix,
        )
    # the graph itself, and ckptlib's structure record where a ckptlib save wrote both, are no tensors of the tree
    values = reader.read_all([key for key in reader.keys_list() if key not in (OBJECT_GRAPH_KEY, tree.STRUCTURE_KEY)])
    out: dict[str, Any] = {}
    for key, value in values.items():
        place = graph.tree_path(key)
        node: Any = out
        for part in place[:-1]:
            node = node.setdefault(part, {}) if isinstance(node, dict) else None
        if not place or not isinstance(node, dict) or place[-1] in node:
            raise UnsupportedFeatureError(
                f"tensor {key!r} shares its object path ({path_text(place)!r}) with another tensor; "
                "restore without object_paths=True",
                path=reader.prefix,
                tensor=key,
            )
        node[place[-1]] = value
    return out


def _check(
    reader: CheckpointReader,
    targets: Mapping[str, Any],
    stored: set[str],
    strict: bool,
    values: Mapping[str, np.ndarray],
    kinds: Mapping[str, str],
    shown: Callable[[str], str] = str,
    unfit: Mapping[str, list[tuple[str, str]]] | None = None,
) -> tuple[RestoreReport, dict[str, Any]]:
    """Every problem with the targets at once, as one error, found before anything is
    written; else the report and the new value of every target that is replaced rather than
    filled in place (made here, so that making one cannot fail halfway through the writes).
    ``kinds`` are the structure record's leaf kinds, which give ``None`` placeholders their types;
    ``unfit``, what keeps each ``Slice`` target from its block (found before reading it)."""
    wanted = set(targets)
    missing = sorted(name for name in wanted - stored if targets[name] is not None)  # None: a placeholder
    unexpected = sorted(stored - wanted)
    problems: dict[str, list[str]] = {"shape": [], "dtype": [], "readonly": []}
    replacements: dict[str, Any] = {}
    for name, leaf in targets.items():
        if name not in stored:
            continue
        if isinstance(leaf, Slice):
            block_problems = (unfit or {}).get(name) or _array_target_problems(shown(name), leaf.value, values[name])
            for problem, message in block_problems:
                problems[problem].append(message)
            if not frameworks.is_in_place(leaf.value):
                replacements[name] = leaf
            continue
        value = values[name]
        if frameworks.target_spec(leaf) is not None:
            for problem, message in _array_target_problems(shown(name), leaf, value):
                problems[problem].append(message)
            if not frameworks.is_in_place(leaf):
                replacements[name] = leaf  # made below, once every target has passed
            continue
        try:
            replacements[name] = _scalar_replacement(shown(name), leaf, value, kinds.get(name), reader.prefix)
        except _Unfit as e:
            problems[e.kind].append(e.message)
    found = problems["shape"] + problems["dtype"] + problems["readonly"]
    if strict:
        found += [f"{shown(name)}: missing from the checkpoint" for name in missing]
        found += [f"{shown(name)}: in the checkpoint but not in the restore target" for name in unexpected]
    if found:
        detail = "\n  ".join(found)
        if found == problems["readonly"]:
            raise ReadOnlyTargetError(f"{len(found)} target(s) cannot be written:\n  {detail}", path=reader.prefix)
        kind: type[RestoreMismatchError] = RestoreMismatchError
        if found == problems["shape"]:
            kind = ShapeMismatchError
        elif found == problems["dtype"]:
            kind = DtypeMismatchError
        raise kind(f"{len(found)} tensor(s) do not fit:\n  {detail}", path=reader.prefix)
    for name, leaf in replacements.items():
        if leaf is targets[name] and isinstance(leaf, Slice):
            replacements[name] = dataclasses.replace(leaf, value=frameworks.replacement(leaf.value, values[name]))
        elif leaf is targets[name] and frameworks.target_spec(leaf) is not None:
            replacements[name] = frameworks.replacement(leaf, values[name])
    report = RestoreReport(*(sorted(map(shown, names)) for names in (wanted & stored, missing, unexpected)))
    return report, replacements


class _Unfit(Exception):
    def __init__(self, kind: str, message: str):
        self.kind = kind
        self.message = message


def _array_target_problems(name: str, leaf: Any, value: np.ndarray) -> list[tuple[str, str]]:
    """``(kind, message)`` for each way ``value`` cannot go into the array-like ``leaf``."""
    spec = frameworks.target_spec(leaf)
    assert spec is not None
    shape, dtype = spec
    found = []
    if shape != value.shape:
        found.append(("shape", f"{name}: target shape {list(shape)}, checkpoint has {list(value.shape)}"))
    if dtype is None and frameworks.framework_of(leaf) is not None:
        found.append(("dtype", f"{name}: target dtype {leaf.dtype} has no TensorFlow equivalent"))
    elif dtype is not None and dtype != value.dtype:
        found.append(("dtype", f"{name}: target dtype {dtype}, checkpoint has {value.dtype}"))
    why = frameworks.cannot_fill(leaf)
    if why is not None:
        found.append(("readonly", f"{name}: {why}"))
    return found


def _block_problems(reader: CheckpointReader, name: str, path: str, leaf: Slice) -> list[tuple[str, str]]:
    """``(kind, message)`` for each way the stored tensor ``name`` has no block for the
    ``Slice`` target ``leaf``, from the index alone (nothing read yet)."""
    stored_shape, stored_dtype = tuple(reader.shape(name)), reader.dtype(name)
    spec = frameworks.target_spec(leaf.value)
    if spec is None:
        return [("readonly", f"{path}: a Slice target must hold an array to fill, got {type(leaf.value).__name__}")]
    if leaf.full_shape != stored_shape:
        return [("shape", f"{path}: Slice of full shape {list(leaf.full_shape)}, checkpoint has {list(stored_shape)}")]
    found = []
    try:
        leaf.bounds()
    except InvalidTensorError as e:
        found.append(("shape", f"{path}: {e.reason}"))
    if spec[1] is not None and spec[1] != stored_dtype:
        found.append(("dtype", f"{path}: target dtype {spec[1]}, checkpoint has {stored_dtype}"))
    return found


# Which stored dtypes (numpy kinds) each Python scalar target takes: never a narrowing (2.7 into an int)
_SCALAR_KINDS = {bool: "b", int: "iu", float: "iuf", complex: "iufc"}


def _scalar_replacement(name: str, leaf: Any, value: np.ndarray, kind: str | None, where: str) -> Any:
    """The new value for a target replaced whole: a Python or numpy scalar, a string, or a
    ``None`` placeholder (typed by the structure record's ``kind`` where there is one)."""
    if leaf is None:
        return value if kind is None else tree.leaf_value(kind, value, name, where)
    if isinstance(leaf, (str, bytes, np.generic, bool, int, float, complex)) and value.shape != ():
        raise _Unfit("shape", f"{name}: target is a {type(leaf).__name__}, checkpoint has shape {list(value.shape)}")
    if isinstance(leaf, (str, bytes)):
        if value.dtype != object:
            raise _Unfit("dtype", f"{name}: target is a {type(leaf).__name__}, checkpoint has {value.dtype}")
        item = value.item()
        if isinstance(leaf, bytes):
            return item
        try:
            return item.decode("utf-8")
        except UnicodeDecodeError:
            raise _Unfit("dtype", f"{name}: target is a str, checkpoint has bytes that are not UTF-8") from None
    if isinstance(leaf, np.generic):
        if value.dtype != leaf.dtype:
            raise _Unfit("dtype", f"{name}: target dtype {leaf.dtype}, checkpoint has {value.dtype}")
        return value[()]
    for python_type, accepted in _SCALAR_KINDS.items():
        if isinstance(leaf, python_type):
            if value.dtype.kind not in accepted:
                raise _Unfit("dtype", f"{name}: target is a {python_type.__name__}, checkpoint has {value.dtype}")
            return python_type(value.item())
    return value  # any other object: a placeholder, replaced by the array
