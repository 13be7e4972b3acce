"""Move tensors between checkpoints and other array files: ``.npz`` and ``.safetensors``.

``.npz`` files are written and read without pickle. numpy has no bfloat16, float8 or int4,
so such arrays are stored as their raw bits with the real dtype names recorded in an extra
``__ckptlib_dtypes__`` entry; string tensors become fixed-width ``bytes_`` arrays, which
cannot hold trailing NUL bytes (those are refused rather than silently cut).
``.safetensors`` goes through the ``safetensors`` package (``pip install safetensors``).
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping

import numpy as np

from ckptlib.errors import CheckpointNotFoundError, CorruptCheckpointError, InvalidTensorError, UnsupportedFeatureError
from ckptlib.format import dtypes

DTYPES_KEY = "__ckptlib_dtypes__"


def export_arrays(
    tensors: Mapping[str, np.ndarray], path: str | os.PathLike[str], dtype_names: Mapping[str, str] | None = None
) -> None:
    """Write ``{name: array}`` to ``path`` (``.npz`` or ``.safetensors``).

    ``dtype_names`` gives TensorFlow dtype names (``reader.dtype_name``); those numpy cannot
    tell apart from plain integers (``qint8``...) are recorded so that ``import_arrays``
    returns them.
    """
    path = os.fspath(path)
    quantized = {n: d for n, d in (dtype_names or {}).items() if dtypes.by_name(d).enum in dtypes.QUANTIZED}
    if path.endswith(".safetensors"):
        _save_safetensors(tensors, path, quantized)
    elif path.endswith(".npz"):
        _save_npz(tensors, path, quantized)
    else:
        raise InvalidTensorError(f"unknown array file type (want .npz or .safetensors): {path}")


def import_arrays(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read ``{name: array}`` from a ``.npz`` or ``.safetensors`` file, and the TF dtype names
    recorded for tensors whose numpy dtype does not say it (``{"q": "qint8"}``)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointNotFoundError("no such file", path=path)
    if path.endswith(".safetensors"):
        return _load_safetensors(path)
    if path.endswith(".npz"):
        return _load_npz(path)
    raise InvalidTensorError(f"unknown array file type (want .npz or .safetensors): {path}")


def _save_npz(tensors: Mapping[str, np.ndarray], path: str, quantized: Mapping[str, str]) -> None:
    arrays: dict[str, np.ndarray] = {}
    special: dict[str, str] = dict(quantized)
    for name, array in tensors.items():
        if array.dtype == object:
            items = list(array.reshape(-1))
            if any(item.endswith(b"\0") for item in items):
                raise InvalidTensorError(".npz cannot hold strings ending in NUL bytes", tensor=name)
            arrays[name] = (
                np.array(items, dtype=np.bytes_).reshape(array.shape) if items else np.empty(array.shape, dtype="S1")
            )
            special[name] = "string"
        elif array.dtype.kind == "V" or array.dtype.type.__module__.startswith("ml_dtypes"):
            arrays[name] = array.view(f"<u{array.dtype.itemsize}")
            special[name] = dtypes.lookup(dtypes.enum_for_numpy(array.dtype)).name
        else:
            arrays[name] = array
    if DTYPES_KEY in arrays:
        raise InvalidTensorError(f"the name {DTYPES_KEY} is reserved", tensor=DTYPES_KEY)
    arrays[DTYPES_KEY] = np.array(json.dumps(special))
    # Written member by member (np.savez takes names as keyword arguments, so a tensor
    # called "file" or "allow_pickle" would collide with its parameters).
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            with archive.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def _load_npz(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise CorruptCheckpointError(f"not a readable .npz file: {e}", path=path) from None
    try:
        special = json.loads(str(arrays.pop(DTYPES_KEY))) if DTYPES_KEY in arrays else {}
        if not isinstance(special, dict) or not all(isinstance(v, str) for v in special.values()):
            raise ValueError("not a mapping of names to dtype names")
    except ValueError as e:
        raise CorruptCheckpointError(f"bad {DTYPES_KEY} entry: {e}", path=path) from None
    out = {}
    for name, array in arrays.items():
        kind = special.get(name)
        if kind == "string":
            out[name] = _object_bytes(array)
        elif kind is not None:
            try:
                row = dtypes.by_name(kind)
            except InvalidTensorError:
                raise CorruptCheckpointError(f"unknown dtype {kind!r} recorded", path=path, tensor=name) from None
            try:
                out[name] = array.view(row.numpy) if row.numpy is not None else array
            except ValueError:
                raise CorruptCheckpointError(f"cannot hold {kind} values", path=path, tensor=name) from None
        elif array.dtype.kind in "SU":
            out[name] = _object_bytes(array)
        else:
            out[name] = array
    return out, _quantized_names(special)


def _quantized_names(recorded: Mapping[str, str]) -> dict[str, str]:
    names = {}
    for name, kind in recorded.items():
        try:
            if dtypes.by_name(kind).enum in dtypes.QUANTIZED:
                names[name] = kind
        except InvalidTensorError:
            continue  # "string", or a name from a newer ckptlib
    return names


def _object_bytes(array: np.ndarray) -> np.ndarray:
    out = np.empty(array.shape, dtype=object)
    flat = out.reshape(-1)
    for i, item in enumerate(array.reshape(-1)):
        flat[i] = item.encode("utf-8") if isinstance(item, str) else bytes(item)
    return out


def _safetensors() -> object:
    try:
        import safetensors.numpy
    except ImportError:
        raise UnsupportedFeatureError(".safetensors needs the safetensors package: pip install safetensors") from None
    return safetensors.numpy


def _save_safetensors(tensors: Mapping[str, np.ndarray], path: str, quantized: Mapping[str, str]) -> None:
    module = _safetensors()
    for name, array in tensors.items():
        if array.dtype == object:
            raise InvalidTensorError("safetensors cannot hold string tensors", tensor=name)
    try:
        # ascontiguousarray alone would turn a 0-d scalar into shape (1,)
        contiguous = {name: np.ascontiguousarray(a).reshape(a.shape) for name, a in tensors.items()}
        metadata = {DTYPES_KEY: json.dumps(dict(quantized))} if quantized else None
        module.save_file(contiguous, path, metadata=metadata)  # type: ignore[attr-defined]
    except Exception as e:  # also safetensors' own SafetensorError (e.g. complex128, int4): not a traceback
        raise UnsupportedFeatureError(f"safetensors cannot store these tensors: {e}", path=path) from None


def _load_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    module = _safetensors()
    import ml_dtypes  # noqa: F401  registers bfloat16 and the float8 types, which safetensors asks numpy for

    try:
        arrays = dict(module.load_file(path))  # type: ignore[attr-defined]
        with module.safe_open(path, framework="np") as f:  # type: ignore[attr-defined]
            metadata = f.metadata() or {}
        return arrays, _quantized_names(json.loads(metadata.get(DTYPES_KEY, "{}")))
    except (AttributeError, KeyError) as e:
        raise UnsupportedFeatureError(f"numpy cannot represent a tensor of this file: {e}", path=path) from None
    except Exception as e:  # safetensors raises its own SafetensorError for damaged files
        raise CorruptCheckpointError(f"not a readable .safetensors file: {e}", path=path) from None
