"""A flax/optax training job that checkpoints every epoch and resumes after a restart.

Fits a small MLP (bfloat16 first layer) to synthetic data with AdamW on the CPU. Kill it at
any moment (even with SIGKILL) and run it again: it resumes from the latest checkpoint and
ends on exactly the same final loss as a run that was never interrupted, because the data,
the batch order of each epoch and the whole train state (parameters, optimizer moments,
step) come back bit for bit.

    python examples/jax_train.py --epochs 30
    python examples/jax_train.py --epochs 40      # resumes at epoch 30
"""

from __future__ import annotations

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training.train_state import TrainState

import ckptlib
import ckptlib.jax

SAMPLES, BATCH = 512, 32
STEPS_PER_EPOCH = SAMPLES // BATCH


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Dense(32, param_dtype=jnp.bfloat16)(x))
        return nn.Dense(1)(x.astype(jnp.float32))


def make_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES, 8)).astype(np.float32)
    y = np.sin(x @ rng.normal(size=(8, 1))).astype(np.float32)
    return x, y


def loss_fn(params: dict, apply_fn, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((apply_fn({"params": params}, x) - y) ** 2)


@jax.jit
def train_step(state: TrainState, x: jax.Array, y: jax.Array) -> TrainState:
    grads = jax.grad(loss_fn)(state.params, state.apply_fn, x, y)
    return state.apply_gradients(grads=grads)


def train_one_epoch(state: TrainState, x: np.ndarray, y: np.ndarray, epoch: int) -> TrainState:
    order = np.random.default_rng(epoch).permutation(SAMPLES)  # the epoch's order, not a saved RNG
    for i in range(STEPS_PER_EPOCH):
        batch = order[i * BATCH : (i + 1) * BATCH]
        state = train_step(state, x[batch], y[batch])
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default="runs/jax", help="checkpoint directory (default: runs/jax)")
    parser.add_argument("--epochs", type=int, default=30, help="train until this many epochs are done")
    args = parser.parse_args()

    x, y = make_data()
    model = MLP()
    params = model.init(jax.random.PRNGKey(0), jnp.asarray(x[:1]))["params"]
    state = TrainState.create(apply_fn=model.apply, params=params, tx=optax.adamw(3e-3))
    manager = ckptlib.CheckpointManager(args.dir, max_to_keep=3)

    if manager.latest_checkpoint is not None:
        state = ckptlib.jax.restore(manager.latest_checkpoint, state)  # apply_fn and tx stay ours
        print(f"resumed from {manager.latest_checkpoint} (epoch {int(state.step) // STEPS_PER_EPOCH})")

    for epoch in range(int(state.step) // STEPS_PER_EPOCH, args.epochs):
        state = train_one_epoch(state, x, y, epoch)
        path = manager.save(ckptlib.jax.state(state), checkpoint_number=epoch + 1)
        loss = float(loss_fn(state.params, state.apply_fn, x, y))
        print(f"epoch {epoch + 1:3d}  loss {loss:.6f}  saved {path}", flush=True)

    print(f"final loss {float(loss_fn(state.params, state.apply_fn, x, y))!r}")


if __name__ == "__main__":
    main()
