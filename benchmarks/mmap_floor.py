"""ckptlib's memory-mapped restore against the leanest checksum-verifying reader, alone.

    python benchmarks/mmap_floor.py [--repeat 8]

The large state (bench.py) saved once with fsync and once without, and its bytes in one
raw file; then, round by round, three contenders each map everything, crc32c every byte
(in 32 MiB pieces on all cores) and touch every page: plain ndarrays over a raw
copy-on-write map, and ``ckptlib.restore`` of each checkpoint. Beside them, without
checksums: ``np.memmap`` slices of the raw file, and ``ckptlib.restore`` with
``verify_checksums=False``, both touching every page. Nothing else runs in the process
(bench.py's process also holds TensorFlow and several GiB of arrays).
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import sys
import tempfile
import time

import numpy as np

import ckptlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import crc_every_byte, large_state, touch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=8)
    args = parser.parse_args()
    state = large_state()
    arrays = list(state.values())
    with tempfile.TemporaryDirectory(prefix="ckptlib-bench-", dir=os.getcwd()) as work:
        raw = os.path.join(work, "raw.bin")
        ckptlib.save(state, os.path.join(work, "nosync"), sync=False)
        ckptlib.save(state, os.path.join(work, "sync"))
        with open(raw, "wb") as f:
            for a in arrays:
                a.tofile(f)

        def views() -> list[np.ndarray]:
            with open(raw, "rb") as f:
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            base = np.frombuffer(mapped, np.uint8)
            out, pos = [], 0
            for a in arrays:
                out.append(np.ndarray(a.shape, a.dtype, base, pos))
                pos += a.nbytes
            crc_every_byte(base)
            touch(out)
            return out

        def restore(name: str) -> dict[str, np.ndarray]:
            out = ckptlib.restore(os.path.join(work, name))
            touch(out.values())
            return out

        def memmap() -> list[np.ndarray]:
            mapped = np.memmap(raw, dtype=np.uint8, mode="c")
            out, pos = [], 0
            for a in arrays:
                out.append(mapped[pos : pos + a.nbytes].view(a.dtype))
                pos += a.nbytes
            touch(out)
            return out

        def unverified() -> dict[str, np.ndarray]:
            out = ckptlib.restore(os.path.join(work, "nosync"), verify_checksums=False)
            touch(out.values())
            return out

        contenders = {
            "raw mmap views + crc32c + touch": views,
            "ckptlib restore + touch (saved without fsync)": lambda: restore("nosync"),
            "ckptlib restore + touch (saved with fsync)": lambda: restore("sync"),
            "raw np.memmap + touch (no checksums)": memmap,
            "ckptlib restore, verify_checksums=False, + touch": unverified,
        }
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for round_ in range(args.repeat + 1):  # the first round warms up
            for name, op in contenders.items():
                t0 = time.perf_counter()
                result = op()
                elapsed = time.perf_counter() - t0
                del result
                if round_:
                    times[name].append(elapsed)
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    floor = medians["raw mmap views + crc32c + touch"]
    plain = medians["raw np.memmap + touch (no checksums)"]
    print("| operation | median s | ratio to the checksum floor | ratio to np.memmap |")
    print("|---|---:|---:|---:|")
    for name, seconds in medians.items():
        print(f"| {name} | {seconds:.4f} | {floor / seconds:.2f}x | {plain / seconds:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
