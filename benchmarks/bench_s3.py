"""ckptlib on S3 against plain s3fs transfers of the same bytes, on a local moto server.

    python benchmarks/bench_s3.py                       # 1 GiB in 64 float32 tensors, --repeat 3
    python benchmarks/bench_s3.py --repeat 1 --warmup 0 # 1 GiB once (moto grows to ~10 GiB)
    python benchmarks/bench_s3.py --gib 0.25 --repeat 5
    python benchmarks/bench_s3.py --cases open-one      # only the 100,000-tensor open + read one

The script starts one moto server (``tests/s3_server.py``: a Python process keeping every
object in memory) on 127.0.0.1 and compares, round by round (as ``bench.py``):

- save: ``ckptlib.save`` (sync on) to ``s3://bucket/run/model.ckpt``, one shard and
  ``--shards``, against ``fs.pipe_file`` of the same bytes as one object and ``fs.pipe`` of a
  dict of ``--shards`` objects (plain ``s3fs.S3FileSystem``, its defaults);
- restore: ``ckptlib.restore(prefix)`` (checksums on, private memory) against
  ``fs.cat_file`` of the one-shard checkpoint's data file and ``fs.cat`` of the sharded
  one's data files;
- open-one: ``ckptlib.load_checkpoint(prefix).get_tensor(key)`` on a checkpoint of
  ``--small`` tensors of 16 float32, through a ``FaultProxy`` in front of moto that counts
  the HTTP requests and response bytes.

Absolute speeds are moto's (a Python server sharing the machine's cores with the client):
read the ratios, not the seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repository: ckptlib and tests/s3_server.py

from bench import BEST, Bench  # noqa: E402

import ckptlib  # noqa: E402
import ckptlib.store  # noqa: E402
from tests.s3_server import TEST_ENV, FaultProxy, MotoServer, make_store, new_bucket  # noqa: E402

# moto answers every GET, ranged or not, by reading its whole object out of a temporary file
# (``FakeKey.value``) and then slicing: a ranged GET of 8 MiB from a 1 GiB object costs it a
# 1 GiB copy, which S3 does not do and which punishes any reader that fetches in ranges in
# proportion to how many it makes. With ``--moto sliced`` (the default) the server keeps
# each object's bytes once read, so that a ranged GET costs its range.
SLICED_MOTO = """
import runpy, sys
from moto.s3 import models
stock = models.FakeKey.value
def get(self):
    data = self.__dict__.get("_bench_bytes")
    if data is None:
        data = self.__dict__["_bench_bytes"] = stock.fget(self)
    return data
def set(self, value):
    self.__dict__.pop("_bench_bytes", None)
    stock.fset(self, value)
