"""Keras 3 models and optimizers <-> checkpoints, on any backend (TensorFlow, JAX, PyTorch).

The same three verbs as ``ckptlib.torch`` and ``ckptlib.jax``::

    import ckptlib, ckptlib.keras
    ckptlib.save(ckptlib.keras.state(model=model, optimizer=optimizer, epoch=3), "runs/exp/ckpt-3")
    tree = ckptlib.keras.restore("runs/exp", model=model, optimizer=optimizer, epoch=0)
    tree = ckptlib.keras.load("runs/exp/ckpt-3")                     # numpy arrays, no Keras needed

Variables are named by their Keras path: ``model/sequential/dense/kernel``,
``optimizer/adam/iteration``, ``optimizer/adam/sequential_dense_kernel_momentum``. Keras
names layers and optimizers it was not given a name for by counting (``dense``, ``dense_1``,
...) per process, so restore into a model built the same way in a fresh process, give
layers names, or call ``keras.backend.clear_session()`` before building it again.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import ckptlib
from ckptlib.errors import InvalidStructureError

__all__ = ["load", "restore", "state"]


def state(*, model: Any = None, optimizer: Any = None, **extra: Any) -> dict[str, Any]:
    """The savable tree: ``{"model": {path: variable}, "optimizer": {path: variable}, **extra}``.

    ``model`` contributes ``model.weights`` (trainable and not: batch-norm statistics too),
    ``optimizer`` its ``variables`` (iteration count, learning rate, slots), built first for
    ``model.trainable_variables`` if it was not built yet, so that a checkpoint saved before
    training holds the slots too. Either may be left out; ``extra`` holds anything else
    ``ckptlib.save`` takes (an epoch, a seed). Raises ``InvalidStructureError`` when two
    variables share a path, or for an optimizer not built yet without its model.
    """
    tree: dict[str, Any] = {}
    if model is not None:
        tree["model"] = _by_path(model.weights, "model")
    if optimizer is not None:
        _build(optimizer, model)
        tree["optimizer"] = _by_path(optimizer.variables, "optimizer")
    tree.update(extra)
    return tree


def restore(
    save_path: str | os.PathLike[str],
    *,
    model: Any = None,
    optimizer: Any = None,
    strict: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """Assign every variable of ``model`` and ``optimizer`` from a checkpoint (prefix,
    directory or file) and return the restored tree of ``state`` (``extra`` leaves replaced).

    An optimizer that has not been built yet is built for ``model.trainable_variables``
    first (as in ``state``), so that its slots exist. The checkpoint must hold a tensor of
    the same shape and dtype for every variable and extra, and (``strict``) nothing else.
    All or nothing: every tensor is read and verified, and every variable checked, before
    the first is assigned; a damaged checkpoint (``CorruptCheckpointError``) or a mismatch
    (``RestoreMismatchError`` naming each path) leaves every variable as it was.
    """
    report = ckptlib.restore(save_path, into=state(model=model, optimizer=optimizer, **extra), strict=strict)
    tree: dict[str, Any] = report.tree
    return tree


def load(save_path: str | os.PathLike[str]) -> Any:
    """The whole checkpoint as saved, with numpy arrays: no Keras or backend needed."""
    return ckptlib.restore(save_path)


def _build(optimizer: Any, model: Any) -> None:
    """Create an optimizer's slots (zeros) for the model, as its first training step would."""
    if not optimizer.built:
        if model is None:
            raise InvalidStructureError("an optimizer not built yet needs the model too, to build it for its weights")
        optimizer.build(model.trainable_variables)


def _by_path(variables: Iterable[Any], part: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for variable in variables:
        if variable.path in out:
            raise InvalidStructureError(f"{part}/{variable.path}: two variables have this path")
        out[variable.path] = variable
    return out
