"""One rank of a coordinated-save scenario (started by ``distributed_launch.run_ranks``).

    python tests/distributed_worker.py SCENARIO DIRECTORY [ARGS...]

with RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set. Prints ``RESULT <json>`` last.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import sys
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

import ckptlib
import ckptlib.torch
from ckptlib.distributed import TorchCoordinator
from ckptlib.store import store_for

RANK = int(os.environ["RANK"])
WORLD = int(os.environ["WORLD_SIZE"])
ROWS_PER_RANK = 8
COLS = 6


def full_matrix(rows: int) -> np.ndarray:
    """The tensor the ranks hold slices of: each value tells where it sits."""
    return (np.arange(rows)[:, None] * 100 + np.arange(COLS)[None, :]).astype(np.float32)


def split(n: int, parts: int, index: int) -> tuple[int, int]:
    bounds = np.linspace(0, n, parts + 1).astype(int)
    return int(bounds[index]), int(bounds[index + 1])


def coordinator() -> TorchCoordinator:
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}",
        rank=RANK,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )
    return TorchCoordinator(timeout=datetime.timedelta(seconds=float(os.environ.get("COORD_TIMEOUT_S", "30"))))


def model_and_optimizer() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    return model, torch.optim.Adam(model.parameters(), lr=1e-2)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int) -> float:
    """The same step on every rank (the replicas of data-parallel training stay equal)."""
    generator = torch.Generator().manual_seed(step)
    x, y = torch.randn(8, 16, generator=generator), torch.randn(8, 4, generator=generator)
    loss = torch.nn.functional.mse_loss(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss)


def digest(tree: Any) -> float:
    return float(sum(float(np.asarray(v, dtype=np.float64).sum()) for v in _arrays(tree)))


def _arrays(node: Any) -> list[Any]:
    if isinstance(node, dict):
        return [a for v in node.values() for a in _arrays(v)]
    if isinstance(node, (list, tuple)):
        return [a for v in node for a in _arrays(v)]
    if isinstance(node, torch.Tensor):
        return [node.detach().numpy()]
    if isinstance(node, np.ndarray) and node.dtype != object:
        return [node]
    return []


def data_parallel(directory: str, *args: str) -> dict[str, Any]:
    """Every rank holds the whole model and optimizer (replicas); three saves, two kept."""
    use_async = "async" in args
    coord = coordinator()
    model, optimizer = model_and_optimizer()
    saver = ckptlib.Saver(max_to_keep=2, coordinator=coord, async_save=use_async)
    for step in range(1, 4):
        train_step(model, optimizer, step)
        saver.save(ckptlib.torch.state(model=model, optimizer=optimizer, step=step), f"{directory}/model.ckpt", step)
    saver.wait()
    state = ckptlib.torch.state(model=model, optimizer=optimizer, step=3)
    return {"latest": ckptlib.latest_checkpoint(directory), "digest": digest(state)}


def sharded(directory: str, *args: str) -> dict[str, Any]:
    """Rank r holds rows [8r, 8r + 8) of W, the whole bias (a replica), and a tensor of its
    own; a CheckpointManager keeps two of three saves."""
    coord = coordinator()
    rows = ROWS_PER_RANK * WORLD
    manager = ckptlib.CheckpointManager(directory, max_to_keep=2, coordinator=coord, object_graph="graph" in args)
    for step in range(1, 4):
        start = RANK * ROWS_PER_RANK
        part = full_matrix(rows)[start : start + ROWS_PER_RANK] + step
        state = {
            "W": ckptlib.Slice((rows, COLS), (start, 0), part),
            "bias": np.arange(COLS, dtype=np.float32) * step,
            f"own{RANK}": np.full(3, RANK + step, np.int32),
            "step": step,
        }
        manager.save(state)
    return {"latest": manager.latest_checkpoint, "checkpoints": manager.checkpoints}


def reshard(directory: str, saved_ranks: str, axis: str) -> dict[str, Any]:
    """Restore W's part of this rank's split (along ``axis``) of a checkpoint saved by
    ``saved_ranks`` ranks, the bias whole, and check them."""
    coordinator()  # the job exists; restores need no coordination
    rows = ROWS_PER_RANK * int(saved_ranks)
    latest = ckptlib.latest_checkpoint(directory)
    assert latest is not None
    step = int(latest.rsplit("-", 1)[1])
    full = full_matrix(rows) + step
    if axis == "0":
        lo, hi = split(rows, WORLD, RANK)
        target = ckptlib.Slice((rows, COLS), (lo, 0), np.zeros((hi - lo, COLS), np.float32))
        want = full[lo:hi]
    else:
        lo, hi = split(COLS, WORLD, RANK)
        target = ckptlib.Slice((rows, COLS), (0, lo), torch.zeros(rows, hi - lo))
        want = full[:, lo:hi]
    bias = np.zeros(COLS, np.float32)
    ckptlib.restore(latest, into={"W": target, "bias": bias}, strict=False)
    got = target.value.numpy() if isinstance(target.value, torch.Tensor) else target.value
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(bias, np.arange(COLS, dtype=np.float32) * step)
    return {"latest": latest, "checked": [lo, hi]}


def failing(directory: str, how: str) -> dict[str, Any]:
    """A good save of step 1; then, at step 2, rank 1 dies (``kill``: SIGKILL as it creates
    its data file), raises (``raise``: a value that cannot be saved) or stalls (``stall``:
    it waits longer than the coordinator's timeout before writing)."""
    coord = coordinator()
    saver = ckptlib.Saver(max_to_keep=3, coordinator=coord)
    state: dict[str, Any] = {"w": np.full((64, 64), RANK, np.float32), "shared": np.ones(4)}
    saver.save(state, f"{directory}/model.ckpt", global_step=1)
    store_class = type(store_for(directory))  # local files, or S3
    if RANK == 1 and how == "kill":
        create = store_class.create

        def create_and_die(self: Any, final_path: str, *a: Any, **k: Any) -> Any:
            if ".data-" in final_path:
                os.kill(os.getpid(), signal.SIGKILL)
            return create(self, final_path, *a, **k)

        store_class.create = create_and_die  # type: ignore[method-assign]
    if RANK == 1 and how == "stall":
        create_slowly = store_class.create

        def stall(self: Any, final_path: str, *a: Any, **k: Any) -> Any:
            if ".data-" in final_path:
                time.sleep(float(os.environ["COORD_TIMEOUT_S"]) + 5)
            return create_slowly(self, final_path, *a, **k)

        store_class.create = stall  # type: ignore[method-assign]
    if RANK == 1 and how == "raise":
        state["bad"] = object()
    started = time.monotonic()
    try:
        saver.save(state, f"{directory}/model.ckpt", global_step=2)
        outcome = {"error": None}
    except Exception as e:
        outcome = {"error": type(e).__name__, "message": str(e)}
    outcome["seconds"] = time.monotonic() - started
    outcome["latest"] = ckptlib.latest_checkpoint(directory)
    return outcome


def dtensor(directory: str, *args: str) -> dict[str, Any]:
    """A DTensor sharded by rows is saved as slices; restored into a DTensor sharded by
    columns (another split of the same tensor), and into a plain whole tensor."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    coord = coordinator()
    mesh = init_device_mesh("cpu", (WORLD,))
    rows = ROWS_PER_RANK * WORLD + 1  # uneven on purpose
    full = torch.from_numpy(full_matrix(rows))
    state = {"W": distribute_tensor(full, mesh, [Shard(0)]), "b": distribute_tensor(torch.ones(4), mesh, [Replicate()])}
    prefix = ckptlib.save(state, f"{directory}/model.ckpt", coordinator=coord)
    target = {"W": distribute_tensor(torch.zeros(rows, COLS), mesh, [Shard(1)]), "b": torch.zeros(4)}
    ckptlib.restore(prefix, into=target)
    assert torch.equal(target["W"].full_tensor(), full), "resharded DTensor differs"
    assert torch.equal(target["b"], torch.ones(4))
    return {"prefix": prefix, "local": list(target["W"].to_local().shape)}


SCENARIOS = {
    "data_parallel": data_parallel,
    "sharded": sharded,
    "reshard": reshard,
    "failing": failing,
    "dtensor": dtensor,
}


def main() -> None:
    scenario, directory, *args = sys.argv[1:]
    result = SCENARIOS[scenario](directory, *args)
    print("RESULT " + json.dumps(result), flush=True)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
