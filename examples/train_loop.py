"""A training loop that checkpoints every epoch and resumes after a restart.

Fits a small linear regression with plain numpy SGD. Run it, interrupt it (Ctrl-C) or let
it finish, run it again with more epochs: it continues from the latest checkpoint, and
rotation keeps the newest three. The checkpoints are TensorFlow V2 checkpoints:
``tf.train.load_checkpoint("runs/linear")`` opens them.

    python examples/train_loop.py --epochs 10
    python examples/train_loop.py --epochs 20      # resumes at epoch 10
"""

from __future__ import annotations

import argparse
import os

import numpy as np

import ckptlib


def make_data(rng: np.random.Generator, n: int = 512) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(size=(n, 4)).astype(np.float32)
    true_w = np.array([[2.0], [-1.0], [0.5], [3.0]], dtype=np.float32)
    y = x @ true_w + 0.25 + rng.normal(scale=0.01, size=(n, 1)).astype(np.float32)
    return x, y


def train_one_epoch(state: dict, x: np.ndarray, y: np.ndarray, lr: float = 0.05) -> float:
    w, b = state["dense"]["kernel"], state["dense"]["bias"]
    for i in range(0, len(x), 32):
        xb, yb = x[i : i + 32], y[i : i + 32]
        err = xb @ w + b - yb
        w -= lr * (xb.T @ err) / len(xb)  # in place: the state dict sees the update
        b -= lr * err.mean(axis=0)
    state["epoch"] += 1
    return float(np.mean((x @ w + b - y) ** 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default="runs/linear", help="checkpoint directory (default: runs/linear)")
    parser.add_argument("--epochs", type=int, default=10, help="train until this many epochs are done")
    args = parser.parse_args()

    x, y = make_data(np.random.default_rng(0))
    state = {
        "dense": {"kernel": np.zeros((4, 1), np.float32), "bias": np.zeros(1, np.float32)},
        "epoch": np.int64(0),
    }
    saver = ckptlib.Saver(max_to_keep=3)

    latest = ckptlib.latest_checkpoint(args.dir)
    if latest is not None:
        # Fill the arrays in place; the scalar epoch counter is replaced in the dict.
        ckptlib.restore(latest, into=state)
        print(f"resumed from {latest} (epoch {int(state['epoch'])})")

    while state["epoch"] < args.epochs:
        loss = train_one_epoch(state, x, y)
        path = saver.save(state, os.path.join(args.dir, "model.ckpt"), global_step=int(state["epoch"]))
        print(f"epoch {int(state['epoch']):3d}  loss {loss:.5f}  saved {path}")

    # Read the newest checkpoint back and check it holds exactly what we trained.
    final = ckptlib.latest_checkpoint(args.dir)
    restored = ckptlib.restore(final)  # the same nested dict that was saved
    assert np.array_equal(restored["dense"]["kernel"], state["dense"]["kernel"])
    print(f"kept: {[os.path.basename(p) for p in ckptlib.get_checkpoint_state(args.dir).all_model_checkpoint_paths]}")
    print("tensors in", final)
    for name, shape in ckptlib.list_variables(final):
        print(f"  {name:14s} {shape}")
    print(
        "learned kernel:",
        np.round(restored["dense"]["kernel"].ravel(), 3),
        "bias:",
        np.round(restored["dense"]["bias"], 3),
    )


if __name__ == "__main__":
    main()
