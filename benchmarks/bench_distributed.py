"""Coordinated saves from several processes: 4 ranks of a ``torch.distributed`` job (gloo on
127.0.0.1) each saving its own part of the state into one checkpoint, against one process
saving the same bytes alone, and against ``torch.distributed.checkpoint.save`` (DCP) of the
same state, side by side in one run.

    python benchmarks/bench_distributed.py --repeat 3                     # 4 x 256 MiB = 1 GiB
    python benchmarks/bench_distributed.py --mib-per-rank 32 --repeat 2  # a quick check

This script starts ``--ranks`` processes of itself (``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/
``MASTER_PORT``, as ``tests/distributed_launch.py`` does). Each rank holds ``--mib-per-rank``
MiB of float32 in 32 torch tensors of its own, as a pipeline-parallel job holds its own layers
(names distinct across ranks; no replicas, no slices). Rank 0 also holds the other ranks'
tensors (the same names and values) for the one-process contenders, so that they save exactly
the bytes the ranks save together.

Every contender is timed on rank 0 as the wall time of one save, from a barrier of all the
ranks before it to a barrier after it: so until every rank's part is written (durable, where
the contender syncs) and the checkpoint is committed. The one-process contenders run on rank 0
between the same two barriers, the other ranks waiting. Contenders, one save each per round,
interleaved round by round after ``--warmup`` untimed rounds (``bench.Bench``'s style):

- ``ckptlib.save(part, prefix, coordinator=TorchCoordinator())`` on every rank (default: fsync
  of data, index and directory), and the same with ``sync=False``;
- ``torch.distributed.checkpoint.save(part, checkpoint_id=directory)`` on every rank (its
  defaults: ``FileSystemWriter``, one file per rank, fsync of its files);
- ``ckptlib.save(full_state, prefix)`` in one process (default: one data file, fsync on);
- ``dcp.save(full_state, checkpoint_id=directory, no_dist=True)`` in one process.

Before each save, untimed: the previous output deleted, ``os.sync()`` and, on every rank, a
touch of as much memory as its save fills (see ``bench.py``). In the warm-up round rank 0 checks
each ckptlib checkpoint (every key, one tensor of each rank's part compared) and each DCP one
(its metadata names every key). ``BENCH_VERBOSE=1`` prints every time.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from bench import MIB

TENSORS_PER_RANK = 32
ROOT = Path(__file__).resolve().parent.parent

MULTI, SINGLE = "every rank", "rank 0 alone"
CONTENDERS = [  # (name, who saves)
    ("ckptlib coordinated save", MULTI),
    ("ckptlib coordinated save, no fsync", MULTI),
    ("DCP save", MULTI),
    ("ckptlib save, one process", SINGLE),
    ("DCP save, one process (no_dist)", SINGLE),
]


# -- the state -------------------------------------------------------------------------------
def part_of(rank: int, mib: float) -> dict[str, Any]:
    """Rank ``rank``'s own part: ``mib`` MiB of float32 in 32 torch tensors (layers of its own,
    as in pipeline parallelism), the same on whichever process makes it."""
    import torch

    numel = int(mib * MIB) // (4 * TENSORS_PER_RANK)
    part = {}
    for i in range(TENSORS_PER_RANK):
        layer = rank * TENSORS_PER_RANK + i
        generator = torch.Generator().manual_seed(layer)
        part[f"layer_{layer:03d}/weight"] = torch.randn(numel // 1024, 1024, generator=generator)
    return part


def nbytes_of(state: dict[str, Any]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


# -- one rank --------------------------------------------------------------------------------
def rank_main(args: argparse.Namespace) -> int:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    import ckptlib
    from ckptlib.distributed import TorchCoordinator

    warnings.filterwarnings("ignore", category=UserWarning, module="torch.distributed")
    warnings.filterwarnings("ignore", category=FutureWarning)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    timeout = datetime.timedelta(seconds=args.timeout)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}",
        rank=rank,
        world_size=world,
        timeout=timeout,
    )
    coordinator = TorchCoordinator(timeout=timeout)
    work = args.work
    part = part_of(rank, args.mib_per_rank)
    full: dict[str, Any] = {}
    if rank == 0:  # the whole state, for the one-process contenders (this rank's part shared)
        for r in range(world):
            full.update(part if r == 0 else part_of(r, args.mib_per_rank))
    part_bytes, full_bytes = nbytes_of(part), nbytes_of(full)

    def log(message: str) -> None:
        if rank == 0:
            print(message, file=sys.stderr, flush=True)

    log(
        f"{world} ranks, each {len(part)} tensors, {part_bytes / MIB:.0f} MiB; "
        f"one process: {len(full)} tensors, {full_bytes / MIB:.0f} MiB"
    )

    def path(index: int) -> str:
        return os.path.join(work, f"c{index}")

    saves: dict[str, Callable[[str], Any]] = {
        "ckptlib coordinated save": lambda d: ckptlib.save(
            part, os.path.join(d, "model.ckpt"), coordinator=coordinator
        ),
        "ckptlib coordinated save, no fsync": lambda d: ckptlib.save(
            part, os.path.join(d, "model.ckpt"), coordinator=coordinator, sync=False
        ),
        "DCP save": lambda d: dcp.save(part, checkpoint_id=d),
        "ckptlib save, one process": lambda d: ckptlib.save(full, os.path.join(d, "model.ckpt")),
        "DCP save, one process (no_dist)": lambda d: dcp.save(full, checkpoint_id=d, no_dist=True),
    }

    def check(name: str, directory: str) -> None:
        """Rank 0, once: the checkpoint holds every key, and one tensor of each rank is right."""
        keys = set(full)
        if name.startswith("ckptlib"):
            reader = ckptlib.load_checkpoint(os.path.join(directory, "model.ckpt"))
            found = set(reader.get_variable_to_shape_map())
            for r in range(world):
                key = f"layer_{r * TENSORS_PER_RANK + TENSORS_PER_RANK - 1:03d}/weight"
                if not np.array_equal(reader.get_tensor(key), full[key].numpy()):
                    raise AssertionError(f"{name}: {key} differs from what was saved")
        else:
            metadata = dcp.FileSystemReader(directory).read_metadata()
            found = set(metadata.state_dict_metadata)
        if found != keys:
            raise AssertionError(f"{name}: {len(found)} keys saved, {len(keys)} expected")

    times: dict[str, list[float]] = {name: [] for name, _ in CONTENDERS}
    own: dict[str, list[float]] = {name: [] for name, _ in CONTENDERS}  # this rank's own call
    try:
        for round_ in range(args.warmup + args.repeat):
            timed = round_ >= args.warmup
            for index, (name, who) in enumerate(CONTENDERS):
                directory = path(index)
                saving = who == MULTI or rank == 0
                # untimed: a fresh directory, dirty pages flushed, memory the save fills touched
                if rank == 0:
                    shutil.rmtree(directory, ignore_errors=True)
                    os.makedirs(directory)
                    os.sync()
                dist.barrier()
                if saving:
                    np.ones(int(1.1 * (part_bytes if who == MULTI else full_bytes)), dtype=np.uint8)
                gc.collect()
                dist.barrier()
                t0 = time.perf_counter()
                if saving:
                    saves[name](directory)
                mine = time.perf_counter() - t0
                dist.barrier()
                elapsed = time.perf_counter() - t0
                if timed:
                    times[name].append(elapsed)
                    own[name].append(mine if saving else 0.0)
                if rank == 0:
                    if not timed:
                        check(name, directory)
                    shutil.rmtree(directory, ignore_errors=True)
            label = "warm-up" if not timed else f"round {round_ - args.warmup + 1}/{args.repeat}"
            log(f"  {label} done")
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, own)
        if rank == 0:
            result = {
                "ranks": world,
                "part_bytes": part_bytes,
                "full_bytes": full_bytes,
                "times": times,
                "own": gathered,
            }
            with open(os.path.join(work, "result.json"), "w") as f:
                json.dump(result, f)
    finally:
        dist.destroy_process_group()
    return 0


# -- the parent ------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(args: argparse.Namespace, work: str) -> dict[str, Any]:
    """Run the ranks (rank 0's progress on this stderr, the others' output in files shown if a
    rank fails) and return rank 0's results."""
    here = str(Path(__file__).resolve().parent)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), here, *filter(None, [os.environ.get("PYTHONPATH")])]),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": str(args.ranks),
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    }
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--rank-of",
        work,
        "--mib-per-rank",
        str(args.mib_per_rank),
        "--repeat",
        str(args.repeat),
        "--warmup",
        str(args.warmup),
        "--timeout",
        str(args.timeout),
    ]
    with contextlib.ExitStack() as stack:
        logs = [stack.enter_context(open(os.path.join(work, f"rank{r}.log"), "w+")) for r in range(args.ranks)]
        procs = [
            subprocess.Popen(
                argv,
                stdout=logs[r],
                stderr=None if r == 0 else logs[r],
                env={**env, "RANK": str(r)},
                cwd=str(ROOT),
            )
            for r in range(args.ranks)
        ]
        deadline = time.monotonic() + args.timeout
        try:
            for proc in procs:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            raise SystemExit(f"the ranks did not finish within {args.timeout} s") from None
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        failed = [r for r, proc in enumerate(procs) if proc.returncode != 0]
        if failed:
            for r in failed:
                logs[r].seek(0)
                print(f"--- rank {r}: exit {procs[r].returncode}\n{logs[r].read()[-5000:]}", file=sys.stderr)
            raise SystemExit(f"ranks {failed} failed")
    with open(os.path.join(work, "result.json")) as f:
        result: dict[str, Any] = json.load(f)
    return result


