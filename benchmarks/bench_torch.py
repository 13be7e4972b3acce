"""A ~1 GiB torch ``state_dict``, saved and loaded into a model: ckptlib against ``torch.save`` /
``torch.load`` and safetensors, side by side in one run.

    python benchmarks/bench_torch.py --repeat 3

Every operation runs ``--repeat`` times after one untimed warm-up round, interleaved round by
round (``bench.Bench``); the tables show medians and the fastest round, then the target ratios
(the fastest contender of a target counts). Saves write into a path cleared beforehand, after
``os.sync()`` and a touch of as much memory as the save fills (both untimed, as in
``bench.py``). Loads end in the model's own tensors (``load_state_dict`` or a restore into
them), which reads every byte. ckptlib verifies every checksum and, saving, fsyncs; torch and
safetensors do neither (the ``+ fsync`` rows add an fsync of their file).
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from bench import MIB, Bench, drop, report, try_import
from torch import nn

import ckptlib
import ckptlib.torch


def large_model(seed: int = 0) -> nn.Module:
    """~1 GiB in 48 tensors of 1-64 MiB, every third bfloat16, in layers as a model holds them;
    the layout is the same for every seed, the values differ."""
    sizes = torch.randint(MIB, 64 * MIB, (48,), generator=torch.Generator().manual_seed(0)).tolist()
    scale = 1024 * MIB / sum(sizes)  # bytes
    gen = torch.Generator().manual_seed(seed)
    model = nn.Module()
    for i, nbytes in enumerate(sizes):
        dtype = torch.bfloat16 if i % 3 == 2 else torch.float32
        rows = int(nbytes * scale) // (256 * dtype.itemsize)
        layer = nn.Module()
        layer.register_parameter("weight", nn.Parameter(torch.randn(rows, 256, generator=gen).to(dtype), False))
        model.add_module(f"layer_{i:02d}", layer)
    return model


def state_bytes(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fresh(nbytes: int, *paths: str) -> Callable[[], None]:
    """Untimed, before each operation: delete what a save will write, flush dirty pages, and
    touch as much memory as the operation fills (see ``bench.py``: this VM hands freed memory
    back to its host, and touching it again is slow and erratic; loads allocate as much as
    saves fill in the page cache)."""

    def prepare() -> None:
        for path in paths:
            for name in glob.glob(glob.escape(path) + "*"):
                drop(name)
        os.sync()
        np.ones(int(1.1 * nbytes), dtype=np.uint8)

    return prepare


def bench_torch(work: str, repeat: int, safetensors_on: bool) -> dict[str, float]:
    model = large_model()
    state = model.state_dict()
    nbytes = state_bytes(state)
    print(f"torch state_dict: {len(state)} tensors, {nbytes / MIB:.0f} MiB", file=sys.stderr)
    target = large_model(seed=1)  # the model a load fills: same layout, other values
    prefix, nosync, pt = (os.path.join(work, n) for n in ("ck/model", "ck-nosync/model", "model.pt"))

    def torch_save(sync: bool) -> None:
        torch.save(state, pt)
        if sync:
            fsync_file(pt)

    def torch_load(mmap: bool) -> None:
        target.load_state_dict(torch.load(pt, mmap=mmap, weights_only=True))

    bench = Bench(repeat)
    tree = ckptlib.torch.state(model=model)  # {"model": state_dict}, as a training job saves it
    bench.add("ckptlib save", lambda: ckptlib.save(tree, prefix), fresh(nbytes, prefix))
    bench.add("ckptlib save, no fsync", lambda: ckptlib.save(tree, nosync, sync=False), fresh(nbytes, nosync))
    bench.add("torch.save", lambda: torch_save(False), fresh(nbytes, pt))
    bench.add("torch.save + fsync", lambda: torch_save(True), fresh(nbytes, pt))
    warm = fresh(nbytes)
    into = {"model": target.state_dict()}
    bench.add("ckptlib restore into state_dict", lambda: ckptlib.restore(prefix, into=into), warm)
    bench.add("ckptlib.torch.restore(model=)", lambda: ckptlib.torch.restore(prefix, model=target), warm)
    bench.add("ckptlib restore into state_dict, mmap=True", lambda: ckptlib.restore(prefix, into=into, mmap=True), warm)
    bench.add(
        "ckptlib.torch.restore(model=, mmap=True)",
        lambda: ckptlib.torch.restore(prefix, model=target, mmap=True),
        warm,
    )
    bench.add(
        "ckptlib.torch.load + load_state_dict",
        lambda: target.load_state_dict(ckptlib.torch.load(prefix)["model"]),
        warm,
    )
    bench.add(
        "ckptlib restore into, no checksums",
        lambda: ckptlib.restore(prefix, into=into, verify_checksums=False),
        warm,
    )
    bench.add("torch.load(mmap=True) + load_state_dict", lambda: torch_load(True), warm)
    bench.add("torch.load + load_state_dict", lambda: torch_load(False), warm)
    st = try_import("safetensors.torch") if safetensors_on else None
    if st is not None:
        stp = os.path.join(work, "model.safetensors")

        def st_save(sync: bool) -> None:
            st.save_file(state, stp)
            if sync:
                fsync_file(stp)

        bench.add("safetensors save_file", lambda: st_save(False), fresh(nbytes, stp))
        bench.add("safetensors save_file + fsync", lambda: st_save(True), fresh(nbytes, stp))
        bench.add("safetensors load_file + load_state_dict", lambda: target.load_state_dict(st.load_file(stp)), warm)

        def st_checked() -> None:
            crc32c_of_file(stp)  # what verifying costs: one more pass over the bytes, as ckptlib makes
            target.load_state_dict(st.load_file(stp))

        bench.add("safetensors + a crc32c pass over its file + load_state_dict", st_checked, warm)
    return bench.run()


def crc32c_of_file(path: str) -> int:
    """crc32c of every byte of ``path`` (through a map, in 8 MiB pieces on every core), the
    checksum pass a verifying loader would add; the pieces' values are not combined."""
    import mmap

    import crc32c

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        view = memoryview(m)
        piece = 8 * MIB
        try:
            with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
                return sum(pool.map(lambda at: crc32c.crc32c(view[at : at + piece]), range(0, len(m), piece)))
        finally:
            view.release()


