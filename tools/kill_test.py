"""Kill a saving process at random instants and check that the last good checkpoint survives.

A child process saves a sequence of distinct states (sharded, with rotation) into one
directory, resuming from the latest checkpoint each time it starts. The parent SIGKILLs it
after a random delay, then checks that ``latest_checkpoint`` names a checkpoint that
restores, passes full verification, and holds exactly one of the states the child had
started saving: never a torn mix. Then it starts the child again, and so on.

    python tools/kill_test.py --kills 500            # prints a JSON summary; exit 1 on any failure
    python tools/kill_test.py --kills 500 --async    # the child saves with Saver(async_save=True)

The test suite runs this with a smaller count (tests/test_crash.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

import ckptlib
from ckptlib.store.temp_names import ASIDE_MARKER, TEMP_MARKER
from ckptlib.tree import STRUCTURE_KEY

# The state is one set of arrays changed in place for the next step right after each save
# returns, as an optimizer does: an asynchronous save must have copied it by then.
CHILD = r"""
import sys, numpy as np, ckptlib
sys.path.insert(0, {tools!r})
from kill_test import make_state, refill
directory, log = sys.argv[1], sys.argv[2]
latest = ckptlib.latest_checkpoint(directory)
step = int(latest.rsplit("-", 1)[1]) + 1 if latest else 0
saver = ckptlib.Saver(max_to_keep=3, num_shards=3, async_save={async_save})
state = make_state(step)
with open(log, "a") as out:
    while True:
        out.write(f"{{step}}\n"); out.flush()
        saver.save(state, directory + "/model.ckpt", global_step=step)
        step += 1
        refill(state, make_state(step))
"""


def make_state(step: int) -> dict[str, object]:
    """A state whose every tensor depends on ``step``, so a torn mix of two saves shows."""
    rng = np.random.default_rng(step)
    return {
        "dense": {"kernel": rng.standard_normal((512, 1024), dtype=np.float32), "bias": np.full(1024, step, np.int64)},
        "embedding": rng.standard_normal((2048, 256)).astype(np.float16),
        "step": np.int64(step),
        "note": f"state {step}".encode() * (step % 7 + 1),
    }


def refill(state: dict[str, object], new: dict[str, object]) -> None:
    """Give ``state`` the values of ``new``: arrays in place, other leaves replaced."""
    for key, value in new.items():
        if isinstance(value, dict):
            refill(state[key], value)  # type: ignore[arg-type]
        elif isinstance(value, np.ndarray) and value.ndim:
            np.copyto(state[key], value)  # type: ignore[arg-type]
        else:
            state[key] = value


def check_directory(directory: str, started: set[int]) -> int | None:
    """Assert the directory's latest checkpoint is intact and equals a state that was
    started; returns its step (None before the first completed save)."""
    latest = ckptlib.latest_checkpoint(directory)
    if latest is None:
        return None
    step = int(latest.rsplit("-", 1)[1])
    if step not in started:
        raise AssertionError(f"{latest}: step {step} was never started")
    with ckptlib.load_checkpoint(latest) as reader:
        problems = reader.verify()
        if problems:
            raise AssertionError(f"{latest} fails verification: {problems}")
        got = {name: reader.get_tensor(name) for name in reader.keys_list() if name != STRUCTURE_KEY}
    want = {
        "dense/kernel": make_state(step)["dense"]["kernel"],  # type: ignore[index]
        "dense/bias": np.full(1024, step, np.int64),
        "embedding": make_state(step)["embedding"],
        "step": np.int64(step),
        "note": f"state {step}".encode() * (step % 7 + 1),
    }
    if sorted(got) != sorted(want):
        raise AssertionError(f"{latest}: tensors {sorted(got)}")
    for name, value in want.items():
        if not np.array_equal(got[name], np.asarray(value, dtype=object if isinstance(value, bytes) else None)):
            raise AssertionError(f"{latest}: tensor {name} holds another state's values")
    return step


def stranded_checkpoints(directory: str) -> list[str]:
    """Checkpoints older than the latest that the state file no longer lists and that no
    deletion journal notes: nothing would ever delete them."""
    listed = ckptlib.get_checkpoint_state(directory)
    latest = ckptlib.latest_checkpoint(directory)
    if listed is None or latest is None:
        return []
    kept = {os.path.basename(p) for p in listed.all_model_checkpoint_paths}
    noted: set[str] = set()
    for name in os.listdir(directory):
        if name.endswith(".deleting"):
            with open(os.path.join(directory, name)) as f:
                noted.update(json.load(f))
    newest = int(latest.rsplit("-", 1)[1])
    unlisted = {
        name.split(".index")[0]
        for name in os.listdir(directory)
        if name.startswith("model.ckpt-") and name.endswith(".index")
    }
    return sorted(n for n in unlisted - kept - noted if int(n.rsplit("-", 1)[1]) < newest)


def _wait_for_growth(log: str, size: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Wait until the child has appended to ``log`` (it is about to save), or has exited."""
    deadline = time.monotonic() + timeout
    while os.path.getsize(log) <= size and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)


