"""TensorFlow 2 objects (``tf.train.Checkpoint``) <-> checkpoints: ``state``, ``restore``, ``load``.

::

    ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer)    # Keras 3 on TF, tf.Module, ...
    manager = ckptlib.CheckpointManager("runs/exp", max_to_keep=3)
    manager.save(ckptlib.tf.state(ckpt))                           # ckpt-1, ckpt-2, ...
    ...
    ckptlib.tf.restore("runs/exp", ckpt)                           # all or nothing
    tf.train.Checkpoint(model=m2, optimizer=o2).restore(manager.latest_checkpoint).assert_consumed()

``state`` asks TensorFlow itself for what ``Checkpoint.save`` would write: every tensor by
its checkpoint key (``optimizer/_trainable_variables/0/.ATTRIBUTES/VARIABLE_VALUE`` for a
Keras 3 model's first weight, optimizer slots, ``save_counter``) and the serialized object
graph under ``_CHECKPOINTABLE_OBJECT_GRAPH``, as one flat mapping that ckptlib's ``save``,
``Saver`` and ``CheckpointManager`` write as is (no structure record), so the files are the
ones TensorFlow would have written and restore with ``tf.train.Checkpoint.restore``,
``tf.train.CheckpointManager`` and ``tf.train.load_checkpoint``. TensorFlow is imported only
by this module, which ``import ckptlib`` does not import.

The entry point into TensorFlow is ``TrackableSaver._gather_serialized_tensors``
(``tensorflow/python/checkpoint/checkpoint.py``), the step ``Checkpoint.write`` and
``Checkpoint.save`` take (through ``save_util.serialize_graph_view``) before handing the
tensors to the ``SaveV2`` op: it is private, but the most stable seam there is (the public
``write`` has no way to stop before the file), and restore feeds each object's
``_restore_from_tensors`` exactly as TF's ``MultiDeviceSaver.restore`` does. Checked against
TensorFlow 2.21.
"""

from __future__ import annotations

import collections
import os
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.python.trackable.trackable_utils import extract_local_name

import ckptlib
from ckptlib.errors import (
    CheckpointNotFoundError,
    DtypeMismatchError,
    InvalidStructureError,
    RestoreMismatchError,
    ShapeMismatchError,
    UnsupportedFeatureError,
)
from ckptlib.format.object_graph import OBJECT_GRAPH_KEY
from ckptlib.tree import STRUCTURE_KEY

__all__ = ["load", "restore", "state"]

_ALIGN = 64  # bytes: TensorFlow's allocator alignment, which its CPU kernels may assume


def state(checkpoint: Any, *, count: bool = True) -> dict[str, Any]:
    """What ``checkpoint.save`` would write, as ``{checkpoint key: tensor, ...,
    "_CHECKPOINTABLE_OBJECT_GRAPH": serialized graph (bytes)}``.

    ``checkpoint`` is a ``tf.train.Checkpoint`` or a mapping of names to trackable objects
    (wrapped in a new ``tf.train.Checkpoint(**mapping)``, whose ``save_counter`` then
    starts from 0 at every call: keep a ``Checkpoint`` to count saves). ``count`` (default)
    adds 1 to ``checkpoint.save_counter`` first, as ``Checkpoint.save`` and
    ``tf.train.CheckpointManager.save`` do, so the checkpoint holds the number of saves
    including itself; ``count=False`` is ``Checkpoint.write``'s behaviour. The values are
    numpy arrays holding the variables' values now: on CPU they share the memory of TF's
    reads, no copy, and TF copies a variable before the next update writes to it.

    Raises ``UnsupportedFeatureError`` for what TF saves in ways ckptlib does not write
    (sliced or sharded variables, registered savers such as TPU embeddings) and
    ``InvalidStructureError`` for anything but a ``Checkpoint`` or a mapping.
    """
    checkpoint = _as_checkpoint(checkpoint)
    if count:
        checkpoint.save_counter.assign_add(1)
    tensors, graph = _gather(checkpoint)
    # numpy arrays only: ckptlib writes such a mapping as TF would, without a structure record
    flat: dict[str, Any] = {key: _host(tensor) for _, by_key in tensors for key, tensor in by_key.items()}
    flat[OBJECT_GRAPH_KEY] = np.array(graph, dtype=object)
    return flat


