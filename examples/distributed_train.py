"""Data-parallel PyTorch training on 2 processes that saves one checkpoint together each epoch
and resumes where it stopped.

    python examples/distributed_train.py --dir runs/ddp --epochs 6
    torchrun --nproc-per-node 2 examples/distributed_train.py --dir runs/ddp --epochs 6   # the same

Started without ``torchrun``, it starts its 2 processes itself (gloo, on 127.0.0.1). Each
process trains a replica of the model on its half of every batch, and
``DistributedDataParallel`` averages the gradients, so the replicas stay equal. After every
epoch all processes call ``CheckpointManager.save`` with a ``TorchCoordinator``: the model and
optimizer, held by both, are written once, the bytes split between the processes, and rank 0
commits one ordinary checkpoint. Run it again and every process resumes from it; the final
loss is the same, bit for bit, as a run never interrupted.
"""

from __future__ import annotations

import argparse
import os
import socket
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import ckptlib
import ckptlib.torch
from ckptlib.distributed import TorchCoordinator

WORLD_SIZE = 2


def make_data(samples: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy targets of a fixed random function, from a private generator: the same every run."""
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(samples, 16, generator=gen)
    w = torch.randn(16, 1, generator=gen)
    return x, torch.sin(x @ w / 4) + 0.1 * torch.randn(samples, 1, generator=gen)


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, data: tuple, epoch: int, rank: int) -> float:
    """One pass in an order drawn from the epoch alone (so a resumed run draws the same), each
    process taking its half of every batch; returns the mean loss over all processes."""
    x, y = data
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
    total = torch.zeros(())
    for batch in order.split(64):
        mine = batch[rank::WORLD_SIZE]
        loss = nn.functional.mse_loss(model(x[mine]), y[mine])
        optimizer.zero_grad()
        loss.backward()  # DDP averages the gradients of the processes here
        optimizer.step()
        total += loss.detach() * len(mine)
    dist.all_reduce(total)
    return float(total) / len(x)


def run(rank: int, directory: str, epochs: int) -> None:
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = DistributedDataParallel(nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 1)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    manager = ckptlib.CheckpointManager(directory, max_to_keep=3, coordinator=TorchCoordinator())

    epoch, loss = 0, None
    if manager.latest_checkpoint is not None:  # every process reads the same state file
        tree = ckptlib.torch.restore(manager.latest_checkpoint, model=model.module, optimizer=optimizer)
        epoch, loss = tree["step"], tree["loss"]
        if rank == 0:
            print(f"resumed from {manager.latest_checkpoint} (epoch {epoch})", flush=True)

    data = make_data()
    while epoch < epochs:
        loss = train_one_epoch(model, optimizer, data, epoch, rank)
        epoch += 1
        state = ckptlib.torch.state(model=model.module, optimizer=optimizer, step=epoch, loss=loss)
        manager.save(state, checkpoint_number=epoch)  # every process, together
        if rank == 0:
            print(f"epoch {epoch}: loss {loss:.6f} -> {manager.latest_checkpoint}", flush=True)
    if rank == 0:
        print(f"final loss {loss!r}", flush=True)


def _spawned(rank: int, port: int, directory: str, epochs: int) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE, timeout=timedelta(minutes=2)
    )
    try:
        run(rank, directory, epochs)
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default="runs/ddp", help="checkpoint directory (default: runs/ddp)")
    parser.add_argument("--epochs", type=int, default=6, help="train until this many epochs are done")
    args = parser.parse_args()
    if "RANK" in os.environ:  # started by torchrun
        dist.init_process_group("gloo")
        try:
            run(dist.get_rank(), args.dir, args.epochs)
        finally:
            dist.destroy_process_group()
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_spawned, args=(port, args.dir, args.epochs), nprocs=WORLD_SIZE)


if __name__ == "__main__":
    main()
