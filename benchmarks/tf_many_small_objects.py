"""One-off: TensorFlow's object-based and TF1 savers on the many-small state (50,000 tensors).

bench.py leaves these out of its repeated rounds because TensorFlow needs minutes just to
build 50,000 variables; this script times one save and one restore of each, beside
ckptlib's, in one run:

    python benchmarks/tf_many_small_objects.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tensorflow as tf
from bench import TF2Objects, many_small_state, touch

import ckptlib


def timed(label: str, op) -> float:  # type: ignore[no-untyped-def]
    os.sync()
    t0 = time.perf_counter()
    op()
    elapsed = time.perf_counter() - t0
    print(f"| {label} | {elapsed:.3f} |", flush=True)
    return elapsed


def main() -> None:
    state = many_small_state()
    with tempfile.TemporaryDirectory(prefix="ckptlib-bench-", dir=os.getcwd()) as work:
        run(state, work)


def run(state: dict, work: str) -> None:  # type: ignore[type-arg]
    t0 = time.perf_counter()
    objects = TF2Objects(tf, state)
    print(f"(building {len(state)} tf.Variables took {time.perf_counter() - t0:.1f} s, untimed)")
    print("| operation | seconds |\n|---|---:|")
    ck = timed("ckptlib save (fsync)", lambda: ckptlib.save(state, os.path.join(work, "ck/model")))
    tf_write = timed("TF2 Checkpoint.write", lambda: objects.write(os.path.join(work, "tf2/model")))
    ck_read = timed("ckptlib restore + touch", lambda: touch(ckptlib.restore(os.path.join(work, "ck/model")).values()))
    tf_read = timed("TF2 Checkpoint.read", lambda: objects.read(os.path.join(work, "tf2/model")))
    print(f"\nsave: ckptlib {tf_write / ck:.1f}x faster; restore: ckptlib {tf_read / ck_read:.1f}x faster")


if __name__ == "__main__":
    main()
