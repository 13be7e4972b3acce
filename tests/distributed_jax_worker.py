"""One rank of a coordinated-save scenario on a JAX multi-process job (started by
``distributed_launch.run_ranks(..., worker=JAX_WORKER)``).

    python tests/distributed_jax_worker.py SCENARIO DIRECTORY [ARGS...]

with RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set (the address of JAX's coordination
service, run by rank 0). CPU only. Prints ``RESULT <json>`` last.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import sys
import time
from typing import Any

os.environ["JAX_PLATFORMS"] = "cpu"

import jax
import jax.numpy as jnp
import numpy as np

import ckptlib
from ckptlib.distributed import JaxCoordinator

RANK = int(os.environ["RANK"])
WORLD = int(os.environ["WORLD_SIZE"])
ROWS_PER_RANK = 8
COLS = 6


def coordinator() -> JaxCoordinator:
    jax.distributed.initialize(
        coordinator_address=f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}",
        num_processes=WORLD,
        process_id=RANK,
        initialization_timeout=60,
        shutdown_timeout_seconds=30,  # a rank that failed its save must not hold the others at exit for long
    )
    seconds = float(os.environ.get("COORD_TIMEOUT_S", "30"))
    return JaxCoordinator(timeout=datetime.timedelta(seconds=seconds))


def full_matrix(rows: int) -> np.ndarray:
    """The tensor the ranks hold slices of: each value tells where it sits."""
    return (np.arange(rows)[:, None] * 100 + np.arange(COLS)[None, :]).astype(np.float32)


def init_params() -> dict[str, Any]:
    key = jax.random.PRNGKey(0)
    k1, k2 = jax.random.split(key)
    return {"w1": jax.random.normal(k1, (16, 32)), "b1": jnp.zeros(32), "w2": jax.random.normal(k2, (32, 4))}


def train_step(params: dict[str, Any], step: int) -> dict[str, Any]:
    """The same SGD step on every rank (the replicas of data-parallel training stay equal)."""
    x = jax.random.normal(jax.random.PRNGKey(step), (8, 16))
    y = jax.random.normal(jax.random.PRNGKey(1000 + step), (8, 4))

    def loss(p: dict[str, Any]) -> Any:
        return jnp.mean((jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] - y) ** 2)

    grads = jax.grad(loss)(params)
    return jax.tree_util.tree_map(lambda p, g: p - 0.01 * g, params, grads)


def digest(tree: Any) -> float:
    return float(sum(float(np.asarray(v, dtype=np.float64).sum()) for v in jax.tree_util.tree_leaves(tree)))


def data_parallel(directory: str, *args: str) -> dict[str, Any]:
    """Every rank holds the same jax parameters (replicas), one global jax array replicated
    over every process's device, and a numpy array of its own; three saves, two kept."""
    coord = coordinator()
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("p",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    table = jax.make_array_from_callback((4, 3), replicated, lambda index: np.arange(12.0).reshape(4, 3)[index])
    assert table.is_fully_replicated and not table.is_fully_addressable
    params = init_params()
    saver = ckptlib.Saver(max_to_keep=2, coordinator=coord)
    for step in range(1, 4):
        params = train_step(params, step)
        state = {"params": params, "table": table, f"own{RANK}": np.full(3, RANK * 10 + step), "step": step}
        saver.save(state, f"{directory}/model.ckpt", step)
    return {"latest": ckptlib.latest_checkpoint(directory), "digest": digest(params), "own": [RANK * 10 + 3] * 3}


def sharded(directory: str, *args: str) -> dict[str, Any]:
    """Rank r holds rows [8r, 8r + 8) of W (a jax array), the whole bias (a replica); two saves."""
    coord = coordinator()
    rows = ROWS_PER_RANK * WORLD
    saver = ckptlib.Saver(max_to_keep=2, coordinator=coord)
    prefix = ""
    for step in range(1, 3):
        start = RANK * ROWS_PER_RANK
        part = jnp.asarray(full_matrix(rows)[start : start + ROWS_PER_RANK] + step)
        state = {
            "W": ckptlib.Slice((rows, COLS), (start, 0), part),
            "bias": jnp.arange(COLS, dtype=jnp.float32) * step,
            "step": step,
        }
        prefix = saver.save(state, f"{directory}/ckpt", step)
    return {"latest": prefix}


def failing(directory: str, how: str) -> dict[str, Any]:
    """A good save of step 1; then, at step 2, rank 1 raises (``raise``: a value that cannot
    be saved), stalls (``stall``: it waits longer than the coordinator's timeout before
    writing its data file) or dies (``kill``: SIGKILL as it creates its data file)."""
    coord = coordinator()
    saver = ckptlib.Saver(max_to_keep=3, coordinator=coord)
    state: dict[str, Any] = {"w": jnp.full((64, 64), RANK, jnp.float32), "shared": np.ones(4)}
    saver.save(state, f"{directory}/model.ckpt", global_step=1)
    if RANK == 1 and how == "raise":
        state["bad"] = object()
    if RANK == 1 and how in ("stall", "kill"):
        from ckptlib.store.local import LocalStore

        create = LocalStore.create

        def create_late(self: Any, final_path: str, *a: Any, **k: Any) -> Any:
            if ".data-" in final_path:
                if how == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(float(os.environ["COORD_TIMEOUT_S"]) + 5)
            return create(self, final_path, *a, **k)

        LocalStore.create = create_late  # type: ignore[method-assign]
    started = time.monotonic()
    try:
        saver.save(state, f"{directory}/model.ckpt", global_step=2)
        outcome: dict[str, Any] = {"error": None}
    except Exception as e:
        outcome = {"error": type(e).__name__, "message": str(e)}
    outcome["seconds"] = time.monotonic() - started
    outcome["latest"] = ckptlib.latest_checkpoint(directory)
    return outcome


SCENARIOS = {"data_parallel": data_parallel, "sharded": sharded, "failing": failing}


def main() -> None:
    scenario, directory, *args = sys.argv[1:]
    result = SCENARIOS[scenario](directory, *args)
    print("RESULT " + json.dumps(result), flush=True)
    if args == ["kill"]:  # JAX's shutdown waits for every process at a barrier: the dead one never comes
        os._exit(0)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