def restore(save_path: str | os.PathLike[str], checkpoint: Any, *, strict: bool = True) -> str:
    """Assign every object of ``checkpoint`` (its ``save_counter`` too) from a checkpoint
    written by ``state`` or by TensorFlow; returns the prefix restored.

    ``save_path`` is a prefix or a directory (its latest checkpoint); ``checkpoint`` as in
    ``state``. Objects are matched by the checkpoint keys TF gives them now, as TF's own
    save and restore of an unchanged object tree do; objects must exist (build a Keras
    optimizer, e.g. ``optimizer.build(model.trainable_variables)``, before restoring its
    slots; for restore-on-create use ``tf.train.Checkpoint.restore``, which reads these
    files too). All or nothing: every object's tensors are checked for presence, shape
    and dtype, and every tensor an object takes is read and its checksum verified, before
    the first is assigned.
    ``strict`` (default): the checkpoint must hold exactly the objects' tensors (besides
    the object graph); ``strict=False`` leaves objects the checkpoint lacks as they are and
    ignores tensors no object takes.

    Each tensor is read (its checksum verified) into memory of its own, aligned as
    TensorFlow's kernels need, which its variable then takes over without a copy, as
    variables take over the tensors TF's own restore reads.

    Raises ``RestoreMismatchError`` (``ShapeMismatchError``, ``DtypeMismatchError``) naming
    every misfit by its checkpoint key, and the errors of ``ckptlib.restore``
    (``CheckpointNotFoundError``, ``ChecksumMismatchError``, ...).
    """
    path = os.fspath(save_path)
    if os.path.isdir(path):
        latest = ckptlib.latest_checkpoint(path)
        if latest is None:
            raise CheckpointNotFoundError("no checkpoint state file or no complete checkpoint listed in it", path=path)
        path = latest
    checkpoint = _as_checkpoint(checkpoint)
    checkpoint.save_counter  # noqa: B018 -- created if missing, as Checkpoint.restore does
    tensors, _ = _gather(checkpoint)
    with ckptlib.load_checkpoint(path) as reader:
        stored = set(reader.keys_list())
        if OBJECT_GRAPH_KEY not in stored:
            raise RestoreMismatchError(f"no {OBJECT_GRAPH_KEY} entry: not a TF2 object-based checkpoint", path=path)
        graph = reader.object_graph  # read (checksum verified) and checked against the keys
        assert graph is not None
        aliases = graph.aliases()  # a tensor found by another path to it, as TF's restore finds it
        problems: list[str] = []
        wanted: list[tuple[Any, dict[str, str]]] = []  # (trackable, {local name: stored key})
        skipped: list[str] = []
        taken: set[str] = set()
        for trackable, by_key in tensors:
            if trackable is None:
                continue
            source = {key: key if key in stored else aliases.get(key) for key in by_key}
            missing = [key for key, found in source.items() if found is None]
            if strict:
                problems += [f"{key}: missing from the checkpoint" for key in missing]
            for key, live in by_key.items():
                found = source[key]
                if found is not None and (problem := _misfit(key, reader.shape(found), reader.dtype(found), live)):
                    problems.append(problem)
            taken.update(found for found in source.values() if found is not None)
            if missing:  # an object the checkpoint lacks in part stays as it is
                skipped += missing
                continue
            # named as TF's MultiDeviceSaver.restore names them for _restore_from_tensors
            wanted.append((trackable, {extract_local_name(key): source[key] for key in by_key}))  # type: ignore[misc]
        if strict:
            unused = stored - taken - {OBJECT_GRAPH_KEY, STRUCTURE_KEY}
            problems += [f"{key}: in the checkpoint, but no object takes it" for key in sorted(unused)]
            if unused:
                problems.append(
                    "objects not built yet? (Keras 3 optimizers save the model's weights under their own "
                    "paths and need `optimizer.build(model.trainable_variables)` before a restore)"
                )
        if problems:
            raise _mismatch(problems, path)
        if skipped:
            shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
            warnings.warn(
                f"{path}: objects whose tensors the checkpoint lacks were left as they were: {shown}", stacklevel=2
            )
        # every tensor read (checksums verified) before the first assignment
        uses = collections.Counter(key for _, names in wanted for key in names.values())
        values = {key: _read_aligned(reader, key) for key in uses}
    for trackable, names in wanted:
        given: dict[str, Any] = {}
        for name, key in names.items():  # a tensor two objects reach (by two paths) is given to each
            uses[key] -= 1
            given[name] = _device(values[key] if uses[key] else values.pop(key))
        trackable._restore_from_tensors(given)
    return path


