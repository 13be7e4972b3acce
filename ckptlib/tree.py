"""Training-state trees <-> named tensors plus a structure record.

A tree is nested containers (dicts with ``str`` or ``int`` keys, lists, tuples, namedtuples,
dataclasses) whose leaves are arrays (numpy, torch, JAX, TF), numpy scalars, Python
``bool``/``int``/``float``/``complex``/``str``/``bytes``, or ``None``. Every leaf but ``None``
becomes one tensor named by its path, the components joined with ``/`` (ints and list indices
in decimal, namedtuple and dataclass fields by name)::

    {"model": {"w": w}, "opt": {"state": {0: {"step": 3}}, "betas": (0.9, 0.99)}, "note": None}
    tensors: model/w  opt/state/0/step  opt/betas/0  opt/betas/1

The names alone cannot tell ``{0: x}`` from ``[x]``, ``3`` from ``np.int64(3)``, ``"a"`` from
``b"a"``, nor keep ``None`` or an empty container, so the shape of the tree goes into one more
string tensor, ``_CKPTLIB_STRUCTURE``: JSON (never pickle), which TensorFlow reads as any other
string and otherwise ignores::

    {"format": "ckptlib.structure", "version": 1, "root": NODE}
    NODE: ["dict", [key, ...], [NODE, ...]]          keys as JSON str or int: types kept apart
          ["list", [NODE, ...]]   ["tuple", [NODE, ...]]
          ["namedtuple", "module:QualName", [field, ...], [NODE, ...]]
          ["dataclass",  "module:QualName", [field, ...], [NODE, ...]]
          "none" | "array" | "numpy" (a numpy scalar) | "bool" | "int" | "float" | "complex"
                 | "str" | "bytes"                     (a leaf: the tensor named by its path)

A flat dict of ``str`` names to arrays or numpy scalars (TensorFlow's own model, and the
common large case) is written without the record, byte for byte as TensorFlow writes it; its
numpy scalars come back as 0-d arrays, as they would from TensorFlow's files.

Saved with an object graph (``object_graph=True``, see ``ckptlib.object_tree``), each leaf's
tensor is named by its TF2 object-graph key instead: components escaped (``.`` -> ``..``,
``/`` -> ``.S``, ints in decimal) and ``/.ATTRIBUTES/VARIABLE_VALUE`` appended. The record
says so by its version, 2, and its root, ``["object_graph", NODE]``; the graph entry and
``save_counter`` written beside the leaves are not of the tree. Restore targets are named the
same way (``target_leaves(tree, object_graph=True)``) for such a record.

A ``ckptlib.Slice`` leaf (a dataclass, but a leaf) is one block of the tensor its path names,
written as a slice of it; its kind is ``"array"``: the tensor comes back whole.

Namedtuple and dataclass types come back only if their module is already imported (nothing
is imported or run on behalf of a file); otherwise a namedtuple comes back as a namedtuple
type made from the stored field names, and a dataclass as a dict with a warning.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import keyword
import sys
import warnings
from collections.abc import Callable, Collection, Iterator, Mapping, MutableMapping
from typing import Any

import numpy as np

from ckptlib.errors import CorruptCheckpointError, InvalidStructureError, InvalidTensorError
from ckptlib.format.object_graph import (
    ATTRIBUTES,
    OBJECT_GRAPH_KEY,
    OPTIMIZER_SLOT,
    VARIABLE_VALUE,
    decode_graph,
    escape_local_name,
    unescape_local_name,
)
from ckptlib.slice_value import Slice

STRUCTURE_KEY = "_CKPTLIB_STRUCTURE"
FORMAT = "ckptlib.structure"
VERSION = 1
# Records of trees saved with an object graph (``["object_graph", NODE]`` roots) are version 2:
# older readers refuse them plainly rather than miss every tensor.
OBJECT_GRAPH_VERSION = 2
# The int64 scalar TF's ``tf.train.Checkpoint`` keeps beside its objects (a child of the root)
SAVE_COUNTER = "save_counter"
SAVE_COUNTER_KEY = f"{SAVE_COUNTER}/{ATTRIBUTES}/{VARIABLE_VALUE}"
# Deeper trees are refused on save and on read: a cycle, or a hostile record.
MAX_DEPTH = 200
# A record larger than this is refused before it is parsed (about 40 bytes per leaf are typical).
MAX_RECORD_BYTES = 256 << 20
# ... and than this beside a given number of tensors (leaves without one, None and empty
# containers, take a few bytes each; a real record is a small fraction of this)
_RECORD_BASE = 1 << 20
_RECORD_PER_TENSOR = 512
# Distinct namedtuple types one restore may make up for classes that are not imported
_MAX_MADE_TYPES = 1000

_SCALARS: dict[type, str] = {bool: "bool", int: "int", float: "float", complex: "complex", str: "str", bytes: "bytes"}
_LEAF_KINDS = frozenset({"array", "numpy", *_SCALARS.values()})


def tensors_of(tree: Any, *, object_graph: bool = False, save_counter: int = 1) -> dict[str, Any]:
    """The tensors to write for ``tree``: ``{name: leaf}``, plus the structure record where
    a restore needs it to give ``tree``'s shape and types back. Raises
    ``InvalidStructureError`` for a tree that is not a container and ``InvalidTensorError``
    for names that are empty or collide (both naming the path).

    With ``object_graph``, each leaf is named by its TF2 object-graph key instead
    (``a/b/.ATTRIBUTES/VARIABLE_VALUE``, see ``ckptlib.object_tree``), a root without a
    ``save_counter`` gets one holding ``save_counter``, and the record (always written then)
    and the ``_CHECKPOINTABLE_OBJECT_GRAPH`` entry are added. A mapping that has that entry
    already (a TF2 checkpoint read by name, maybe edited) carries its own graph: it is written
    by name, as it is, with ``object_graph`` or without."""
    if isinstance(tree, Mapping) and OBJECT_GRAPH_KEY in tree:
        _check_carried_graph(tree)
    elif object_graph:
        return _object_graph_tensors(tree, save_counter)
    if isinstance(tree, Mapping) and _is_flat(tree):
        if STRUCTURE_KEY in tree:
            raise InvalidTensorError(f"the name {STRUCTURE_KEY!r} is reserved for ckptlib's structure record")
        return dict(tree)  # the common large case: nothing to record, nothing can collide
    _check_root(tree)
    tensors: dict[str, Any] = {}
    root = _encode(tree, "", tensors, 0, _PLAIN)
    if STRUCTURE_KEY in tensors:
        raise InvalidTensorError(f"the name {STRUCTURE_KEY!r} is reserved for ckptlib's structure record")
    if not _needs_record(root):
        return tensors
    tensors[STRUCTURE_KEY] = _record(VERSION, root)
    return tensors


def _check_carried_graph(tree: Mapping[Any, Any]) -> None:
    """A mapping that carries its own ``_CHECKPOINTABLE_OBJECT_GRAPH`` (a TF2 checkpoint read by
    name) must hold a graph, as a bytes scalar, whose every tensor it holds: else TensorFlow
    could not restore what it is written as."""
    raw = tree[OBJECT_GRAPH_KEY]
    data = raw.item() if isinstance(raw, np.ndarray) and raw.shape == () else raw
    if not isinstance(data, bytes):
        raise InvalidTensorError(
            f"{OBJECT_GRAPH_KEY!r} is reserved for a TF2 object graph (a serialized TrackableObjectGraph), "
            f"got {type(raw).__name__}"
        )
    try:
        graph = decode_graph(data)
    except CorruptCheckpointError as e:
        raise InvalidTensorError(f"{OBJECT_GRAPH_KEY!r} holds no valid object graph: {e.reason}") from None
    lacking = sorted({a.checkpoint_key for n in graph.nodes for a in n.attributes} - set(tree))
    if lacking:
        shown = ", ".join(lacking[:5]) + (f" and {len(lacking) - 5} more" if len(lacking) > 5 else "")
        raise InvalidTensorError(f"the object graph names tensors the state lacks: {shown}")


def _object_graph_tensors(tree: Any, save_counter: int) -> dict[str, Any]:
    from ckptlib.object_tree import graph_of_keys  # object_tree imports this module

    _check_root(tree)
    tensors: dict[str, Any] = {}
    root = _encode(tree, "", tensors, 0, _OBJECT)
    if any(k.startswith(f"{SAVE_COUNTER}/") and k != SAVE_COUNTER_KEY for k in tensors):
        raise InvalidTensorError(f"{SAVE_COUNTER!r} at the root of an object graph must be a leaf, TF's counter")
    if SAVE_COUNTER_KEY not in tensors:  # else the tree's own save_counter is TF's counter
        tensors[SAVE_COUNTER_KEY] = np.array(save_counter, dtype=np.int64)
    else:
        counter = np.asarray(tensors[SAVE_COUNTER_KEY])
        if counter.shape != () or counter.dtype.kind not in "iu":
            raise InvalidTensorError(
                f"{SAVE_COUNTER!r} at the root of an object graph is TF's counter: it must be an integer scalar, "
                f"got {counter.dtype} of shape {list(counter.shape)}"
            )
        tensors[SAVE_COUNTER_KEY] = counter.astype(np.int64)  # TF restores it into an int64 variable
    # every name so far ends in /.ATTRIBUTES/VARIABLE_VALUE: nothing can take these two
    tensors[OBJECT_GRAPH_KEY] = np.array(graph_of_keys(tensors), dtype=object)
    tensors[STRUCTURE_KEY] = _record(OBJECT_GRAPH_VERSION, ["object_graph", root])
    return tensors


def _record(version: int, root: Any) -> np.ndarray:
    record = json.dumps({"format": FORMAT, "version": version, "root": root}, separators=(",", ":"))
    return np.array(record.encode("utf-8"), dtype=object)


def _check_root(tree: Any) -> None:
    if not _is_container(tree):
        raise InvalidStructureError(
            "the state to save must be a container of values (a dict, list, tuple, namedtuple or "
            f"dataclass), got {type(tree).__name__}"
        )


@dataclasses.dataclass(frozen=True)
class _Names:
    """How a leaf's path becomes its tensor's name: components joined with ``/`` as they
    are (plain), or escaped and followed by ``/.ATTRIBUTES/VARIABLE_VALUE`` (object graph)."""

    escape: Callable[[str], str]
    suffix: str

    def join(self, name: str, key: str | int) -> str:
        part = self.escape(str(key))
        return f"{name}/{part}" if name else part

    def tensor(self, name: str) -> str:
        return name + self.suffix


def _object_edge(key: str) -> str:
    """A key as one object-graph edge, escaped as TensorFlow escapes a dict key or attribute
    (``.`` -> ``..``, ``/`` -> ``.S``), so that a mirror of the tree names it alike."""
    if key.endswith(ATTRIBUTES) or key.endswith(OPTIMIZER_SLOT):
        # TF cuts keys at the first '.ATTRIBUTES/': such a name would be read as another key
        raise InvalidTensorError(f"{key!r} cannot name an object in a TF2 object graph (TensorFlow misreads it)")
    return escape_local_name(key)


_PLAIN = _Names(str, "")
_OBJECT = _Names(_object_edge, f"/{ATTRIBUTES}/{VARIABLE_VALUE}")


def _is_flat(tree: Mapping[Any, Any]) -> bool:
    return set(map(type, tree.values())) <= {np.ndarray} and set(map(type, tree)) <= {str} and "" not in tree


def _needs_record(root: Any) -> bool:
    """Whether the tree is more than TensorFlow's own model, a dict of str names to arrays
    (numpy scalars count as 0-d arrays there, so that such a dict is written byte for byte
    as TensorFlow writes it, and its scalars come back as 0-d arrays, as from TensorFlow's)."""
    if root[0] != "dict" or not all(isinstance(k, str) for k in root[1]):
        return True
    return not all(n in ("array", "numpy") for n in root[2])


def _encode(node: Any, name: str, tensors: dict[str, Any], depth: int, names: _Names) -> Any:
    if depth > MAX_DEPTH:
        raise InvalidStructureError(f"the state is nested more than {MAX_DEPTH} levels deep (a cycle?) at {name!r}")
    if node is None:
        return "none"
    if isinstance(node, Mapping):
        keys = list(node)
        for key in keys:
            _check_key(key, name)
        if names is _OBJECT and len(set(map(str, keys))) != len(keys):
            raise InvalidTensorError(f"keys {keys!r} under {name!r} name the same object (object graph names are str)")
        return ["dict", keys, [_encode(node[k], names.join(name, k), tensors, depth + 1, names) for k in keys]]
    if isinstance(node, (list, tuple)) or _is_dataclass(node):
        values = [_encode(v, names.join(name, k), tensors, depth + 1, names) for k, v in _children(node)]
        if _is_namedtuple(type(node)):
            return ["namedtuple", _qualified(type(node)), list(type(node)._fields), values]
        if _is_dataclass(node):
            return ["dataclass", _qualified(type(node)), [f.name for f in dataclasses.fields(node)], values]
        return ["list" if isinstance(node, list) else "tuple", values]
    key = names.tensor(name)
    if key in tensors:
        raise InvalidTensorError(f"two values flatten to the same name {key!r}")
    tensors[key] = node
    return _leaf_kind(node)


def _leaf_kind(node: Any) -> str:
    """The record's kind for a leaf. Order matters: ``np.str_`` is a str and ``np.float64`` a
    float, but the first is stored as a string and the second is a numpy scalar."""
    if isinstance(node, str):
        return "str"
    if isinstance(node, bytes):
        return "bytes"
    if isinstance(node, np.generic):
        return "numpy"
    return next((kind for cls, kind in _SCALARS.items() if isinstance(node, cls)), "array")


def _check_key(key: Any, where: str) -> None:
    if not isinstance(key, (str, int)) or isinstance(key, bool):
        raise InvalidTensorError(
            f"dict keys must be str or int, got {type(key).__name__} {key!r}" + (f" under {where!r}" if where else "")
        )
    if key == "":
        raise InvalidTensorError("tensor names must not be empty" + (f" (under {where!r})" if where else ""))
    if isinstance(key, int) and not -(2**63) <= key < 2**63:
        raise InvalidTensorError("int dict keys must fit in 64 bits" + (f" (under {where!r})" if where else ""))


def _items(node: Any) -> list[Any]:
    if _is_dataclass(node):
        return [getattr(node, f.name) for f in dataclasses.fields(node)]
    return list(node)


def _children(node: Any) -> list[tuple[str | int, Any]]:
    """A sequence's children with their path components: field names for namedtuples and
    dataclasses (``opt_state/mu``), indices for lists and tuples."""
    if _is_dataclass(node):
        return [(f.name, getattr(node, f.name)) for f in dataclasses.fields(node)]
    if _is_namedtuple(type(node)):
        return list(zip(type(node)._fields, node, strict=True))
    return list(enumerate(node))


def _is_dataclass(node: Any) -> bool:
    # a Slice is a leaf: one block of the tensor its path names
    return dataclasses.is_dataclass(node) and not isinstance(node, (type, Slice))


def _is_namedtuple(cls: type) -> bool:
    return issubclass(cls, tuple) and isinstance(getattr(cls, "_fields", None), tuple)


def _is_container(node: Any) -> bool:
    return isinstance(node, (Mapping, list, tuple)) or _is_dataclass(node)


def _qualified(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


# ---- reading: the record and the tensors back into the tree ----


def parse_record(raw: Any, where: str, tensors: int | None = None) -> Any:
    """The root node of a structure record (the string tensor's value), validated for
    shape, not yet against the tensors. ``tensors``, the number of tensors beside it, bounds
    its size (parsing JSON takes many times its size in memory). Raises ``CorruptCheckpointError``."""

    def corrupt(why: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(f"damaged structure record: {why}", path=where, tensor=STRUCTURE_KEY)

    if not isinstance(raw, np.ndarray) or raw.shape != () or not isinstance(raw.item(), bytes):
        raise corrupt("not a single string")
    data = raw.item()
    limit = MAX_RECORD_BYTES if tensors is None else min(MAX_RECORD_BYTES, _RECORD_BASE + _RECORD_PER_TENSOR * tensors)
    if len(data) > limit:
        raise corrupt(f"{len(data)} bytes, more than the {limit} allowed beside {tensors} tensors")
    try:
        record = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise corrupt(f"not JSON ({e})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or "root" not in record:
        raise corrupt("not a ckptlib structure record")
    version = record.get("version")
    if version not in (VERSION, OBJECT_GRAPH_VERSION):
        raise corrupt(f"version {version!r}; this ckptlib reads versions {VERSION} and {OBJECT_GRAPH_VERSION}")
    root = record["root"]
    if (version == OBJECT_GRAPH_VERSION) != (isinstance(root, list) and root[:1] == ["object_graph"]):
        raise corrupt(f"a version {version} record with {'another' if version == VERSION else 'no'} object graph root")
    return root


def unflatten(root: Any, values: Mapping[str, np.ndarray], where: str) -> Any:
    """The tree the record's ``root`` describes, its leaves taken from ``values`` (every
    tensor, by name). Raises ``CorruptCheckpointError`` when record and tensors disagree."""
    built = _Builder(values, where)
    tree = built.node(root, "", 0)
    extra = sorted(set(values) - built.used)
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        warnings.warn(
            f"{where}: {len(extra)} tensor(s) are not in the checkpoint's structure record and were left "
            f"out of the restored tree: {shown} (load_checkpoint() reads every tensor by name)",
            stacklevel=3,
        )
    return tree


class _Builder:
    def __init__(self, values: Mapping[str, np.ndarray], where: str):
        self.values = values
        self.where = where
        self.used: set[str] = set()
        self.kinds: dict[str, str] | None = None  # collect leaf kinds instead of building ...
        self.stored: Collection[str] = ()  # ... of these tensors
        self.made_types = 0
        self.names = _PLAIN
        self.added: set[str] = set()  # tensors a ckptlib object graph added beside the leaves

    def corrupt(self, why: str, name: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(f"damaged structure record: {why}", path=self.where, tensor=name or None)

    def node(self, node: Any, name: str, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise self.corrupt(f"nested more than {MAX_DEPTH} levels deep", name)
        if isinstance(node, str):
            return None if node == "none" else self.leaf(node, name)
        if not isinstance(node, list) or not node or not isinstance(node[0], str):
            raise self.corrupt(f"unknown node {str(node)[:80]}", name)
        kind, *parts = node
        if kind == "object_graph" and len(parts) == 1 and depth == 0 and self.names is _PLAIN:
            self.names = _OBJECT  # leaves are named by their object-graph keys
            tree = self.node(parts[0], name, 1)
            self.used.add(OBJECT_GRAPH_KEY)  # written beside the tree's leaves, not of the tree
            if SAVE_COUNTER_KEY not in self.used:
                self.used.add(SAVE_COUNTER_KEY)
                self.added.add(SAVE_COUNTER_KEY)
            return tree
        if kind == "dict" and len(parts) == 2:
            keys, children = self.sequence(parts[0], name), self.sequence(parts[1], name)
            if len(keys) != len(children) or len(set(map(repr, keys))) != len(keys):
                raise self.corrupt("dict keys do not match its values", name)
            for key in keys:
                if not isinstance(key, (str, int)) or isinstance(key, bool) or key == "":
                    raise self.corrupt(f"bad dict key {key!r}", name)
            return {k: self.node(c, self.names.join(name, k), depth + 1) for k, c in zip(keys, children, strict=True)}
        if kind in ("list", "tuple") and len(parts) == 1:
            items = [
                self.node(c, self.names.join(name, i), depth + 1) for i, c in enumerate(self.sequence(parts[0], name))
            ]
            return items if kind == "list" else tuple(items)
        if kind in ("namedtuple", "dataclass") and len(parts) == 3:
            qualified, fields, children = parts[0], self.sequence(parts[1], name), self.sequence(parts[2], name)
            if not isinstance(qualified, str) or len(fields) != len(children):
                raise self.corrupt(f"bad {kind}", name)
            if not all(isinstance(f, str) and f.isidentifier() and not keyword.iskeyword(f) for f in fields):
                raise self.corrupt(f"bad {kind} field names", name)
            if len(set(fields)) != len(fields):
                raise self.corrupt(f"repeated {kind} field names", name)
            items = [self.node(c, self.names.join(name, f), depth + 1) for f, c in zip(fields, children, strict=True)]
            if self.kinds is not None:
                return None
            if kind == "dataclass":
                return _dataclass(qualified, tuple(fields), items)
            cls = _find_class(qualified)
            if cls is None or not _is_namedtuple(cls) or getattr(cls, "_fields", None) != tuple(fields):
                self.made_types += 1
                if self.made_types > _MAX_MADE_TYPES:
                    raise self.corrupt(f"more than {_MAX_MADE_TYPES} namedtuple types not imported here", name)
                try:
                    cls = _made_namedtuple(qualified.rpartition(".")[2].rpartition(":")[2], tuple(fields))
                except ValueError as e:  # names namedtuple refuses (a leading underscore)
                    raise self.corrupt(f"namedtuple {qualified}: {e}", name) from None
            return tuple.__new__(cls, items)  # not cls(...): no code of the class runs
        raise self.corrupt(f"unknown node {kind!r}", name)

    def sequence(self, items: Any, name: str) -> list[Any]:
        if not isinstance(items, list):
            raise self.corrupt("a list was expected", name)
        return items

    def leaf(self, kind: str, name: str) -> Any:
        name = self.names.tensor(name)
        if kind not in _LEAF_KINDS:
            raise self.corrupt(f"unknown leaf kind {kind!r}", name)
        if name in self.used:
            raise self.corrupt("two leaves of the record name the same tensor", name)
        self.used.add(name)
        if self.kinds is not None:
            if name not in self.stored:
                raise self.corrupt("the record names a tensor the checkpoint lacks", name)
            self.kinds[name] = kind
            return None
        if name not in self.values:
            raise self.corrupt("the record names a tensor the checkpoint lacks", name)
        return leaf_value(kind, self.values[name], name, self.where)


def leaf_value(kind: str, value: np.ndarray, name: str, where: str) -> Any:
    """The leaf a record's ``kind`` says ``value`` (the tensor ``name``) stands for."""
    if kind == "array":
        return value
    if value.shape != () or not _fits(kind, value.dtype):
        raise CorruptCheckpointError(
            f"damaged structure record: a {kind} leaf, but the tensor is {value.dtype} of shape {list(value.shape)}",
            path=where,
            tensor=name,
        )
    item: Any = value[()]
    if kind == "numpy":
        return item
    if kind == "str":
        try:
            return item.decode("utf-8")
        except UnicodeDecodeError:
            raise CorruptCheckpointError("a str leaf that is not UTF-8", path=where, tensor=name) from None
    return _PYTHON[kind](item)


def leaf_kinds(root: Any, stored: Collection[str], where: str) -> dict[str, str]:
    """``{tensor name: leaf kind}`` for every leaf of a record's ``root``, validated as
    ``unflatten`` does but for whether each tensor's dtype fits its kind (``leaf_value`` checks that)."""
    builder = _Builder({}, where)
    builder.kinds = {}
    builder.stored = stored
    builder.node(root, "", 0)
    return builder.kinds


def names_objects(root: Any) -> bool:
    """Whether a record's ``root`` names its leaves by object-graph keys (saved with
    ``object_graph=True``): ``target_leaves`` and ``rebuild`` must then be told so."""
    return isinstance(root, list) and root[:1] == ["object_graph"]


def tree_path_of(key: str) -> str:
    """The tree path an object-graph key stands for (``"a/k..w.Sx/.ATTRIBUTES/VARIABLE_VALUE"``
    -> ``"a/k.w/x"``, each component unescaped), for messages; other keys as they are."""
    suffix = _OBJECT.suffix
    if not key.endswith(suffix):
        return key
    try:
        return "/".join(unescape_local_name(part) for part in key[: -len(suffix)].split("/"))
    except ValueError:
        return key


def added_tensors(root: Any, kinds: Collection[str]) -> set[str]:
    """The tensors ckptlib wrote beside the leaves of a record's ``root`` (the object graph
    and TF's save counter, unless the tree had its own): none of a restore target's business.
    ``kinds``: ``leaf_kinds`` of the record."""
    if not names_objects(root):
        return set()
    return {OBJECT_GRAPH_KEY} | ({SAVE_COUNTER_KEY} - set(kinds))


_PYTHON: dict[str, Callable[[Any], Any]] = {"bool": bool, "int": int, "float": float, "complex": complex}
_PYTHON["bytes"] = bytes


def _fits(kind: str, dtype: np.dtype) -> bool:
    if kind == "numpy":
        return dtype.kind != "O"
    if kind in ("str", "bytes"):
        return dtype.kind == "O"
    return dtype.kind in {"bool": "b", "int": "iu", "float": "f", "complex": "c"}[kind]


def _find_class(qualified: str) -> type | None:
    """The class named ``module:QualName`` if its module is already imported. Looks only in
    namespaces' dicts: no import, no module ``__getattr__``, no code from the file runs."""
    module_name, _, qualname = qualified.partition(":")
    namespace: Any = sys.modules.get(module_name)
    for part in qualname.split("."):
        if namespace is None:
            return None
        try:
            namespace = vars(namespace).get(part)
        except TypeError:
            return None
    return namespace if isinstance(namespace, type) else None


@functools.lru_cache(maxsize=256)
def _made_namedtuple(typename: str, fields: tuple[str, ...]) -> type:
    if not typename.isidentifier() or keyword.iskeyword(typename):
        typename = "Restored"
    return collections.namedtuple(typename, fields)  # type: ignore[misc]


def _dataclass(qualified: str, fields: tuple[str, ...], items: list[Any]) -> Any:
    cls = _find_class(qualified)
    values = dict(zip(fields, items, strict=True))
    if cls is None or not dataclasses.is_dataclass(cls) or tuple(f.name for f in dataclasses.fields(cls)) != fields:
        warnings.warn(
            f"dataclass {qualified} is not imported (or has other fields now): restored as a dict",
            stacklevel=5,
        )
        return values
    try:
        made = object.__new__(cls)  # not cls(...): neither __init__ nor __post_init__ runs
    except TypeError:
        warnings.warn(f"dataclass {qualified} cannot be made without its constructor: restored as a dict", stacklevel=5)
        return values
    for field, value in values.items():
        object.__setattr__(made, field, value)  # frozen and slotted dataclasses too
    return made


# ---- restore targets: the leaves of a tree to fill, and the tree rebuilt around new leaves ----


def target_leaves(tree: Any, *, object_graph: bool = False) -> dict[str, Any]:
    """``{name: leaf}`` for every leaf of a restore target, named as ``tensors_of`` names
    them (by object-graph key with ``object_graph``); ``None`` leaves included (placeholders,
    filled if the checkpoint has a tensor there). Two leaves of one name raise
    ``InvalidStructureError``."""
    names = _OBJECT if object_graph else _PLAIN
    leaves: dict[str, Any] = {}
    for path, leaf in _target_leaves(tree, "", 0, names):
        name = names.tensor(path)
        if name in leaves:
            raise InvalidStructureError(f"two targets of the restore have the same name {name!r}")
        leaves[name] = leaf
    return leaves


def _target_leaves(node: Any, name: str, depth: int, names: _Names) -> Iterator[tuple[str, Any]]:
    if depth > MAX_DEPTH:
        raise InvalidStructureError(f"the restore target is nested more than {MAX_DEPTH} levels deep at {name!r}")
    if isinstance(node, Mapping):
        for key, child in node.items():
            yield from _target_leaves(child, names.join(name, key), depth + 1, names)
    elif isinstance(node, (list, tuple)) or _is_dataclass(node):
        for key, child in _children(node):
            yield from _target_leaves(child, names.join(name, key), depth + 1, names)
    else:
        yield name, node


def is_container(node: Any) -> bool:
    """Whether ``node`` can be the root of a tree to save or restore into."""
    return _is_container(node)


def rebuild(tree: Any, replace: Callable[[str, Any], Any], *, object_graph: bool = False) -> Any:
    """``tree`` with each leaf swapped for ``replace(name, leaf)`` where that differs:
    dicts, lists and mutable dataclasses are updated in place, tuples, namedtuples, frozen
    dataclasses and read-only mappings are rebuilt (or returned as they were, if unchanged)."""
    return _rebuild(tree, "", replace, _OBJECT if object_graph else _PLAIN)


def _rebuild(node: Any, name: str, replace: Callable[[str, Any], Any], names: _Names) -> Any:
    if isinstance(node, Mapping):
        new = {k: _rebuild(v, names.join(name, k), replace, names) for k, v in node.items()}
        return _update(node, new)
    if isinstance(node, (list, tuple)) or _is_dataclass(node):
        old = _items(node)
        new_items = [_rebuild(v, names.join(name, k), replace, names) for k, v in _children(node)]
        if all(a is b for a, b in zip(old, new_items, strict=True)):
            return node
        if isinstance(node, list):
            node[:] = new_items
            return node
        if isinstance(node, tuple):
            return tuple.__new__(type(node), new_items)  # a namedtuple or other subclass, constructor unrun
        changed = {f.name: v for f, v in zip(dataclasses.fields(node), new_items, strict=True)}
        target = node if not type(node).__dataclass_params__.frozen else _shallow_copy(node)  # type: ignore[attr-defined]
        for field, value in changed.items():
            object.__setattr__(target, field, value)
        return target
    return replace(names.tensor(name), node)


def _update(node: Mapping[Any, Any], new: dict[Any, Any]) -> Any:
    if all(node[k] is v for k, v in new.items()):
        return node
    if isinstance(node, MutableMapping):
        node.update(new)
        return node
    try:
        return type(node)(new)  # type: ignore[call-arg]
    except TypeError:
        return new


def _shallow_copy(node: Any) -> Any:
    cls: Any = type(node)
    made = cls.__new__(cls)
    for field in dataclasses.fields(node):
        object.__setattr__(made, field.name, getattr(node, field.name))
    return made