def run(directory: str, kills: int, seed: int, max_delay: float, async_save: bool = False) -> dict[str, object]:
    rng = random.Random(seed)
    tools = os.path.dirname(os.path.abspath(__file__))
    log = os.path.join(os.path.dirname(directory), "started.log")
    open(log, "a").close()  # a child killed before it starts writes nothing
    child = CHILD.format(tools=tools, async_save=async_save)
    survivors = mid_write = mid_rotation = mid_rotation_files = 0
    steps_seen = []
    known_orphans: set[str] = set()
    t0 = time.monotonic()
    for _ in range(kills):
        logged = os.path.getsize(log)
        proc = subprocess.Popen([sys.executable, "-c", child, directory, log])
        # Most kills are timed from the child's first save, so that a slow interpreter start
        # (imports alone can take a second on a loaded machine) cannot make them all land
        # before any save; the rest are timed from the start, to hit recovery and start-up.
        if rng.random() < 0.8:
            _wait_for_growth(log, logged, proc)
        time.sleep(rng.uniform(0.0, max_delay))
        if proc.poll() is not None:
            raise AssertionError(f"the saving child died by itself (exit {proc.returncode}) before the kill")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with open(log) as f:
            started = {int(line) for line in f if line.strip()}
        names = os.listdir(directory)
        if any(TEMP_MARKER in name for name in names):
            mid_write += 1  # killed while a data, index or state file was being written
        listed = ckptlib.get_checkpoint_state(directory)
        if listed is not None and not all(ckptlib.checkpoint_exists(p) for p in listed.all_model_checkpoint_paths):
            mid_rotation += 1
        on_disk = {name.split(".data-")[0].split(".index")[0] for name in names if name.startswith("model.ckpt-")}
        orphans = on_disk - {os.path.basename(p) for p in (listed.all_model_checkpoint_paths if listed else ())}
        orphans = {o for o in orphans if TEMP_MARKER not in o}
        if orphans - known_orphans:
            mid_rotation_files += 1  # killed after the state file dropped a checkpoint, before its deletion
            known_orphans.update(orphans)
        step = check_directory(directory, started)
        survivors += 1
        steps_seen.append(step)
    # A clean run afterwards must sweep the temporary files the killed children left.
    proc = subprocess.Popen([sys.executable, "-c", child, directory, log])
    deadline = time.monotonic() + 30
    first = check_directory(directory, set(range(10**6)))
    while time.monotonic() < deadline:
        time.sleep(0.2)
        latest = ckptlib.latest_checkpoint(directory)
        if latest is not None and (first is None or int(latest.rsplit("-", 1)[1]) > first + 1):
            break
    proc.send_signal(signal.SIGKILL)  # mid-save, most likely: its own leftovers go with the next save
    proc.wait()
    last = check_directory(directory, set(range(10**6)))
    step = (last or 0) + 1
    ckptlib.Saver(max_to_keep=3, num_shards=3).save(make_state(step), directory + "/model.ckpt", global_step=step)
    leftovers = [name for name in os.listdir(directory) if TEMP_MARKER in name or ASIDE_MARKER in name]
    if leftovers:
        raise AssertionError(f"stale temporary files were not swept: {leftovers}")
    stranded = stranded_checkpoints(directory)
    if stranded:
        raise AssertionError(f"rotated-out checkpoints left on disk for good: {stranded}")
    return {
        "kills": kills,
        "survivors": survivors,
        "distinct_latest_steps": len({s for s in steps_seen if s is not None}),
        "kills_before_first_checkpoint": sum(1 for s in steps_seen if s is None),
        "kills_leaving_temp_files": mid_write,
        "kills_orphaning_a_rotated_checkpoint": mid_rotation_files,
        "stranded_at_the_end": len(stranded),
        "kills_with_listed_incomplete": mid_rotation,
        "seconds": round(time.monotonic() - t0, 1),
        "async": async_save,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-delay", type=float, default=1.0, help="longest wait before a kill, seconds")
    parser.add_argument("--dir", help="work directory (default: a new temporary one)")
    parser.add_argument("--async", dest="async_save", action="store_true", help="the child saves asynchronously")
    args = parser.parse_args()
    base = args.dir or tempfile.mkdtemp(prefix="ckptlib-kill-")
    directory = os.path.join(base, "run")
    os.makedirs(directory, exist_ok=True)
    try:
        summary = run(directory, args.kills, args.seed, args.max_delay, args.async_save)
    except AssertionError as e:
        print(json.dumps({"failure": str(e)}))
        return 1
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
