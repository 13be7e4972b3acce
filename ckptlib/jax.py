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

    Each array leaf becomes a jax array with the target leaf's dtype, shape and sharding;
    Python scalars keep their type; non-pytree fields (``apply_fn``, ``tx``) are the
    target's own. The checkpoint must hold a tensor of the same shape and dtype for every
    leaf, and (``strict``) nothing else. Every tensor is read and verified, and every leaf
    checked, before anything is built: a damaged checkpoint (``CorruptCheckpointError``) or
    a mismatch (``RestoreMismatchError`` naming each path) raises and ``target`` is untouched.
    """
    tree_util = _tree_util()
    leaves_with_path, treedef = tree_util.tree_flatten_with_path(target)
    report = ckptlib.restore(save_path, into=state(target), strict=strict)
    restored = [_like(leaf, _lookup(report.tree, _names(path))) for path, leaf in leaves_with_path]
    return tree_util.tree_unflatten(treedef, restored)


def load(save_path: str | os.PathLike[str]) -> Any:
    """The whole checkpoint as saved (nested dicts for trees saved from ``state``), with
    every numpy array leaf moved to the default device as a jax array."""
    jnp = importlib.import_module("jax.numpy")
    tree = ckptlib.restore(save_path)
    return _tree_util().tree_map(lambda leaf: jnp.asarray(leaf) if isinstance(leaf, np.ndarray) else leaf, tree)


def _tree_util() -> Any:
    return importlib.import_module("jax.tree_util")


def _is_key(leaf: Any) -> bool:
    """A typed PRNG key array (``jax.random.key``), which has no numpy form of its own."""
    jax = importlib.import_module("jax")
    return isinstance(leaf, jax.Array) and jax.numpy.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _savable(leaf: Any) -> Any:
    return importlib.import_module("jax.random").key_data(leaf) if _is_key(leaf) else leaf


def _like(target: Any, restored: Any) -> Any:
    """The restored leaf in the target's form: key data wrapped back into a typed key."""
    if not _is_key(target):
        return restored
    random = importlib.import_module("jax.random")
    return random.wrap_key_data(restored, impl=random.key_impl(target))


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