models.FakeKey.value = property(get, set)
runpy.run_module("moto.server", run_name="__main__", alter_sys=True)
"""


class SlicedMotoServer(MotoServer):
    """``MotoServer`` with ``SLICED_MOTO``'s ranged GETs: its command line, with the patch."""

    def __init__(self) -> None:
        real = subprocess.Popen

        def popen(command: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
            assert command[1:3] == ["-m", "moto.server"], command
            return real([command[0], "-c", SLICED_MOTO, *command[3:]], **kwargs)  # type: ignore[call-overload]

        subprocess.Popen = popen  # type: ignore[assignment,misc]
        try:
            super().__init__()
        finally:
            subprocess.Popen = real  # type: ignore[misc]


MIB = 1 << 20
GIB = 1 << 30


def state_of(total: int, count: int) -> dict[str, np.ndarray]:
    """``count`` float32 tensors of ``total`` bytes together."""
    rng = np.random.default_rng(0)
    each = total // count // 4
    return {f"layer_{i:03d}/kernel": rng.random(each, dtype=np.float32) for i in range(count)}


def data_files(fs: object, prefix: str) -> list[str]:
    names = sorted(p for p in fs.ls(os.path.dirname(prefix), refresh=True) if ".data-" in p)  # type: ignore[attr-defined]
    return [f"s3://{p}" for p in names]


def clear(fs: object, directory: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        fs.rm(directory, recursive=True)  # type: ignore[attr-defined]


def bench_transfer(bucket: str, fs: object, args: argparse.Namespace) -> dict[str, float]:
    state = state_of(int(args.gib * GIB), args.tensors)
    nbytes = sum(a.nbytes for a in state.values())
    n = args.shards
    print(f"transfer: {len(state)} tensors, {nbytes / MIB:.0f} MiB, {n} shards", file=sys.stderr)
    blob = b"".join(a.tobytes() for a in state.values())
    quarter = -(-len(blob) // n)
    pieces = {f"{bucket}/raw{n}/part-{i}.bin": blob[i * quarter : (i + 1) * quarter] for i in range(n)}
    run, one, many = f"{bucket}/run", f"{bucket}/r1/model.ckpt", f"{bucket}/r{n}/model.ckpt"
    one_files: list[str] = []
    many_files: list[str] = []
    if "save" not in args.cases:
        ckptlib.save(state, one)
        ckptlib.save(state, many, num_shards=n)
        one_files, many_files = data_files(fs, one), data_files(fs, many)

    bench = Bench(args.repeat, args.warmup)
    if "restore" not in args.cases:
        bench.add("ckptlib save, 1 shard", lambda: ckptlib.save(state, f"{run}/model.ckpt"), lambda: clear(fs, run))
        bench.add(
            f"ckptlib save, {n} shards",
            lambda: ckptlib.save(state, f"{run}/model.ckpt", num_shards=n),
            lambda: clear(fs, run),
        )
        bench.add("raw pipe_file, 1 object", lambda: fs.pipe_file(f"{bucket}/raw1/one.bin", blob))  # type: ignore[attr-defined]
        bench.add(f"raw pipe, {n} objects", lambda: fs.pipe(pieces))  # type: ignore[attr-defined]
    if "save" not in args.cases:
        bench.add("ckptlib restore, 1 shard", lambda: ckptlib.restore(one))
        bench.add(f"ckptlib restore, {n} shards", lambda: ckptlib.restore(many))
        bench.add("raw cat_file, 1 object", lambda: fs.cat_file(one_files[0]))  # type: ignore[attr-defined]
        bench.add(f"raw cat, {n} objects", lambda: fs.cat(many_files))  # type: ignore[attr-defined]
    medians = bench.run()
    clear(fs, f"{bucket}/raw1")
    clear(fs, f"{bucket}/raw{n}")
    print(f"\n## transfer: {nbytes / MIB:.0f} MiB in {len(state)} float32 tensors, --repeat {args.repeat}\n")
    print("| operation | median s | best s | MiB/s (median) |")
    print("|---|---:|---:|---:|")
    for name, seconds in medians.items():
        print(f"| {name} | {seconds:.3f} | {BEST[name]:.3f} | {nbytes / MIB / seconds:.0f} |")
    # (label, ckptlib row, the raw rows it is compared with: the fastest of them counts)
    uploads = ["raw pipe_file, 1 object", f"raw pipe, {n} objects"]
    targets = [
        ("save, 1 shard, vs the faster raw upload", "ckptlib save, 1 shard", uploads),
        (f"save, {n} shards, vs the faster raw upload", f"ckptlib save, {n} shards", uploads),
        ("save, 1 shard, vs pipe_file of 1 object (same objects)", "ckptlib save, 1 shard", uploads[:1]),
        (f"save, {n} shards, vs pipe of {n} objects (same objects)", f"ckptlib save, {n} shards", uploads[1:]),
        ("restore, 1 shard, vs cat_file of its data file", "ckptlib restore, 1 shard", ["raw cat_file, 1 object"]),
        (f"restore, {n} shards, vs cat of its data files", f"ckptlib restore, {n} shards", [f"raw cat, {n} objects"]),
    ]
    print("\n| target: ckptlib median / raw median | ratio | goal |")
    print("|---|---:|---|")
    for label, name, raws in targets:
        if name not in medians:
            continue
        ratio = medians[name] / min(medians[raw] for raw in raws)
        print(f"| {label} | {ratio:.2f}x | <= 1.2x {'ok' if ratio <= 1.2 else 'MISSED'} |")
    return medians


def bench_open_one(moto: MotoServer, bucket: str, args: argparse.Namespace) -> None:
    prefix = f"{bucket}/open/model.ckpt"
    state = {f"model/layer_{i:06d}/w": np.full(16, i, np.float32) for i in range(args.small)}
    ckptlib.save(state, prefix)
    key = f"model/layer_{args.small * 54321 // 100_000:06d}/w"
    proxy = FaultProxy(moto.endpoint)
    counts: list[tuple[int, int]] = []
    try:
        ckptlib.store.register("s3", make_store(proxy.endpoint))

        def open_one() -> np.ndarray:
            proxy.reset()
            value = ckptlib.load_checkpoint(prefix).get_tensor(key)
            counts.append(proxy.counts())
            return value

        bench = Bench(args.repeat, args.warmup)
        bench.add("ckptlib open + get one", open_one)
        medians = bench.run()
        log = list(proxy.log)
    finally:
        ckptlib.store.register("s3", make_store(moto.endpoint))
        proxy.close()
    index = ckptlib.store.store_for(prefix).open(prefix + ".index").size
    requests, nbytes = counts[-1]
    print(f"\n## open-one: {args.small:,} tensors of 16 float32 (index {index / MIB:.1f} MiB), read one\n")
    print("| operation | median s | best s | HTTP requests | response bytes |")
    print("|---|---:|---:|---:|---:|")
    name = "ckptlib open + get one"
    print(f"| {name} (via counting proxy) | {medians[name]:.3f} | {BEST[name]:.3f} | {requests} | {nbytes:,} |")
    described = []
    for method, path, status in log:
        where, _, query = path.partition("?")
        name = where.rsplit("/", 1)[-1] + ("?" + query.split("=")[0] if query else "")
        described.append(f"{method} {name} {status}")
    print("\nrequests of the last round: " + ", ".join(described))
    if len({c for c in counts}) > 1:
        print(f"(counts differed between rounds: {sorted(set(counts))})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.0, help="state size in GiB (default 1)")
    parser.add_argument("--tensors", type=int, default=64, help="float32 tensors in the state (default 64)")
    parser.add_argument("--shards", type=int, default=4, help="shards of the sharded save (default 4)")
    parser.add_argument("--small", type=int, default=100_000, help="tensors in the open-one checkpoint")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument(
        "--moto", choices=["sliced", "stock"], default="sliced", help="ranged GETs as S3 does them (see SLICED_MOTO)"
    )
    parser.add_argument(
        "--cases",
        nargs="+",
        choices=["transfer", "save", "restore", "open-one"],
        default=["transfer", "open-one"],
        help="transfer: save and restore; save or restore: only those (less memory for moto)",
    )
    args = parser.parse_args()
    os.environ.update(TEST_ENV)
    import s3fs

    moto = SlicedMotoServer() if args.moto == "sliced" else MotoServer()
    try:
        os.environ["AWS_ENDPOINT_URL"] = moto.endpoint
        ckptlib.store.register("s3", make_store(moto.endpoint))
        bucket = new_bucket(moto.endpoint)
        fs = s3fs.S3FileSystem(endpoint_url=moto.endpoint, skip_instance_cache=True)
        print(
            f"Against a local moto server ({args.moto} ranged GETs; a Python process holding objects in memory and"
            " temporary files, sharing this machine's cores): absolute speeds are moto's; the ratios are what matters."
        )
        started = time.perf_counter()
        if {"transfer", "save", "restore"} & set(args.cases):
            bench_transfer(bucket, fs, args)
        if "open-one" in args.cases:
            bench_open_one(moto, bucket, args)
        print(f"\n(total {time.perf_counter() - started:.0f} s)", file=sys.stderr)
    finally:
        moto.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
