"""A Keras 3 training job that checkpoints every epoch and resumes after a restart.

Fits a small MLP with batch normalization to synthetic data with Adam, on whichever backend
``KERAS_BACKEND`` names (TensorFlow by default; ``jax`` and ``torch`` work the same). Kill it
at any moment (even with SIGKILL) and run it again: it resumes from the latest checkpoint
and ends on exactly the same final loss as a run that was never interrupted, because the
data, the batch order of each epoch, the weights (batch-norm statistics too) and the
optimizer's variables (iteration count, moments) come back bit for bit.

    python examples/keras_train.py --epochs 30
    KERAS_BACKEND=jax python examples/keras_train.py --epochs 40    # resumes at epoch 30
"""

from __future__ import annotations

import argparse

import keras
import numpy as np

import ckptlib
import ckptlib.keras

SAMPLES, BATCH = 512, 32


def make_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES, 8)).astype(np.float32)
    y = np.sin(x @ rng.normal(size=(8, 1))).astype(np.float32)
    return x, y


def make_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(1),
        ]
    )


def mse(model: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((keras.ops.convert_to_numpy(model(x, training=False)) - y) ** 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default="runs/keras", help="checkpoint directory (default: runs/keras)")
    parser.add_argument("--epochs", type=int, default=30, help="train until this many epochs are done")
    args = parser.parse_args()

    x, y = make_data()
    model = make_model()
    optimizer = keras.optimizers.Adam(3e-3)
    model.compile(optimizer=optimizer, loss="mse")
    manager = ckptlib.CheckpointManager(args.dir, max_to_keep=3)

    epoch = 0
    if manager.latest_checkpoint is not None:
        # Builds the optimizer first, so that its moments exist to be assigned.
        restored = ckptlib.keras.restore(manager.latest_checkpoint, model=model, optimizer=optimizer, epoch=0)
        epoch = int(restored["epoch"])
        print(f"resumed from {manager.latest_checkpoint} (epoch {epoch})")

    while epoch < args.epochs:
        order = np.random.default_rng(epoch).permutation(SAMPLES)  # the epoch's order, not a saved RNG
        model.fit(x[order], y[order], batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
        epoch += 1
        path = manager.save(ckptlib.keras.state(model=model, optimizer=optimizer, epoch=epoch), checkpoint_number=epoch)
        print(f"epoch {epoch:3d}  loss {mse(model, x, y):.6f}  saved {path}", flush=True)

    print(f"final loss {mse(model, x, y)!r}")


if __name__ == "__main__":
    main()
