"""ckptlib.jax with real JAX, flax and optax: a flax ``TrainState`` with AdamW saves under
readable key-path names, restores bit for bit (bfloat16 too) as jax arrays with the target's
dtype, shape and sharding, refuses mismatches and damage naming the path, and a resumed
training run computes exactly the losses of an uninterrupted one."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

_XLA_FLAGS = os.environ.get("XLA_FLAGS")
if "jax" not in sys.modules:  # two CPU devices, to restore onto a sharding that spans both
    os.environ["XLA_FLAGS"] = f"{_XLA_FLAGS or ''} --xla_force_host_platform_device_count=2"
try:
    jax = pytest.importorskip("jax")
    jax.devices()  # the backend reads XLA_FLAGS now, once: later subprocesses need not see it
finally:
    if _XLA_FLAGS is None:
        os.environ.pop("XLA_FLAGS", None)
    else:
        os.environ["XLA_FLAGS"] = _XLA_FLAGS
pytest.importorskip("flax")
pytest.importorskip("optax")

import flax.linen as nn  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax.training.train_state import TrainState  # noqa: E402

import ckptlib  # noqa: E402
import ckptlib.jax  # noqa: E402
from ckptlib.errors import (  # noqa: E402
    ChecksumMismatchError,
    DtypeMismatchError,
    RestoreMismatchError,
    ShapeMismatchError,
)

X = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
Y = np.sin(X.sum(axis=1, keepdims=True))


class MLP(nn.Module):
    width: int = 8

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Dense(self.width, param_dtype=jnp.bfloat16)(x))
        return nn.Dense(1)(x.astype(jnp.float32))


def new_state(seed: int = 0, width: int = 8) -> TrainState:
    model = MLP(width)
    params = model.init(jax.random.PRNGKey(seed), jnp.ones((1, 4)))["params"]
    return TrainState.create(apply_fn=model.apply, params=params, tx=optax.adamw(1e-2))


def loss_fn(params: Any, apply_fn: Any, x: Any, y: Any) -> jax.Array:
    return jnp.mean((apply_fn({"params": params}, x) - y) ** 2)


@jax.jit
def train_step(state: TrainState, x: jax.Array, y: jax.Array) -> tuple[TrainState, jax.Array]:
    loss, grads = jax.value_and_grad(loss_fn)(state.params, state.apply_fn, x, y)
    return state.apply_gradients(grads=grads), loss


def train(state: TrainState, steps: int) -> tuple[TrainState, list[float]]:
    losses = []
    for i in range(steps):
        batch = slice((i % 4) * 16, (i % 4 + 1) * 16)
        state, loss = train_step(state, X[batch], Y[batch])
        losses.append(float(loss))
    return state, losses


def bits(leaf: Any) -> bytes:
    return np.asarray(leaf).tobytes()


def assert_same_tree(restored: Any, expected: Any) -> None:
    """Same key paths; jax arrays of the same dtype, shape and bits; equal Python scalars."""
    leaves = jax.tree_util.tree_flatten_with_path(restored)[0]
    expected_leaves = jax.tree_util.tree_flatten_with_path(expected)[0]
    assert [path for path, _ in leaves] == [path for path, _ in expected_leaves]
    for (path, leaf), (_, want) in zip(leaves, expected_leaves):
        if isinstance(leaf, (int, float)):
            assert leaf == want, path
        else:
            assert isinstance(leaf, jax.Array), path
            assert (leaf.dtype, leaf.shape, bits(leaf)) == (want.dtype, want.shape, bits(want)), path


def test_names_are_the_key_paths(tmp_path: Path):
    state, _ = train(new_state(), 2)
    ckptlib.save(ckptlib.jax.state(state), str(tmp_path / "ckpt-2"))
    names = dict(ckptlib.list_variables(str(tmp_path / "ckpt-2")))
    assert names["params/Dense_0/kernel"] == [4, 8]
    assert names["opt_state/0/mu/Dense_0/kernel"] == [4, 8]
    assert names["opt_state/0/nu/Dense_1/bias"] == [1]
    assert names["opt_state/0/count"] == [] and names["step"] == []
    assert not any("apply_fn" in name or "tx" in name for name in names)


def test_round_trip_bit_for_bit(tmp_path: Path):
    state, _ = train(new_state(), 5)
    assert state.params["Dense_0"]["kernel"].dtype == jnp.bfloat16
    ckptlib.save(ckptlib.jax.state(state), str(tmp_path / "ckpt-5"))
    target = new_state(seed=1)
    restored = ckptlib.jax.restore(str(tmp_path / "ckpt-5"), target)
    assert isinstance(restored, TrainState) and int(restored.step) == 5
    assert restored.apply_fn is target.apply_fn and restored.tx is target.tx
    assert_same_tree(restored, state)
    assert isinstance(restored.params["Dense_0"]["kernel"], jax.Array)


def test_restore_takes_the_target_sharding(tmp_path: Path):
    devices = jax.devices()
    if len(devices) < 2:
        pytest.skip("one device only: JAX was imported before this module could ask for two")
    state, _ = train(new_state(), 3)
    ckptlib.save(ckptlib.jax.state(state), str(tmp_path / "ckpt-3"))
    mesh = jax.sharding.Mesh(np.array(devices[:2]), ("x",))
    by_column = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "x"))
    target = new_state(seed=1)
    kernel = jax.device_put(target.params["Dense_0"]["kernel"], by_column)
    target = target.replace(params={**target.params, "Dense_0": {**target.params["Dense_0"], "kernel": kernel}})
    restored = ckptlib.jax.restore(str(tmp_path / "ckpt-3"), target)
    restored_kernel = restored.params["Dense_0"]["kernel"]
    assert restored_kernel.sharding == by_column
    assert len(restored_kernel.addressable_shards) == 2
    assert bits(restored_kernel) == bits(state.params["Dense_0"]["kernel"])
    assert restored.params["Dense_1"]["kernel"].sharding == target.params["Dense_1"]["kernel"].sharding


def test_restore_from_a_directory_takes_the_latest(tmp_path: Path):
    manager = ckptlib.CheckpointManager(str(tmp_path), max_to_keep=2)
    state = new_state()
    for _ in range(3):
        state, _ = train(state, 1)
        manager.save(ckptlib.jax.state(state), checkpoint_number=int(state.step))
    assert int(ckptlib.jax.restore(str(tmp_path), new_state()).step) == 3


def test_load_gives_jax_arrays(tmp_path: Path):
    state, _ = train(new_state(), 1)
    ckptlib.save(ckptlib.jax.state(state), str(tmp_path / "ckpt-1"))
    tree = ckptlib.jax.load(str(tmp_path / "ckpt-1"))
    kernel = tree["params"]["Dense_0"]["kernel"]
    assert isinstance(kernel, jax.Array) and kernel.dtype == jnp.bfloat16
    assert bits(kernel) == bits(state.params["Dense_0"]["kernel"])


def test_any_pytree_round_trips(tmp_path: Path):
    class Pair(NamedTuple):
        first: Any
        second: Any

    tree = {"a": [jnp.arange(3), (jnp.ones((2, 2), jnp.bfloat16), None)], "b": Pair(jnp.int8(4), 2.5)}
    ckptlib.save(ckptlib.jax.state(tree), str(tmp_path / "t"))
    assert {name for name, _ in ckptlib.list_variables(str(tmp_path / "t"))} - {"_CKPTLIB_STRUCTURE"} == {
        "a/0",
        "a/1/0",
        "b/first",
        "b/second",
    }
    zeros = jax.tree_util.tree_map(lambda leaf: leaf * 0, tree)
    assert_same_tree(ckptlib.jax.restore(str(tmp_path / "t"), zeros), tree)


def test_shape_mismatch_names_the_paths(tmp_path: Path):
    ckptlib.save(ckptlib.jax.state(new_state()), str(tmp_path / "ckpt-0"))
    target = new_state(width=16)
    before = jax.tree_util.tree_map(bits, target)
    with pytest.raises(ShapeMismatchError) as caught:
        ckptlib.jax.restore(str(tmp_path / "ckpt-0"), target)
    assert "params/Dense_0/kernel" in str(caught.value)
    assert "opt_state/0/mu/Dense_1/kernel" in str(caught.value)
    assert jax.tree_util.tree_map(bits, target) == before


def test_dtype_mismatch_names_the_path(tmp_path: Path):
    state = new_state()
    ckptlib.save(ckptlib.jax.state(state), str(tmp_path / "ckpt-0"))
    as_float32 = jax.tree_util.tree_map(lambda leaf: leaf.astype(jnp.float32), state.params)
    with pytest.raises(DtypeMismatchError, match="params/Dense_0/kernel"):
        ckptlib.jax.restore(str(tmp_path / "ckpt-0"), state.replace(params=as_float32))


def test_strict_and_partial_restores(tmp_path: Path):
    state, _ = train(new_state(), 2)
    ckptlib.save(ckptlib.jax.state(state), str(tmp_path / "ckpt-2"))
    with pytest.raises(RestoreMismatchError, match="opt_state/0/count"):
        ckptlib.jax.restore(str(tmp_path / "ckpt-2"), {"params": new_state().params})
    params = ckptlib.jax.restore(str(tmp_path / "ckpt-2"), {"params": new_state().params}, strict=False)
    assert_same_tree(params, {"params": state.params})


def test_damaged_checkpoint_raises_and_builds_nothing(tmp_path: Path, damage_tensor):
    state, _ = train(new_state(), 2)
    prefix = tmp_path / "ckpt-2"
    ckptlib.save(ckptlib.jax.state(state), str(prefix))
    damage_tensor(prefix, "params/Dense_1/kernel")
    with pytest.raises(ChecksumMismatchError, match="params/Dense_1/kernel"):
        ckptlib.jax.restore(str(prefix), new_state(seed=1))


def test_resumed_training_gives_the_same_losses(tmp_path: Path):
    _, straight = train(new_state(), 8)

    first, losses = train(new_state(), 4)
    manager = ckptlib.CheckpointManager(str(tmp_path), max_to_keep=1)
    manager.save(ckptlib.jax.state(first), checkpoint_number=4)
    resumed = ckptlib.jax.restore(str(tmp_path), new_state(seed=7))
    _, more = train(resumed, 4)
    assert losses + more == straight


def test_typed_prng_keys_round_trip(tmp_path: Path):
    tree = {"key": jax.random.key(42), "raw": jax.random.PRNGKey(7)}
    ckptlib.save(ckptlib.jax.state(tree), str(tmp_path / "k"))
    assert dict(ckptlib.list_variables(str(tmp_path / "k")))["key"] == [2]
    restored = ckptlib.jax.restore(str(tmp_path / "k"), {"key": jax.random.key(0), "raw": jax.random.PRNGKey(0)})
    assert jax.random.key_impl(restored["key"]) == jax.random.key_impl(tree["key"])
    assert bits(jax.random.key_data(restored["key"])) == bits(jax.random.key_data(tree["key"]))
    assert bits(restored["raw"]) == bits(tree["raw"])


def test_flax_nnx_model_and_optimizer_round_trip(tmp_path: Path):
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            self.linear = nnx.Linear(4, 3, rngs=rngs)
            self.norm = nnx.BatchNorm(3, rngs=rngs)
            self.drop = nnx.Dropout(0.5, rngs=rngs)

    def build(seed: int) -> tuple[Any, Any]:
        net = Net(nnx.Rngs(seed))
        return net, nnx.Optimizer(net, optax.adamw(1e-2), wrt=nnx.Param)

    net, optimizer = build(0)
    tree = {"model": nnx.state(net), "optimizer": nnx.state(optimizer)}
    ckptlib.save(ckptlib.jax.state(tree), str(tmp_path / "nnx"))
    fresh, fresh_optimizer = build(1)
    restored = ckptlib.jax.restore(
        str(tmp_path / "nnx"), {"model": nnx.state(fresh), "optimizer": nnx.state(fresh_optimizer)}
    )
    nnx.update(fresh, restored["model"])
    nnx.update(fresh_optimizer, restored["optimizer"])
    assert bits(fresh.linear.kernel[...]) == bits(net.linear.kernel[...])
    assert_same_tree(ckptlib.jax.state(nnx.state(fresh)), ckptlib.jax.state(nnx.state(net)))


def test_restore_never_writes_into_numpy_leaves(tmp_path: Path):
    saved = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.float32(7), "n": 3}
    ckptlib.save(saved, str(tmp_path / "np"))
    read_only = np.zeros(2, np.int32)
    read_only.flags.writeable = False
    target = {"w": np.zeros((2, 3), np.float32), "s": np.float32(0), "n": 0}
    restored = ckptlib.jax.restore(str(tmp_path / "np"), target)
    assert not target["w"].any() and target["s"] == 0 and target["n"] == 0
    assert isinstance(restored["w"], jax.Array) and restored["w"].dtype == jnp.float32
    assert isinstance(restored["s"], jax.Array) and restored["s"].shape == () and float(restored["s"]) == 7
    assert bits(restored["w"]) == bits(saved["w"]) and restored["n"] == 3
    # a read-only numpy leaf is no obstacle, and one the checkpoint lacks comes back as a jax copy
    partial = ckptlib.jax.restore(str(tmp_path / "np"), {"w": target["w"], "extra": read_only}, strict=False)
    assert isinstance(partial["extra"], jax.Array) and bits(partial["extra"]) == bits(read_only)
    assert isinstance(partial["w"], jax.Array) and not target["w"].any()
    with pytest.raises(DtypeMismatchError, match="w"):
        ckptlib.jax.restore(str(tmp_path / "np"), {**target, "w": np.zeros((2, 3), np.float16)})


def test_load_keeps_string_tensors_as_numpy(tmp_path: Path):
    ckptlib.save({"names": np.array([b"a", b"bc"], dtype=object), "w": np.ones(2, np.float32)}, str(tmp_path / "s"))
    tree = ckptlib.jax.load(str(tmp_path / "s"))
    assert isinstance(tree["names"], np.ndarray) and tree["names"].tolist() == [b"a", b"bc"]
    assert isinstance(tree["w"], jax.Array)
    # a checkpoint TensorFlow wrote: its object graph is a string tensor
    tf_tree = ckptlib.jax.load(str(Path(__file__).parent / "data" / "golden" / "tf2_keras" / "ckpt-1"))
    graph = tf_tree["_CHECKPOINTABLE_OBJECT_GRAPH"]
    assert isinstance(graph, np.ndarray) and isinstance(graph.item(), bytes)


def test_64_bit_values_are_never_narrowed(tmp_path: Path):
    big = np.array([2**40, -(2**40)], dtype=np.int64)
    precise = np.array([0.1, 1e300])
    ckptlib.save({"big": big, "precise": precise, "small": np.int32(5)}, str(tmp_path / "x"))
    assert not jax.config.jax_enable_x64  # JAX's default, under which it narrows 64-bit arrays
    tree = ckptlib.jax.load(str(tmp_path / "x"))
    assert isinstance(tree["big"], np.ndarray) and tree["big"].dtype == np.int64 and (tree["big"] == big).all()
    assert isinstance(tree["precise"], np.ndarray) and bits(tree["precise"]) == bits(precise)
    assert isinstance(tree["small"], jax.Array)
    target = {"big": np.zeros(2, np.int64), "precise": np.zeros(2), "small": np.int32(0)}
    restored = ckptlib.jax.restore(str(tmp_path / "x"), target)
    assert isinstance(restored["big"], np.ndarray) and (restored["big"] == big).all()
    assert bits(restored["precise"]) == bits(precise) and restored["precise"] is not target["precise"]
    assert not target["big"].any() and not target["precise"].any()
    with jax.enable_x64(True):
        tree = ckptlib.jax.load(str(tmp_path / "x"))
        assert isinstance(tree["big"], jax.Array) and tree["big"].dtype == jnp.int64
        assert bits(tree["big"]) == bits(big) and bits(tree["precise"]) == bits(precise)
        restored = ckptlib.jax.restore(str(tmp_path / "x"), target)
        assert isinstance(restored["big"], jax.Array) and bits(restored["big"]) == bits(big)
        assert not target["big"].any()
