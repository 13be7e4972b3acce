"""Framework tensors (torch, JAX, TensorFlow, Keras) as numpy arrays, and as restore targets.

numpy is the hub: a leaf is saved through a numpy view (or a host copy) of it, and a restore
target is described by a numpy shape and dtype and filled from a numpy array. No framework is
imported here unless the user handed in one of its objects: the module of a value's type says
which framework it comes from, and that framework is then already imported.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ckptlib.errors import InvalidTensorError
from ckptlib.format import dtypes

# torch dtypes numpy has no name for (ml_dtypes has), with a torch integer dtype of the same width
_TORCH_ML_DTYPES = {
    "bfloat16": "int16",
    "float8_e4m3fn": "uint8",
    "float8_e4m3fnuz": "uint8",
    "float8_e5m2": "uint8",
    "float8_e5m2fnuz": "uint8",
}


def framework_of(value: Any) -> str | None:
    """``"torch"``, ``"jax"``, ``"tensorflow"`` or ``"keras"`` for a tensor of that framework, else None."""
    module = type(value).__module__.partition(".")[0]
    if module == "jaxlib":
        return "jax"
    return module if module in ("torch", "jax", "tensorflow", "keras") else None


def torch_to_numpy(tensor: Any) -> np.ndarray:
    """A numpy array of a torch tensor's values: detached, on the host, C-contiguous.

    Shares the tensor's memory where it can (a CPU tensor in C order), so it reads what the
    tensor holds at the time of the write. bfloat16 and float8 come out as ml_dtypes arrays.
    """
    tensor = tensor.detach()
    if tensor.device.type == "meta":
        raise InvalidTensorError("a torch tensor on the meta device has no values to save")
    if str(tensor.layout) != "torch.strided" or tensor.is_quantized:
        raise InvalidTensorError(f"cannot save a torch tensor with layout {tensor.layout} (only dense tensors)")
    name = str(tensor.dtype).rpartition(".")[2]
    try:
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()
        tensor = tensor.resolve_conj().resolve_neg().contiguous()
        if name in _TORCH_ML_DTYPES:
            import torch

            bits = tensor.view(getattr(torch, _TORCH_ML_DTYPES[name])).numpy()
            return bits.view(dtypes.by_name(name).numpy)
        return tensor.numpy()
    except (TypeError, RuntimeError, NotImplementedError) as e:
        if "ScalarType" in str(e) or "dtype" in str(e):
            raise InvalidTensorError(f"TensorFlow checkpoints have no dtype for torch.{name} ({e})") from None
        raise InvalidTensorError(f"cannot read the values of a torch tensor on {tensor.device}: {e}") from None


def torch_from_numpy(array: np.ndarray) -> Any:
    """A CPU torch tensor sharing ``array``'s memory (bfloat16/float8 included), any rank."""
    import torch

    name = array.dtype.name
    if name in _TORCH_ML_DTYPES:
        bits = array.view(np.dtype(_TORCH_ML_DTYPES[name]))
        return torch.from_numpy(_writable(bits)).view(getattr(torch, name))
    if array.dtype == object:
        raise InvalidTensorError("a string tensor has no torch equivalent")
    return torch.from_numpy(_writable(array))


def _writable(array: np.ndarray) -> np.ndarray:
    # torch warns on read-only arrays (memory-mapped restores); a copy is the honest answer
    # not np.ascontiguousarray: it turns 0-d arrays into 1-d ones
    return array if array.flags.writeable and array.flags.c_contiguous else array.copy(order="C")


def target_spec(leaf: Any) -> tuple[tuple[int, ...], np.dtype | None] | None:
    """Shape and numpy dtype of an array-like restore target (numpy array, framework tensor or
    variable, or any object with ``shape``, ``dtype`` and an in-place ``copy_``/``assign``),
    or None for a value that is replaced whole (Python scalars, strings, None)."""
    if isinstance(leaf, np.ndarray):
        return leaf.shape, leaf.dtype
    if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
        return None
    if framework_of(leaf) is None and not _writable_in_place(leaf):
        return None
    try:
        shape = tuple(-1 if d is None else int(d) for d in leaf.shape)
    except (TypeError, ValueError):  # a TensorFlow shape of unknown rank
        shape = (-1,)
    return shape, _numpy_dtype(leaf.dtype)


def _writable_in_place(leaf: Any) -> bool:
    return hasattr(leaf, "shape") and (hasattr(leaf, "copy_") or hasattr(leaf, "assign"))


def _numpy_dtype(dtype: Any) -> np.dtype | None:
    """numpy's dtype for a framework's dtype object (torch.float32, tf.bfloat16, 'float32', jnp dtypes)."""
    if isinstance(dtype, np.dtype):
        return dtype
    as_numpy = getattr(dtype, "as_numpy_dtype", None)  # TensorFlow's DType
    if as_numpy is not None:
        return np.dtype(as_numpy)
    name = str(dtype).rpartition(".")[2]
    if name == "bool":
        return np.dtype(bool)
    try:
        return dtypes.by_name(name).numpy
    except InvalidTensorError:
        return None


def cannot_fill(leaf: Any) -> str | None:
    """Why an in-place target cannot take new values (read-only, or elements sharing memory),
    or None; asked of every target before the first is written."""
    if isinstance(leaf, np.ndarray):
        return None if leaf.flags.writeable else "the target array is read-only"
    if framework_of(leaf) == "torch" and hasattr(leaf, "stride"):
        if leaf.device.type == "meta":
            return "the target tensor is on the meta device (it has no memory to fill)"
        if leaf.is_inference():
            return "the target is an inference tensor (made under torch.inference_mode), which cannot change"
        if _overlapping(leaf.shape, leaf.stride()):
            return "the target tensor's elements share memory (an expanded view): it cannot be filled in place"
    return None


def _overlapping(shape: Any, strides: Any) -> bool:
    """Whether a strided layout may put two elements at one place (an expanded tensor, or
    ``as_strided`` views): each dimension, by increasing stride, must step past all before it."""
    extent = 0
    for stride, size in sorted((abs(st), n) for st, n in zip(strides, shape, strict=True) if n > 1):
        if stride <= extent:
            return True
        extent += stride * (size - 1)
    return False


def is_in_place(leaf: Any) -> bool:
    """Whether a restore writes into ``leaf`` itself (numpy arrays, torch tensors, TF and
    Keras variables, anything with ``copy_`` or ``assign``) rather than putting a new value
    in its place (JAX arrays and other immutable values)."""
    return isinstance(leaf, np.ndarray) or _writable_in_place(leaf)


def fill(leaf: Any, value: np.ndarray) -> None:
    """Write ``value`` (already checked to match) into an in-place target."""
    if isinstance(leaf, np.ndarray):
        np.copyto(leaf, value, casting="no")
    elif framework_of(leaf) == "torch":
        import torch

        with torch.no_grad():
            leaf.copy_(torch_from_numpy(value))
    elif hasattr(leaf, "copy_"):
        leaf.copy_(value)
    else:
        leaf.assign(value)


def replacement(leaf: Any, value: np.ndarray) -> Any:
    """A new leaf for an immutable target: a JAX array keeps the target's sharding (so its
    devices); anything else becomes the numpy value."""
    if framework_of(leaf) == "jax" and hasattr(leaf, "sharding"):
        import jax

        return jax.device_put(value, leaf.sharding)
    return value
