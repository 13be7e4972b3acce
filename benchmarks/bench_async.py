"""Asynchronous saves in a simulated training loop: how long the loop is blocked per save, and how
much slower the loop runs, with synchronous saves, ckptlib's asynchronous saves and PyTorch
DCP's ``async_save``, against a loop that never saves; numpy and torch states side by side.

    python benchmarks/bench_async.py                      # ~1 GiB state, numpy and torch
    python benchmarks/bench_async.py --gib 0.25 --repeat 3

A loop runs ``--steps`` steps; each step updates the state in place (a small slice of every
tensor, as an optimizer writes its parameters) and then computes for a fixed amount of work
(``--compute cpu``: small numpy operations on the training thread, holding the GIL most of the
time, as a Python training loop does; ``--compute sleep``: the host waits, as for an
accelerator), calibrated once to take ``--step-s`` seconds alone (``auto``: as long as one
synchronous ckptlib save of the state). After every ``--save-every``-th step but the last it
saves. Every mode runs one whole loop per round, interleaved round by round after
``--warmup`` untimed rounds (``bench.Bench``'s style); each keeps one saver for the whole run, as
a training job does, so only its first save ever allocates (reported apart). Before each loop,
untimed: ``os.sync()`` and a touch of as much memory as one save fills (see ``bench.py``).

The floor is ``np.copyto`` of every tensor into preallocated buffers (touched beforehand),
timed as often as the loop saves: no snapshot can cost less. Targets: blocked time per save at
most 1.25x the floor and at most 25% of a synchronous durable save's (both medians of the
steady-state saves); the loop's slowdown from saving, (loop with saves - loop without) / loop
without, is reported for every mode. The DCP rows use ``torch.distributed.checkpoint``'s
defaults (``FileSystemWriter``, fsync on) in one process (``no_dist=True``: no process group),
one directory per checkpoint, the two newest kept; at most one save is in flight (the next
save first waits on the previous future), as with ckptlib.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from bench import MIB

import ckptlib

GIB = 1024 * MIB


# -- the states -------------------------------------------------------------------------------
def numpy_state(gib: float, seed: int = 0) -> dict[str, np.ndarray]:
    """``gib`` GiB of float32 in ~160 tensors of 1-12 MiB (at 1 GiB), as a model's layers hold
    them; the layout scales with ``gib``."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(MIB, 12 * MIB, 160).astype(np.float64)
    counts = (sizes * (gib * GIB / sizes.sum()) // 4).astype(np.int64)
    return {
        f"layer_{i:03d}/{'kernel' if i % 2 else 'bias'}": rng.standard_normal(int(n), np.float32)
        for i, n in enumerate(counts)
    }


def torch_state(gib: float) -> dict[str, Any]:
    """The same layout as a torch ``state_dict`` (CPU tensors allocated by torch)."""
    import torch

    state = {}
    for name, array in numpy_state(gib, seed=1).items():
        tensor = torch.empty(array.shape, dtype=torch.float32)
        np.copyto(tensor.numpy(), array)
        state[name] = tensor
    return state


def arrays_of(state: dict[str, Any]) -> list[np.ndarray]:
    """numpy views of every tensor (torch tensors share their memory)."""
    return [v if isinstance(v, np.ndarray) else v.numpy() for v in state.values()]


def state_bytes(state: dict[str, Any]) -> int:
    return sum(a.nbytes for a in arrays_of(state))


# -- the training step ---------------------------------------------------------------------
class Step:
    """One training step: an in-place update of the first 4 KiB of every tensor, then a fixed
    amount of compute, calibrated to ``seconds`` when run alone."""

    def __init__(self, state: dict[str, Any], compute: str, seconds: float):
        self.views = [a[:1024] for a in arrays_of(state)]
        self.compute = compute
        self.seconds = seconds
        self.scratch = np.ones(4096, np.float32)
        self.iters = 0
        if compute == "cpu":
            n = 2000
            while True:
                t0 = time.perf_counter()
                self._work(n)
                elapsed = time.perf_counter() - t0
                if elapsed > 0.05:
                    break
                n *= 4
            per = min(elapsed / n, self._time(n) / n)
            self.iters = max(1, round(seconds / per))

    def _time(self, n: int) -> float:
        t0 = time.perf_counter()
        self._work(n)
        return time.perf_counter() - t0

    def _work(self, n: int) -> None:
        x = self.scratch
        for _ in range(n):
            np.multiply(x, 1.0000001, out=x)

    def __call__(self) -> None:
        for view in self.views:
            np.multiply(view, 1.0001, out=view)  # the state changes every step
        if self.compute == "cpu":
            self._work(self.iters)
        else:
            time.sleep(self.seconds)


# -- the contenders ------------------------------------------------------------------------
class Contender:
    """What the loop calls: ``save(state, step)`` at a save step, ``wait()`` after the last step."""

    first: float | None = None  # the blocked time of this saver's very first save
    waited: float = 0.0  # of the last save's blocked time, waiting for the previous save (where known)

    def save(self, state: dict[str, Any], step: int) -> None:
        raise NotImplementedError

    def wait(self) -> None:
        pass

    def close(self) -> None:
        self.wait()


class CkptlibSync(Contender):
    """``ckptlib.Saver`` with its defaults: fsync of data, index and directory."""

    def __init__(self, directory: str, keep: int):
        self.saver = ckptlib.Saver(max_to_keep=keep)
        self.prefix = os.path.join(directory, "model.ckpt")

    def save(self, state: dict[str, Any], step: int) -> None:
        self.saver.save(state, self.prefix, global_step=step)


class CkptlibAsync(Contender):
    """``ckptlib.Saver(async_save=True)``: ``save`` returns once the state is snapshotted; at most
    one save in flight (the default)."""

    def __init__(self, directory: str, keep: int):
        self.saver = ckptlib.Saver(max_to_keep=keep, async_save=True)
        self.prefix = os.path.join(directory, "model.ckpt")

    def save(self, state: dict[str, Any], step: int) -> None:
        self.saver.save(state, self.prefix, global_step=step)

    def wait(self) -> None:
        self.saver.wait()


class DCP(Contender):
    """``torch.distributed.checkpoint.async_save`` (``sync=False``: ``dcp.save``) into a fresh
    directory per checkpoint, in this process alone (``no_dist=True``); the two newest kept,
    older ones deleted once a newer one is durable (in the writer thread, as ckptlib rotates).
    ``reuse_stager``: one caller-owned ``DefaultStager`` for every save, which keeps its CPU
    copies from one save to the next; by default ``async_save`` makes a new one per save,
    which allocates the snapshot afresh every time."""

    def __init__(self, directory: str, keep: int, asynchronous: bool = True, reuse_stager: bool = False):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

        self.dcp = dcp
        self.directory = directory
        self.keep = keep
        self.asynchronous = asynchronous
        self.stager = DefaultStager(StagingOptions(False, False, False, False)) if reuse_stager else None
        self.paths: list[str] = []
        self.future: Any = None

    def save(self, state: dict[str, Any], step: int) -> None:
        t0 = time.perf_counter()
        self.wait()
        self.waited = time.perf_counter() - t0
        path = os.path.join(self.directory, f"ckpt-{step}")
        self.paths.append(path)
        old, self.paths = self.paths[: -self.keep], self.paths[-self.keep :]

        def rotate(*_: Any) -> None:
            for p in old:
                shutil.rmtree(p, ignore_errors=True)

        if not self.asynchronous:
            self.dcp.save(state, checkpoint_id=path, no_dist=True)
            rotate()
            return
        future: Any = self.dcp.async_save(state, checkpoint_id=path, no_dist=True, async_stager=self.stager)
        future = getattr(future, "upload_completion", future)  # an AsyncSaveResponse with async staging

        def done(f: Any) -> None:
            if f.exception() is None:
                rotate()

        future.add_done_callback(done)
        self.future = future

    def wait(self) -> None:
        if self.future is not None:
            future, self.future = self.future, None
            future.result()

    def close(self) -> None:
        self.wait()
        if self.stager is not None:
            self.stager.close()


# -- the harness ---------------------------------------------------------------------------
class Floor:
    """``np.copyto`` of every tensor into buffers allocated and touched once."""

    def __init__(self, state: dict[str, Any]):
        self.src = arrays_of(state)
        self.dst = [np.empty_like(a) for a in self.src]
        self.copy()

    def copy(self) -> None:
        for dst, src in zip(self.dst, self.src, strict=True):
            np.copyto(dst, src)


class TorchCopy(Floor):
    """The same into torch tensors with ``copy_`` (torch's own copy, on its intra-op threads)."""

    def __init__(self, state: dict[str, Any]):
        import torch

        self.src: list[Any] = list(state.values())
        self.dst: list[Any] = [torch.empty_like(t) for t in self.src]
        self.copy()

    def copy(self) -> None:
        for dst, src in zip(self.dst, self.src, strict=True):
            dst.copy_(src)


class Result:
    def __init__(self) -> None:
        self.loops: list[float] = []
        self.blocked: list[float] = []  # every timed save's blocked time
        self.waited: list[float] = []  # of which waiting for the previous save (DCP)
        self.final_waits: list[float] = []
        self.first: float | None = None


def prepare(nbytes: int) -> None:
    """Untimed, before each loop: flush dirty pages; touch as much memory as one save fills."""
    os.sync()
    np.ones(int(1.1 * nbytes), dtype=np.uint8)
    gc.collect()


def run_loop(
    step: Step, state: dict[str, Any], contender: Contender | None, steps: int, every: int, counter: list[int]
) -> tuple[float, list[float], list[float], float]:
    """One loop: its wall time (until the last save is durable), each save's blocked time and
    how much of it went to waiting for the previous save (where the harness can tell), and the
    time of the final ``wait()``."""
    blocked, waited = [], []
    t0 = time.perf_counter()
    for i in range(1, steps + 1):
        step()
        if contender is not None and i % every == 0 and i < steps:
            counter[0] += 1
            t = time.perf_counter()
            contender.save(state, counter[0])
            blocked.append(time.perf_counter() - t)
            waited.append(contender.waited)
    t = time.perf_counter()
    if contender is not None:
        contender.wait()
    end = time.perf_counter()
    return end - t0, blocked, waited, end - t


def bench_loop(
    title: str,
    state: dict[str, Any],
    contenders: dict[str, Callable[[str], Contender]],
    floors: dict[str, Floor],
    args: argparse.Namespace,
    work: str,
) -> None:
    nbytes = state_bytes(state)
    print(f"{title}: {len(state)} tensors, {nbytes / MIB:.0f} MiB", file=sys.stderr)
    step_s = args.step_s
    if step_s == "auto":
        with tempfile.TemporaryDirectory(dir=work) as calib:
            saver = CkptlibSync(calib, 1)
            times = []
            for i in range(2):
                prepare(nbytes)
                t0 = time.perf_counter()
                saver.save(state, i)
                times.append(time.perf_counter() - t0)
        seconds = times[-1]
    else:
        seconds = float(step_s)
    step = Step(state, args.compute, seconds)
    print(
        f"  a step: {seconds:.3f} s of '{args.compute}' compute; {args.steps} steps, a save every {args.save_every}",
        file=sys.stderr,
    )
    saves_per_loop = len([i for i in range(1, args.steps + 1) if i % args.save_every == 0 and i < args.steps])
    made = {name: make(os.path.join(work, f"{title}-{i}")) for i, (name, make) in enumerate(contenders.items())}
    for i in range(len(made)):
        os.makedirs(os.path.join(work, f"{title}-{i}"), exist_ok=True)
    results = {name: Result() for name in ["no saves", *made]}
    floor_times: dict[str, list[float]] = {name: [] for name in floors}
    counters = {name: [0] for name in made}
    try:
        for round_ in range(args.warmup + args.repeat):
            timed = round_ >= args.warmup
            for name, result in results.items():
                contender = made.get(name)
                prepare(nbytes)
                loop, blocked, waited, final = run_loop(
                    step, state, contender, args.steps, args.save_every, counters.get(name, [0])
                )
                if contender is not None and result.first is None:
                    result.first = blocked[0]
                    if timed:  # no warm-up: the first save is not a steady-state one
                        blocked, waited = blocked[1:], waited[1:]
                if timed:
                    result.loops.append(loop)
                    result.blocked.extend(blocked)
                    result.waited.extend(waited)
                    result.final_waits.append(final)
            for name, floor in floors.items():
                for _ in range(saves_per_loop):
                    t0 = time.perf_counter()
                    floor.copy()
                    if timed:
                        floor_times[name].append(time.perf_counter() - t0)
            label = "warm-up" if not timed else f"round {round_ - args.warmup + 1}/{args.repeat}"
            print(f"  {label} done", file=sys.stderr)
    finally:
        for contender in made.values():
            contender.close()
    if os.environ.get("BENCH_VERBOSE"):
        for name, r in results.items():
            print(
                f"  {name}: loops {' '.join(f'{t:.3f}' for t in r.loops)}; "
                f"saves {' '.join(f'{t:.3f}' for t in r.blocked)}",
                file=sys.stderr,
            )
        for name, ts in floor_times.items():
            print(f"  {name}: {' '.join(f'{t:.3f}' for t in ts)}", file=sys.stderr)
    report(title, nbytes, seconds, args, results, {n: statistics.median(ts) for n, ts in floor_times.items()})


def report(
    title: str,
    nbytes: int,
    seconds: float,
    args: argparse.Namespace,
    results: dict[str, Result],
    floors: dict[str, float],
) -> None:
    base = statistics.median(results["no saves"].loops)
    print(
        f"\n## {title}: {nbytes / MIB:.0f} MiB; {args.steps} steps of {seconds:.3f} s ({args.compute}), "
        f"a save every {args.save_every}; medians of {args.repeat} rounds\n"
    )
    print(
        "| mode | loop s | step s | slowdown from saving | blocked per save s (steady) "
        "| of which waiting for the previous save | first save s | final wait s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    blocked: dict[str, float] = {}
    for name, r in results.items():
        loop = statistics.median(r.loops)
        if r.blocked:
            blocked[name] = statistics.median(r.blocked)
        cells = [
            f"{loop:.3f}",
            f"{loop / args.steps:.3f}",
            "-" if name == "no saves" else f"{(loop - base) / base:+.1%}",
            f"{blocked[name]:.3f}" if name in blocked else "-",
            f"{statistics.median(r.waited):.3f}" if r.waited and any(r.waited) else "-",
            f"{r.first:.3f}" if r.first is not None else "-",
            f"{statistics.median(r.final_waits):.3f}" if name != "no saves" else "-",
        ]
        print(f"| {name} | {' | '.join(cells)} |")
    for name, t in floors.items():
        print(f"| {name} (no loop; one copy of the state) | | | | {t:.3f} | | | |")
    print("\n| target (medians) | ratio | goal |")
    print("|---|---:|---|")

    def line(label: str, num: str, den: str | list[str], goal: float | None) -> None:
        dens = [d for d in ([den] if isinstance(den, str) else den) if d in blocked or d in floors]
        if num not in blocked or not dens:
            return
        ref = min(blocked.get(d, floors.get(d, 0.0)) for d in dens)  # against the fastest of them
        ratio = blocked[num] / ref
        verdict = "(reported)" if goal is None else f"<= {goal}x {'ok' if ratio <= goal else 'MISSED'}"
        print(f"| {label} | {ratio:.2f}x | {verdict} |")

    ours = next((n for n in results if n.startswith("ckptlib async")), None)
    if ours is not None:
        line(f"{ours}: blocked per save / np.copyto floor", ours, "np.copyto (floor)", 1.25)
        line(f"{ours}: blocked per save / sync durable save", ours, "ckptlib sync save", 0.25)
        line(f"{ours}: blocked per save / torch copy_ of the state", ours, "torch copy_", None)
        dcp_async = [n for n in results if n.startswith("DCP async_save")]
        line(f"{ours}: blocked per save / DCP async_save (fastest)", ours, dcp_async, None)
        for n in dcp_async:
            line(f"{ours}: blocked per save / {n}", ours, n, None)
            loop, other = statistics.median(results[ours].loops), statistics.median(results[n].loops)
            print(f"| {ours}: loop time / {n}'s | {loop / other:.2f}x | (reported) |")
    for name in blocked:
        if name.startswith("DCP async_save"):
            line(f"{name}: blocked per save / np.copyto floor", name, "np.copyto (floor)", None)
    for name, r in results.items():
        if name != "no saves":
            loop = statistics.median(r.loops)
            print(f"| loop slowdown from saving, {name} | {(loop - base) / base:+.1%} | (reported) |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.0, help="state size in GiB (default 1.0)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--save-every", type=int, default=2, help="save after every n-th step but the last")
    parser.add_argument("--step-s", default="auto", help="seconds a step computes (auto: one sync save's time)")
    parser.add_argument("--compute", choices=["cpu", "sleep"], default="cpu")
    parser.add_argument("--only", choices=["numpy", "torch"], help="one of the two states")
    parser.add_argument("--no-dcp-sync", action="store_true", help="leave out DCP's synchronous dcp.save")
    parser.add_argument("--dir", help="work directory (default: a temporary one under /tmp)")
    args = parser.parse_args()
    if args.save_every < 1 or args.steps <= args.save_every:
        parser.error("--steps must exceed --save-every")
    work = tempfile.mkdtemp(prefix="ckptlib-bench-async-", dir=args.dir or "/tmp")
    our_name = "ckptlib async save"

    def ours(directory: str) -> Contender:
        return CkptlibAsync(directory, 2)

    try:
        if args.only in (None, "numpy"):
            state = numpy_state(args.gib)
            bench_loop(
                "numpy state",
                state,
                {"ckptlib sync save": lambda d: CkptlibSync(d, 2), our_name: ours},
                {"np.copyto (floor)": Floor(state)},
                args,
                work,
            )
            del state
            gc.collect()
        if args.only in (None, "torch"):
            import torch

            torch.set_num_threads(os.cpu_count() or 1)
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            state = torch_state(args.gib)
            contenders: dict[str, Callable[[str], Contender]] = {
                "ckptlib sync save": lambda d: CkptlibSync(d, 2),
                our_name: ours,
                "DCP async_save": lambda d: DCP(d, 2),
                "DCP async_save, reused stager": lambda d: DCP(d, 2, reuse_stager=True),
            }
            if not args.no_dcp_sync:
                contenders["DCP save (sync)"] = lambda d: DCP(d, 2, asynchronous=False)
            bench_loop(
                "torch state_dict",
                state,
                contenders,
                {"np.copyto (floor)": Floor(state), "torch copy_": TorchCopy(state)},
                args,
                work,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
