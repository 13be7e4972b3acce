"""Run a scenario of a worker module as a real multi-process job: one process per rank, over
127.0.0.1, every run bounded in time (a hang fails the test). The worker is
``tests/distributed_worker.py`` (``torch.distributed``, gloo) unless ``worker=`` names
another (``tests/distributed_jax_worker.py``: ``jax.distributed``).

    results = run_ranks("data_parallel", 4, tmp_path)
    assert all(r.ok for r in results)

Each rank gets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT (a free port) and prints
``RESULT <json>`` as its last line; ``RankResult.value`` is that JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).with_name("distributed_worker.py")


@dataclass
class RankResult:
    rank: int
    returncode: int
    stdout: str
    stderr: str

    @property
    def value(self) -> Any:
        for line in reversed(self.stdout.splitlines()):
            if line.startswith("RESULT "):
                return json.loads(line[len("RESULT ") :])
        raise AssertionError(f"rank {self.rank} printed no RESULT\n{self.explain()}")

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def explain(self) -> str:
        return f"--- rank {self.rank}: exit {self.returncode}\n{self.stdout[-3000:]}\n{self.stderr[-5000:]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_ranks(
    scenario: str,
    world_size: int,
    directory: str | Path,
    *args: str,
    timeout: float = 180.0,
    worker: Path = WORKER,
) -> list[RankResult]:
    """Start ``world_size`` ranks of ``scenario`` and wait for all of them; raise
    ``AssertionError`` (after killing every rank) if they are not done within ``timeout``."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT) + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": str(world_size),
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    }
    local = "://" not in str(directory)
    logs = (Path(directory).parent if local else Path(tempfile.gettempdir())) / f".{scenario}-{time.monotonic_ns()}"
    argv = [sys.executable, str(worker), scenario, str(directory), *args]
    with contextlib.ExitStack() as stack:
        # files, not pipes: a full pipe would stall a rank
        files = [
            (stack.enter_context(open(f"{logs}.{r}.out", "w+")), stack.enter_context(open(f"{logs}.{r}.err", "w+")))
            for r in range(world_size)
        ]
        procs = [
            subprocess.Popen(argv, stdout=out, stderr=err, env={**env, "RANK": str(r)}, cwd=str(ROOT))
            for r, (out, err) in enumerate(files)
        ]
        deadline = time.monotonic() + timeout
        try:
            for proc in procs:
                try:
                    proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:
                    raise AssertionError(f"{scenario}: the ranks did not finish within {timeout} s (a hang)") from None
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        results = []
        for rank, (proc, (out, err)) in enumerate(zip(procs, files, strict=True)):
            out.seek(0)
            err.seek(0)
            results.append(RankResult(rank, proc.returncode, out.read(), err.read()))
    return results


def explain(results: list[RankResult]) -> str:
    return "\n".join(r.explain() for r in results)
