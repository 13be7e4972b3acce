"""PyTorch training state in one checkpoint: ``state``, ``restore`` and ``load``.

::

    manager = ckptlib.CheckpointManager("runs/exp", max_to_keep=3)
    manager.save(ckptlib.torch.state(model=model, optimizer=opt, scheduler=sched, step=step, rng=True))
    ...
    tree = ckptlib.torch.restore("runs/exp", model=model, optimizer=opt, scheduler=sched, rng=True)
    step = tree["step"]

``state`` gathers what resuming needs into one tree (``model``, ``optimizer``, ``scheduler``,
``scaler``, ``step``, ``rng`` and any extra values, only the keys given); ``ckptlib.save``,
``Saver`` or ``CheckpointManager`` write it. ``restore`` loads such a checkpoint back into the
live objects, all or nothing; ``load`` returns it with torch tensors. torch is imported only
by this module, which ``import ckptlib`` does not import.
"""

from __future__ import annotations

import functools
import os
import random
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

import ckptlib
from ckptlib.errors import DtypeMismatchError, InvalidTensorError, RestoreMismatchError, ShapeMismatchError
from ckptlib.frameworks import torch_from_numpy
from ckptlib.tree import rebuild, target_leaves

__all__ = ["load", "restore", "state"]

# Optimizer state entries shaped like their parameter in torch's own optimizers: a stored one
# of another shape would only fail at the next ``optimizer.step()``, so it is refused first.
_PARAM_SHAPED = frozenset(
    {"exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "square_avg", "acc_delta", "sum", "ax", "prev"}
)


def state(
    *,
    model: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    step: int | None = None,
    rng: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """One savable tree of what resuming training needs; only the keys given appear.

    ``model``, ``optimizer``, ``scheduler`` (an LR scheduler) and ``scaler``
    (``torch.amp.GradScaler``) contribute their ``state_dict()``; ``step`` is stored as is;
    ``rng=True`` adds the random number generators' states (torch CPU, every CUDA device once
    CUDA is initialised, Python's ``random`` and numpy's global generator); ``extra`` are
    further values of any kind ``ckptlib.save`` takes. The tensors are the live ones, not
    copies: save the tree before the next training step changes them.
    """
    tree: dict[str, Any] = {}
    if model is not None:
        tree["model"] = model.state_dict()
    if optimizer is not None:
        tree["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        tree["scheduler"] = scheduler.state_dict()
    if scaler is not None:
        tree["scaler"] = scaler.state_dict()
    if step is not None:
        tree["step"] = step
    if rng:
        tree["rng"] = _rng_state()
    tree.update(extra)
    return tree


def restore(
    save_path: str | os.PathLike[str],
    *,
    model: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    rng: bool = False,
    strict: bool = True,
    mmap: bool = False,
) -> dict[str, Any]:
    """Load a checkpoint written from ``state(...)`` into the live objects given; returns the
    whole stored tree with torch tensors (read ``tree["step"]`` and extra values there), its
    loaded parts as the live objects now hold them, the rest in memory of its own.

    ``save_path`` is a prefix or a directory (its latest checkpoint). All or nothing: every
    tensor is read and its checksum verified, and every model tensor's shape and dtype,
    the optimizer's parameter groups and state shapes, the scaler and the RNG states are
    checked against the live objects, before the first of them is changed. Model tensors are
    copied into the model's own (on its device); optimizer state goes through
    ``load_state_dict``, which moves it to its parameters' device and dtype.

    ``strict`` (default): the model's keys must match the stored ones exactly and every
    object given must be in the checkpoint; with ``strict=False`` missing and unexpected
    model keys are left alone and objects the checkpoint lacks are skipped.

    ``mmap=True`` reads through copy-on-write views of the memory-mapped data files instead of
    a private buffer (one copy of every byte fewer, about twice as fast); nothing returned or
    loaded keeps them, but while the call runs, a data file truncated by another process
    kills this one with SIGBUS (ckptlib's savers never truncate a checkpoint's files).

    Raises ``ckptlib.RestoreMismatchError`` (``ShapeMismatchError``, ``DtypeMismatchError``)
    naming every misfit by its path in the tree (``model/fc.weight``), and the errors of
    ``ckptlib.restore`` (``CheckpointNotFoundError``, ``ChecksumMismatchError``, ...).
    """
    stored = _to_torch(ckptlib.restore(save_path, mmap=mmap))
    if not isinstance(stored, Mapping):
        raise RestoreMismatchError("the checkpoint does not hold a state(...) tree", path=os.fspath(save_path))
    given = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler, "rng": rng or None}
    wanted = {key: live for key, live in given.items() if live is not None}
    problems: list[str] = []
    loaders = []
    for key, live in wanted.items():
        if key not in stored:
            problems += [f"{key}: missing from the checkpoint"] if strict else []
            continue
        check, load_part = _PARTS[key]
        problems += check(live, stored[key], strict)
        loaders.append(functools.partial(load_part, live, stored[key], strict))
    if problems:
        raise _mismatch(problems, os.fspath(save_path))
    for load_part in loaders:
        load_part()
    live = state(**{key: obj for key, obj in wanted.items() if key in stored})
    return {key: live[key] if key in live else _owning(value) for key, value in stored.items()}


def load(save_path: str | os.PathLike[str], *, mmap: bool = False) -> Any:
    """The stored tree, array leaves as CPU torch tensors (bfloat16 and float8 as torch's own
    dtypes); string tensors and dtypes torch lacks (int4, ...) stay numpy arrays.

    ``save_path`` is a prefix or a directory (its latest checkpoint). The tensors share the
    memory ``ckptlib.restore`` read them into (``mmap=True``: copy-on-write views of the
    memory-mapped files, with the risks ``ckptlib.load_checkpoint`` describes).
    """
    return _to_torch(ckptlib.restore(save_path, mmap=mmap))


# -- numpy -> torch ----------------------------------------------------------------------------
def _tensor(array: np.ndarray) -> torch.Tensor | np.ndarray:
    """A torch tensor sharing ``array``'s memory, or ``array`` itself where torch has no dtype."""
    try:
        return torch_from_numpy(array)
    except (InvalidTensorError, TypeError):  # strings, int4 and other dtypes torch lacks
        return array


def _to_torch(tree: Any) -> Any:
    """``tree`` (fresh from ``ckptlib.restore``) with every numpy array leaf a torch tensor."""
    return rebuild(tree, lambda _, leaf: _tensor(leaf) if isinstance(leaf, np.ndarray) else leaf)


def _owning(tree: Any) -> Any:
    """``tree`` with every array leaf copied: fresh from ``ckptlib.restore``, each views the
    buffer the whole checkpoint was read into, and would keep all of it."""

    def own(_: str, leaf: Any) -> Any:
        if isinstance(leaf, torch.Tensor):
            return leaf.clone()
        if isinstance(leaf, np.ndarray):
            return leaf.copy()
        return leaf

    return rebuild(tree, own)


# -- the parts: check against the live object, then load ---------------------------------------
def _check_model(model: torch.nn.Module, stored: Any, strict: bool) -> list[str]:
    if not isinstance(stored, Mapping):
        return [f"model: the checkpoint holds a {type(stored).__name__}, not a state_dict"]
    live = model.state_dict()
    problems = []
    if strict:
        problems += [f"model/{key}: missing from the checkpoint" for key in live if key not in stored]
        problems += [f"model/{key}: in the checkpoint but not in the model" for key in stored if key not in live]
    for key in (key for key in live if key in stored):
        problems += _tensor_fit(f"model/{key}", live[key], stored[key])
    return problems


def _load_model(model: torch.nn.Module, stored: Mapping[str, Any], strict: bool) -> None:
    model.load_state_dict(stored, strict=strict)


def _check_optimizer(optimizer: torch.optim.Optimizer, stored: Any, strict: bool) -> list[str]:
    if not isinstance(stored, Mapping) or not {"state", "param_groups"} <= stored.keys():
        return ["optimizer: the checkpoint holds no optimizer state_dict (state, param_groups)"]
    sizes = [len(group["params"]) for group in optimizer.param_groups]
    stored_sizes = [len(group.get("params", ())) for group in stored["param_groups"]]
    if sizes != stored_sizes:
        return [f"optimizer/param_groups: group sizes {sizes} in the optimizer, {stored_sizes} in the checkpoint"]
    params = {
        stored_id: param
        for stored_group, group in zip(stored["param_groups"], optimizer.param_groups, strict=True)
        for stored_id, param in zip(stored_group["params"], group["params"], strict=True)
    }
    problems = []
    for param_id, entries in stored["state"].items():
        if param_id not in params:
            problems.append(f"optimizer/state/{param_id}: no parameter of the optimizer has this id")
            continue
        for key, value in entries.items() if isinstance(entries, Mapping) else ():
            if key in _PARAM_SHAPED and isinstance(value, torch.Tensor):
                problems += _shape_fit(f"optimizer/state/{param_id}/{key}", params[param_id].shape, value.shape)
    return problems


def _load_optimizer(optimizer: torch.optim.Optimizer, stored: Mapping[str, Any], strict: bool) -> None:
    optimizer.load_state_dict(dict(stored))
    # Where a parameter's device and dtype match already, torch keeps the tensor given: a view
    # of the buffer the whole checkpoint was read into. A copy lets that buffer go.
    given = {id(leaf) for leaf in target_leaves(stored["state"]).values()}
    for entries in optimizer.state.values():
        for key, value in entries.items():
            if id(value) in given:
                entries[key] = value.clone()


def _check_scheduler(scheduler: Any, stored: Any, strict: bool) -> list[str]:
    return [] if isinstance(stored, Mapping) else ["scheduler: the checkpoint holds no scheduler state_dict"]


def _load_scheduler(scheduler: Any, stored: Mapping[str, Any], strict: bool) -> None:
    scheduler.load_state_dict(dict(stored))


def _check_scaler(scaler: Any, stored: Any, strict: bool) -> list[str]:
    if not isinstance(stored, Mapping):
        return ["scaler: the checkpoint holds no GradScaler state_dict"]
    if scaler.is_enabled() and not stored:
        return ["scaler: the checkpoint's GradScaler state is empty (saved from a disabled scaler)"]
    return []


def _load_scaler(scaler: Any, stored: Mapping[str, Any], strict: bool) -> None:
    scaler.load_state_dict(dict(stored))


def _check_rng(_: bool, stored: Any, strict: bool) -> list[str]:
    try:
        _rng_values(stored)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        return [f"rng: not the random number generator states state(rng=True) saves ({e})"]
    return []


def _load_rng(_: bool, stored: Mapping[str, Any], strict: bool) -> None:
    cpu, cuda, python, numpy_state = _rng_values(stored)
    torch.set_rng_state(cpu)
    random.setstate(python)
    np.random.set_state(numpy_state)
    if not cuda:
        return
    if not torch.cuda.is_available():
        warnings.warn("the checkpoint holds CUDA RNG states, but CUDA is not available: not restored", stacklevel=3)
        return
    for device, cuda_state in enumerate(cuda[: torch.cuda.device_count()]):
        torch.cuda.set_rng_state(cuda_state, device)


_PARTS: dict[str, tuple[Callable[[Any, Any, bool], list[str]], Callable[[Any, Any, bool], None]]] = {
    "model": (_check_model, _load_model),
    "optimizer": (_check_optimizer, _load_optimizer),
    "scheduler": (_check_scheduler, _load_scheduler),
    "scaler": (_check_scaler, _load_scaler),
    "rng": (_check_rng, _load_rng),
}


def _tensor_fit(path: str, live: Any, stored: Any) -> list[str]:
    if not isinstance(live, torch.Tensor):
        return []  # extra state (``get_extra_state``) is the module's to check
    if not isinstance(stored, torch.Tensor):
        return [f"{path}: the model has a tensor, the checkpoint a {type(stored).__name__}"]
    problems = _shape_fit(path, live.shape, stored.shape)
    if live.dtype != stored.dtype:
        problems.append(f"{path}: target dtype {_name(live.dtype)}, checkpoint has {_name(stored.dtype)}")
    if any(stride == 0 and size > 1 for stride, size in zip(live.stride(), live.shape, strict=True)):
        problems.append(f"{path}: the target's elements share memory (expanded): it cannot be written in place")
    return problems


def _shape_fit(path: str, live: torch.Size, stored: torch.Size) -> list[str]:
    if live == stored:
        return []
    return [f"{path}: target shape {list(live)}, checkpoint has {list(stored)}"]


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _mismatch(problems: list[str], path: str) -> RestoreMismatchError:
    """One error listing every problem, of the narrowest class that covers them all."""
    kind: type[RestoreMismatchError] = RestoreMismatchError
    if all(": target shape " in p for p in problems):
        kind = ShapeMismatchError
    elif all(": target dtype " in p for p in problems):
        kind = DtypeMismatchError
    detail = "\n  ".join(problems)
    return kind(f"{len(problems)} value(s) do not fit:\n  {detail}", path=path)


# -- random number generators ------------------------------------------------------------------
def _rng_state() -> dict[str, Any]:
    """Every global generator's state, as arrays: Python's 625 words as one uint32 array, not
    625 separate ints."""
    version, words, gauss_next = random.getstate()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "state": np.array(words, np.uint32), "gauss_next": gauss_next},
        "numpy": np.random.get_state(legacy=False),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def _rng_values(stored: Mapping[str, Any]) -> tuple[torch.Tensor, list[torch.Tensor], tuple[Any, ...], dict[str, Any]]:
    """The stored states in the forms the generators take; raises on any that cannot be."""
    cpu = stored["torch"]
    expected = torch.get_rng_state()
    if not isinstance(cpu, torch.Tensor) or cpu.dtype != expected.dtype or cpu.shape != expected.shape:
        raise ValueError(f"torch's state must be {expected.numel()} uint8")
    python = stored["python"]
    words = np.asarray(python["state"], np.uint32)
    if words.shape != (625,):
        raise ValueError("Python's state must be 625 words")
    gauss_next = python["gauss_next"]
    python_state = (
        int(python["version"]),
        tuple(int(w) for w in words),
        None if gauss_next is None else float(gauss_next),
    )
    numpy_state = _numpy_rng(stored["numpy"])
    cuda = list(stored.get("cuda", ()))
    if not all(isinstance(s, torch.Tensor) and s.dtype == torch.uint8 for s in cuda):
        raise ValueError("CUDA states must be uint8 tensors")
    return cpu, cuda, python_state, numpy_state


def _numpy_rng(stored: Mapping[str, Any]) -> dict[str, Any]:
    key = np.asarray(stored["state"]["key"], np.uint32)
    if stored["bit_generator"] != "MT19937" or key.shape != (624,):
        raise ValueError("numpy's state must be MT19937's 624 words")
    return {
        "bit_generator": "MT19937",
        "state": {"key": key, "pos": int(stored["state"]["pos"])},
        "has_gauss": int(stored["has_gauss"]),
        "gauss": float(stored["gauss"]),
    }