TARGETS = [  # (label, ours, theirs, goal: ratio = theirs / ours, >= goal; None: reported)
    ("4-rank coordinated save vs 4-rank DCP save", "ckptlib coordinated save", "DCP save", 1.0),
    ("4-rank coordinated save vs one process, ckptlib", "ckptlib coordinated save", "ckptlib save, one process", None),
    (
        "4-rank coordinated save vs one process, DCP",
        "ckptlib coordinated save",
        "DCP save, one process (no_dist)",
        None,
    ),
    ("DCP: 4-rank save vs one process (DCP's own scaling)", "DCP save", "DCP save, one process (no_dist)", None),
    ("one process: ckptlib save vs DCP save", "ckptlib save, one process", "DCP save, one process (no_dist)", None),
    (
        "4-rank coordinated save, no fsync vs 4-rank DCP save (fsync)",
        "ckptlib coordinated save, no fsync",
        "DCP save",
        None,
    ),
    (
        "4-rank coordinated save, no fsync vs with fsync (cost of durability)",
        "ckptlib coordinated save, no fsync",
        "ckptlib coordinated save",
        None,
    ),
]


def report(result: dict[str, Any], repeat: int) -> None:
    ranks, part, full = result["ranks"], result["part_bytes"], result["full_bytes"]
    times: dict[str, list[float]] = result["times"]
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    if os.environ.get("BENCH_VERBOSE"):
        for name, ts in times.items():
            print(f"  {name}: {' '.join(f'{t:.3f}' for t in ts)}", file=sys.stderr)
            per_rank = [rank_times[name] for rank_times in result["own"]]
            print(f"    each rank's own call: {per_rank}", file=sys.stderr)
    # of each round, the slowest rank's own save call: the rest of the wall time is the barriers
    slowest = {
        name: statistics.median(max(calls) for calls in zip(*(o[name] for o in result["own"]), strict=True))
        for name in times
    }
    print(
        f"\n## {ranks} ranks saving {part / MIB:.0f} MiB each ({full / MIB:.0f} MiB in all) vs one process "
        f"saving the same bytes, and vs DCP; medians of {repeat} rounds\n"
    )
    print("| operation | median s | best s | GiB/s | slowest own save call s |")
    print("|---|---:|---:|---:|---:|")
    for name, seconds in medians.items():
        print(
            f"| {name} | {seconds:.3f} | {min(times[name]):.3f} | {full / seconds / (1024 * MIB):.2f} "
            f"| {slowest[name]:.3f} |"
        )
    print("\n| target (medians) | ratio | goal |")
    print("|---|---:|---|")
    for label, ours, theirs, goal in TARGETS:
        ratio = medians[theirs] / medians[ours]
        verdict = "(reported)" if goal is None else f">= {goal}x {'ok' if ratio >= goal else 'MISSED'}"
        print(f"| {label} | {ratio:.2f}x | {verdict} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--mib-per-rank", type=float, default=256.0, help="each rank's part in MiB (default 256)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds the whole run may take")
    parser.add_argument("--dir", help="work directory (default: a temporary one under /tmp)")
    parser.add_argument("--rank-of", help=argparse.SUPPRESS)  # internal: run as one rank in this work directory
    args = parser.parse_args()
    if args.rank_of:
        args.work = args.rank_of
        return rank_main(args)
    work = tempfile.mkdtemp(prefix="ckptlib-bench-dist-", dir=args.dir or "/tmp")
    try:
        report(launch(args, work), args.repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