def load(save_path: str | os.PathLike[str]) -> Any:
    """The whole checkpoint as saved, ``{checkpoint key: numpy array}``, the object graph as
    a bytes scalar: TensorFlow is imported by this module but not used."""
    return ckptlib.restore(save_path)


# -- TensorFlow's side ------------------------------------------------------------------------
def _as_checkpoint(checkpoint: Any) -> Any:
    if isinstance(checkpoint, tf.train.Checkpoint):
        return checkpoint
    if isinstance(checkpoint, Mapping):
        return tf.train.Checkpoint(**checkpoint)
    raise InvalidStructureError(
        f"expected a tf.train.Checkpoint or a mapping of names to objects, got {type(checkpoint).__name__}"
    )


def _gather(checkpoint: Any) -> tuple[list[tuple[Any, dict[str, Any]]], bytes]:
    """``([(trackable or None, {checkpoint key: eager tensor})], serialized object graph)``
    as ``Checkpoint.write`` would save them, every deferred read (``SaveSpec``) done."""
    saver = checkpoint._saver  # TrackableSaver
    serialized, _, registered, graph = saver._gather_serialized_tensors(None)
    if any(registered.values()):
        raise UnsupportedFeatureError(f"objects with registered savers ({', '.join(registered)}) are not supported")
    out: list[tuple[Any, dict[str, Any]]] = []  # variables are not hashable
    for trackable, by_key in serialized.items():
        tensors: dict[str, Any] = {}
        for key, value in by_key.items():
            if key == OBJECT_GRAPH_KEY:
                continue
            if isinstance(value, dict):  # {slice_spec: tensor}
                if set(value) != {""}:
                    raise UnsupportedFeatureError(f"{key}: sliced (partitioned or sharded) variables are not supported")
                value = value[""]
            tensors[key] = _read(value)
        out.append((trackable, tensors))
    return out, graph.SerializeToString()


def _read(value: Any) -> Any:
    """An eager tensor for a tensor or a ``SaveSpec`` (whose ``tensor`` property reads it now)."""
    return value if tf.is_tensor(value) else value.tensor


def _host(tensor: Any) -> np.ndarray:
    """The tensor's value as a numpy array; for a CPU tensor a view of its buffer, not the
    copy ``tensor.numpy()`` makes (``EagerTensor._numpy`` is what ``numpy()`` copies)."""
    array = tensor._numpy()
    return array if isinstance(array, np.ndarray) else np.asarray(array)


def _read_aligned(reader: Any, key: str) -> np.ndarray:
    """Tensor ``key`` in fresh memory starting on an ``_ALIGN``-byte boundary."""
    dtype = reader.dtype(key)
    if dtype == np.dtype(object):
        return np.asarray(reader.get_tensor(key))
    shape = reader.shape(key)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + _ALIGN, np.uint8)
    start = -raw.ctypes.data % _ALIGN
    out = raw[start : start + nbytes].view(dtype).reshape(shape)
    return reader.read_into(key, out)


def _device(array: np.ndarray) -> Any:
    """A tensor of ``array``'s value: a view of it (DLPack) for a numeric array aligned as
    TF's kernels assume (``EIGEN_MAX_ALIGN_BYTES``), else a copy."""
    if array.dtype.kind in "iufc" and array.flags.c_contiguous and array.ctypes.data % _ALIGN == 0:
        try:
            return tf.experimental.dlpack.from_dlpack(array.__dlpack__())
        except (BufferError, TypeError, ValueError, tf.errors.OpError):  # a dtype either side lacks
            pass
    return tf.convert_to_tensor(array)


def _misfit(key: str, shape: tuple[int, ...], dtype: np.dtype, live: Any) -> str | None:
    want = live.dtype
    have = tf.string if dtype.kind in "OSU" else tf.as_dtype(dtype)
    if have != want:
        return f"{key}: target dtype {want.name}, checkpoint has {have.name}"
    if tuple(shape) != tuple(live.shape):
        return f"{key}: target shape {list(live.shape)}, checkpoint has {list(shape)}"
    return None


def _mismatch(problems: list[str], path: str) -> RestoreMismatchError:
    """The most specific error that covers every problem."""
    cls: type[RestoreMismatchError] = RestoreMismatchError
    if all(": target shape " in p for p in problems):
        cls = ShapeMismatchError
    elif all(": target dtype " in p for p in problems):
        cls = DtypeMismatchError
    return cls("; ".join(problems), path=path)
