"""JAX pytrees (flax train states, optax states, plain dicts of arrays) <-> checkpoints.

The same three verbs as ``ckptlib.torch`` and ``ckptlib.keras``::

    import ckptlib, ckptlib.jax
    ckptlib.save(ckptlib.jax.state(train_state), "runs/exp/ckpt-7")      # or a Saver / CheckpointManager
    train_state = ckptlib.jax.restore("runs/exp", train_state)          # same structure, jax arrays
    tree = ckptlib.jax.load("runs/exp/ckpt-7")                           # nested dicts of jax arrays

Tensors are named by the pytree's key paths: ``step``, ``params/Dense_0/kernel``,
``opt_state/0/mu/params/Dense_0/kernel``. Fields that are not pytree nodes (a flax
``TrainState``'s ``apply_fn`` and ``tx``) are not saved; ``restore`` keeps the target's.
Typed PRNG keys (``jax.random.key``) are saved as their key data (uint32) and restored as
keys of the target's implementation. A ``flax.nnx`` model or optimizer goes through its
state: ``state(nnx.state(model))``, then ``nnx.update(model, restore(path, nnx.state(model)))``.
Nothing becomes a jax array that JAX cannot hold exactly: string tensors, and 64-bit ones
(int64, uint64, float64, complex128) while ``jax_enable_x64`` is off (JAX's default, under
which it would narrow them to 32 bits), stay numpy arrays.
JAX is imported only when one of these functions runs.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import numpy as np

import ckptlib
from ckptlib.errors import InvalidStructureError

__all__ = ["load", "restore", "state"]


def state(tree: Any) -> dict[str, Any]:
    """The savable form of a pytree: nested dicts keyed by its key paths, its leaves as they are.

    Dict keys, attribute names (dataclasses, namedtuples, flax structs) and sequence
    indices each become one path component (as ``str``). Raises ``InvalidStructureError``
    when two parts of the pytree would get the same name, or for a single leaf.
    """
    leaves_with_path, _ = _tree_util().tree_flatten_with_path(tree)
    out: dict[str, Any] = {}
    for path, leaf in leaves_with_path:
        names = _names(path)
        if not names:
            raise InvalidStructureError(f"state() takes a pytree of arrays, got a single {type(tree).__name__}")
        _insert(out, names, _savable(leaf))
    return out


def restore(save_path: str | os.PathLike[str], target: Any, *, strict: bool = True) -> Any:
    """A new pytree of ``target``'s structure filled from a checkpoint (prefix, directory or file).

    Each array leaf (jax or numpy array, numpy scalar) becomes a jax array with the target
    leaf's dtype and shape; a jax leaf keeps its sharding, the others go to the default
    device. A leaf whose dtype JAX cannot hold (64-bit while ``jax_enable_x64`` is off)
    comes back as a numpy array of that dtype instead of being narrowed. Python
    scalars keep their type; non-pytree fields (``apply_fn``, ``tx``) are the target's own.
    The checkpoint must hold a tensor of the same shape and dtype for every leaf, and
    (``strict``) nothing else; with ``strict=False`` a leaf it lacks keeps the target's
    value (numpy ones copied into a jax array like the rest). Every tensor is read and
    verified, and every leaf checked, before anything is built: a damaged checkpoint
    (``CorruptCheckpointError``) or a mismatch (``RestoreMismatchError`` naming each path)
    raises. ``target`` itself is never written to, numpy leaves included.
    """
    tree_util = _tree_util()
    leaves_with_path, treedef = tree_util.tree_flatten_with_path(target)
    into: dict[str, Any] = {}
    for path, leaf in leaves_with_path:
        names = _names(path)
        if not names:
            raise InvalidStructureError(f"restore() takes a pytree of arrays, got a single {type(target).__name__}")
        savable = _savable(leaf)
        _insert(into, names, _Slot(savable) if _is_array(savable) else savable)
    report = ckptlib.restore(save_path, into=into, strict=strict)
    restored = [_like(leaf, _lookup(report.tree, _names(path))) for path, leaf in leaves_with_path]
    return tree_util.tree_unflatten(treedef, restored)


def load(save_path: str | os.PathLike[str]) -> Any:
    """The whole checkpoint as saved (nested dicts for trees saved from ``state``), with
    every numeric numpy array moved to the default device as a jax array of its dtype.

    What JAX cannot hold exactly stays a numpy array: string tensors (object arrays of
    ``bytes``, such as TensorFlow's ``_CHECKPOINTABLE_OBJECT_GRAPH``) and, while
    ``jax_enable_x64`` is off (JAX's default), 64-bit tensors (int64, uint64, float64,
    complex128), which JAX would silently narrow to 32 bits. Turn x64 on
    (``jax.config.update("jax_enable_x64", True)``) to get those as jax arrays too.
    """
    tree = ckptlib.restore(save_path)
    return _tree_util().tree_map(lambda leaf: _to_jax(leaf) if isinstance(leaf, np.ndarray) else leaf, tree)


class _Slot:
    """What the core restore gets in place of an array leaf: the leaf's shape and dtype, for
    its checks, and a ``copy_`` that keeps the checked value, so no leaf of the caller's is
    ever filled in place."""

    def __init__(self, leaf: Any):
        self.shape = leaf.shape
        self.dtype = leaf.dtype
        self.value: np.ndarray | None = None

    def copy_(self, value: np.ndarray) -> None:
        self.value = value


def _is_array(leaf: Any) -> bool:
    return hasattr(leaf, "shape") and hasattr(leaf, "dtype") and not isinstance(leaf, (str, bytes))


def _jax_holds(dtype: np.dtype) -> bool:
    """Whether JAX, as configured now, keeps this dtype as it is (not strings; not 64-bit
    types while ``jax_enable_x64`` is off, which it would narrow)."""
    if dtype.kind in "OSU":
        return False
    jax = importlib.import_module("jax")
    try:
        return bool(jax.dtypes.canonicalize_dtype(dtype) == dtype)
    except TypeError:
        return False


def _to_jax(array: np.ndarray, sharding: Any = None) -> Any:
    """``array`` as a jax array (on ``sharding``, else the default device), or a numpy copy
    where JAX cannot hold its dtype exactly (a copy: the core's arrays are views of one
    buffer holding every tensor read, which one small leaf would otherwise keep alive)."""
    if not _jax_holds(array.dtype):
        return array.copy()
    return importlib.import_module("jax").device_put(array, sharding)


def _tree_util() -> Any:
    return importlib.import_module("jax.tree_util")


def _is_key(leaf: Any) -> bool:
    """A typed PRNG key array (``jax.random.key``), which has no numpy form of its own."""
    jax = importlib.import_module("jax")
    return isinstance(leaf, jax.Array) and jax.numpy.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _savable(leaf: Any) -> Any:
    return importlib.import_module("jax.random").key_data(leaf) if _is_key(leaf) else leaf


def _like(target: Any, restored: Any) -> Any:
    """The restored leaf in the target's form: a jax array on the target's sharding (key data
    wrapped back into a typed key), or a numpy array where JAX cannot hold the dtype."""
    if not isinstance(restored, _Slot):
        return restored  # Python scalars and other values the core replaced itself
    jax = importlib.import_module("jax")
    is_jax = isinstance(target, jax.Array)
    if restored.value is None:  # absent from the checkpoint (strict=False): the target's own value
        if is_jax:
            return target
        value = np.array(target)
    else:
        value = restored.value
    if not is_jax:
        return _to_jax(value)
    if not _is_key(target):
        return _to_jax(value, target.sharding)
    random = importlib.import_module("jax.random")
    data = _to_jax(value, random.key_data(target).sharding)
    return random.wrap_key_data(data, impl=random.key_impl(target))


def _insert(tree: dict[str, Any], names: tuple[str, ...], leaf: Any) -> None:
    node = tree
    for depth, name in enumerate(names[:-1]):
        node = node.setdefault(name, {})
        if not isinstance(node, dict):
            raise InvalidStructureError(f"{'/'.join(names[: depth + 1])}: a leaf and a subtree have this name")
    if names[-1] in node:
        raise InvalidStructureError(f"{'/'.join(names)}: two parts of the pytree have this name")
    node[names[-1]] = leaf


def _names(path: tuple[Any, ...]) -> tuple[str, ...]:
    """``(GetAttrKey('params'), DictKey('Dense_0'), SequenceKey(0))`` -> ``('params', 'Dense_0', '0')``."""
    return tuple(str(_component(key)) for key in path)


def _component(key: Any) -> object:
    for attribute in ("key", "name", "idx"):  # DictKey/FlattenedIndexKey, GetAttrKey, SequenceKey
        if hasattr(key, attribute):
            return getattr(key, attribute)
    return key


def _lookup(tree: Any, names: tuple[str, ...]) -> Any:
    for name in names:
        tree = tree[name]
    return tree
