"""A small PyTorch training job that saves every epoch and resumes where it stopped.

    python examples/torch_train.py --dir runs/torch --epochs 30

An MLP with BatchNorm and dropout learns a synthetic regression with AdamW and a StepLR
schedule. After every epoch one ``CheckpointManager.save`` writes everything resuming needs:
the model, the optimizer, the scheduler, the epoch, the epoch's loss and every RNG state (the
shuffle and dropout draw from them). Run it again with the same arguments and it resumes from
the latest checkpoint; killed at any moment and restarted, it ends on the same final loss, bit
for bit, as a run never interrupted.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import ckptlib
import ckptlib.torch


def make_data(samples: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy targets of a fixed random function, from a private generator: the same every run."""
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(samples, 16, generator=gen)
    w = torch.randn(16, 1, generator=gen)
    y = torch.sin(x @ w / 4) + 0.1 * torch.randn(samples, 1, generator=gen)
    return x, y


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 1))


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    """One pass over the data in a fresh random order; returns the mean training loss."""
    model.train()
    order = torch.randperm(len(x))
    total = 0.0
    for batch in order.split(64):
        loss = nn.functional.mse_loss(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item() * len(batch)
    return total / len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default="runs/torch", help="checkpoint directory (default: runs/torch)")
    parser.add_argument("--epochs", type=int, default=30, help="train until this many epochs are done")
    args = parser.parse_args()

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # the sums' order, hence the last bits, must not depend on the machine
    x, y = make_data()
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10, gamma=0.5)
    manager = ckptlib.CheckpointManager(args.dir, max_to_keep=3)

    epoch, loss = 0, None
    if manager.latest_checkpoint is not None:
        tree = ckptlib.torch.restore(
            manager.latest_checkpoint, model=model, optimizer=optimizer, scheduler=scheduler, rng=True
        )
        epoch, loss = tree["step"], tree["loss"]
        print(f"resumed from {manager.latest_checkpoint} (epoch {epoch})")

    while epoch < args.epochs:
        loss = train_one_epoch(model, optimizer, x, y)
        scheduler.step()
        epoch += 1
        state = ckptlib.torch.state(
            model=model, optimizer=optimizer, scheduler=scheduler, step=epoch, rng=True, loss=loss
        )
        path = manager.save(state, checkpoint_number=epoch)
        print(f"epoch {epoch:3d}  loss {loss:.6f}  lr {scheduler.get_last_lr()[0]:.2e}  saved {path}")

    print(f"final loss {loss!r}")


if __name__ == "__main__":
    main()