TARGETS = [
    ("save (fsync) vs torch.save (no fsync)", "ckptlib save", "torch.save", 1.0),
    ("save (fsync) vs torch.save + fsync", "ckptlib save", "torch.save + fsync", 1.0),
    ("save (fsync) vs safetensors (no fsync; within 1.2x => >= 0.83)", "ckptlib save", "safetensors save_file", 0.83),
    ("save (fsync) vs safetensors + fsync (>= 0.83)", "ckptlib save", "safetensors save_file + fsync", 0.83),
    ("save, no fsync, vs safetensors (>= 0.83)", "ckptlib save, no fsync", "safetensors save_file", 0.83),
    (
        "restore into vs torch.load(mmap) + load_state_dict",
        "ckptlib restore into state_dict",
        "torch.load(mmap=True) + load_state_dict",
        1.0,
    ),
    (
        "restore into vs safetensors (>= 0.83)",
        "ckptlib restore into state_dict",
        "safetensors load_file + load_state_dict",
        0.83,
    ),
    (
        "ckptlib.torch.restore vs safetensors (>= 0.83)",
        "ckptlib.torch.restore(model=)",
        "safetensors load_file + load_state_dict",
        0.83,
    ),
    (
        "restore into, mmap=True, vs safetensors (>= 0.83)",
        "ckptlib restore into state_dict, mmap=True",
        "safetensors load_file + load_state_dict",
        0.83,
    ),
    (
        "ckptlib.torch.restore, mmap=True, vs safetensors (>= 0.83)",
        "ckptlib.torch.restore(model=, mmap=True)",
        "safetensors load_file + load_state_dict",
        0.83,
    ),
    (
        "restore into, mmap=True, vs torch.load(mmap) + load_state_dict",
        "ckptlib restore into state_dict, mmap=True",
        "torch.load(mmap=True) + load_state_dict",
        1.0,
    ),
    (
        "restore into, mmap=True, vs safetensors + a crc32c pass (both verify)",
        "ckptlib restore into state_dict, mmap=True",
        "safetensors + a crc32c pass over its file + load_state_dict",
        0.83,
    ),
    (
        "ckptlib.torch.restore vs safetensors + a crc32c pass (both verify)",
        "ckptlib.torch.restore(model=)",
        "safetensors + a crc32c pass over its file + load_state_dict",
        0.83,
    ),
    (
        "ckptlib.torch.load + load_state_dict vs safetensors (>= 0.83)",
        "ckptlib.torch.load + load_state_dict",
        "safetensors load_file + load_state_dict",
        0.83,
    ),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", help="work directory (default: a temporary one under the current directory)")
    parser.add_argument("--no-safetensors", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    work = args.dir or tempfile.mkdtemp(prefix="ckptlib-bench-torch-", dir=os.getcwd())
    os.makedirs(work, exist_ok=True)
    try:
        medians = bench_torch(work, args.repeat, not args.no_safetensors)
        report("a ~1 GiB torch state_dict: save, and load into a model", medians, TARGETS)
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
