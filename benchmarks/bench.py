"""Side-by-side save/restore benchmarks: ckptlib against raw numpy I/O, TensorFlow and safetensors.

    python benchmarks/bench.py large          # ~1 GiB, ~200 float32/bfloat16 tensors
    python benchmarks/bench.py many-small     # 50,000 tensors of 1-16 KiB
    python benchmarks/bench.py open-one       # open a 100,000-tensor checkpoint, read one tensor
    python benchmarks/bench.py restore        # the default restore vs TF and np.fromfile, repeated and fresh
    python benchmarks/bench.py all --repeat 5

Every operation runs ``--repeat`` times, interleaved round by round so that the machine's
drift hits all contenders alike; the table shows medians, then the target ratios. Files
live in ``--dir`` (default: a temporary directory on the same disk as the working
directory) and are written to the page cache like any training job's would be. Peak RSS
is measured in child processes (``VmHWM`` reset before the operation). TensorFlow and
safetensors columns appear when those packages are installed.
"""

from __future__ import annotations

import argparse
import gc
import glob
import importlib
import itertools
import json
import mmap
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import crc32c
import ml_dtypes
import numpy as np

import ckptlib

MIB = 1 << 20
# Fastest round of each operation, printed beside the medians.
BEST: dict[str, float] = {}


# -- the states -----------------------------------------------------------------------------
def large_state(seed: int = 0) -> dict[str, np.ndarray]:
    """~1 GiB: four tensors of 64-128 MiB and ~200 of 0.1-6 MiB, float32 and bfloat16."""
    rng = np.random.default_rng(seed)
    state: dict[str, np.ndarray] = {}
    big = [128 * MIB, 96 * MIB, 80 * MIB, 64 * MIB]
    small = [int(n) for n in rng.integers(MIB // 8, 6 * MIB, 196)]
    for i, nbytes in enumerate(big + small):
        dtype = ml_dtypes.bfloat16 if i % 3 == 2 else np.float32
        count = nbytes // np.dtype(dtype).itemsize
        state[f"layer_{i:03d}/{'kernel' if i % 2 else 'bias'}"] = rng.standard_normal(count, np.float32).astype(dtype)
    return state


def many_small_state(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(256, 4097, 50_000)  # float32 elements: 1-16 KiB
    return {
        f"block_{i // 100:03d}/param_{i % 100:02d}": rng.standard_normal(int(n), np.float32)
        for i, n in enumerate(sizes)
    }


def small_restore_state(seed: int = 0) -> dict[str, np.ndarray]:
    """20,000 float32 tensors of 1-16 KiB (the restore case's small shape)."""
    return dict(itertools.islice(many_small_state(seed).items(), 20_000))


def open_one_state() -> dict[str, np.ndarray]:
    return {f"model/layer_{i:06d}/w": np.full(4, i, np.float32) for i in range(100_000)}


# -- helpers ---------------------------------------------------------------------------------
def touch(arrays: Any) -> None:
    """Read one byte of every page of every array (what 'using' a restored array costs).

    Through a memoryview: a numpy reshape, view, slice and sum per array cost about 2 us,
    which for 50,000 arrays (0.11 s) outweighed a whole ckptlib restore and hid the
    restores' own differences; a memoryview slice costs a third of that."""
    for array in arrays:
        array = np.asarray(array)
        try:
            view = memoryview(array).cast("B")
        except (TypeError, ValueError):  # a format memoryview cannot cast (bfloat16), or not contiguous
            view = memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
        view[::4096].tobytes()


def crc_every_byte(data: np.ndarray) -> None:
    """crc32c of every byte, in 32 MiB pieces on every core: the least a reader that
    verifies checksums must spend, however it groups them."""
    pieces = [data[i : i + 32 * MIB] for i in range(0, len(data), 32 * MIB)]
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(crc32c.crc32c, pieces))


def total_bytes(state: dict[str, np.ndarray]) -> int:
    return sum(a.nbytes for a in state.values())


def drop(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(path):
        os.remove(path)


class Bench:
    """Operations timed round by round: every operation once per round, after one untimed
    warm-up round (the first touch of memory in this VM costs several times a later one)."""

    def __init__(self, repeat: int, warmup: int = 1):
        self.repeat = repeat
        self.warmup = warmup
        self.ops: list[tuple[str, Callable[[], Any], Callable[[], None] | None]] = []
        self.times: dict[str, list[float]] = {}

    def add(self, name: str, op: Callable[[], Any], before: Callable[[], None] | None = None) -> None:
        self.ops.append((name, op, before))

    def run(self) -> dict[str, float]:
        for round_ in range(self.warmup + self.repeat):
            for name, op, before in self.ops:
                if before is not None:
                    before()
                gc.collect()
                t0 = time.perf_counter()
                result = op()
                elapsed = time.perf_counter() - t0
                del result
                if round_ >= self.warmup:
                    self.times.setdefault(name, []).append(elapsed)
            label = "warm-up" if round_ < self.warmup else f"round {round_ - self.warmup + 1}/{self.repeat}"
            print(f"  {label} done", file=sys.stderr)
        if os.environ.get("BENCH_VERBOSE"):
            for name, ts in self.times.items():
                print(f"  {name}: {' '.join(f'{t:.3f}' for t in ts)}", file=sys.stderr)
        BEST.update({name: min(ts) for name, ts in self.times.items()})
        return {name: statistics.median(ts) for name, ts in self.times.items()}


# -- TensorFlow and safetensors contenders ------------------------------------------------
def try_import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


class TF1Graph:
    """A TF1 graph holding the state as variables, with a Saver, values loaded."""

    def __init__(self, tf: Any, state: dict[str, np.ndarray]):
        self.tf = tf
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.vars = {}
            for name, value in state.items():
                dtype = tf.bfloat16 if value.dtype == ml_dtypes.bfloat16 else tf.as_dtype(value.dtype)
                self.vars[name] = tf.compat.v1.get_variable(
                    name,
                    shape=value.shape,
                    dtype=dtype,
                    initializer=tf.compat.v1.zeros_initializer(),
                    use_resource=True,
                )
            feeds = {name: tf.compat.v1.placeholder(v.dtype, v.shape) for name, v in self.vars.items()}
            assign = [v.assign(feeds[name]) for name, v in self.vars.items()]
            self.saver = tf.compat.v1.train.Saver(self.vars, max_to_keep=None)
            init = tf.compat.v1.global_variables_initializer()
        self.sess = tf.compat.v1.Session(graph=self.graph)
        self.sess.run(init)
        self.sess.run(assign, feed_dict={feeds[name]: value for name, value in state.items()})

    def save(self, prefix: str) -> None:
        with self.graph.as_default():
            self.saver.save(self.sess, prefix, write_meta_graph=False, write_state=False)

    def restore(self, prefix: str) -> None:
        with self.graph.as_default():
            self.saver.restore(self.sess, prefix)


class TFRawOps:
    """TF's C++ bundle writer and reader driven directly (one SaveV2/RestoreV2 op for
    everything): what both TF savers run underneath, minus their Python overhead."""

    def __init__(self, tf: Any, state: dict[str, np.ndarray]):
        self.tf = tf
        self.names = list(state)
        self.tensors = [tf.constant(v) for v in state.values()]
        self.dtypes = [t.dtype for t in self.tensors]
        self.slices = [""] * len(self.names)

    def save(self, prefix: str) -> None:
        self.tf.raw_ops.SaveV2(
            prefix=prefix, tensor_names=self.names, shape_and_slices=self.slices, tensors=self.tensors
        )

    def restore(self, prefix: str) -> list[Any]:
        out = self.tf.raw_ops.RestoreV2(
            prefix=prefix, tensor_names=self.names, shape_and_slices=self.slices, dtypes=self.dtypes
        )
        touch(t.numpy() for t in out)
        return out  # type: ignore[no-any-return]


class TF2Objects:
    def __init__(self, tf: Any, state: dict[str, np.ndarray]):
        self.tf = tf
        self.vars = {name.replace("/", "_"): tf.Variable(value) for name, value in state.items()}
        self.ckpt = tf.train.Checkpoint(**self.vars)

    def write(self, prefix: str) -> None:
        self.ckpt.write(prefix)

    def read(self, prefix: str) -> None:
        self.ckpt.read(prefix).assert_consumed()


# -- cases -----------------------------------------------------------------------------------
def bench_save_restore(
    label: str,
    state: dict[str, np.ndarray],
    work: str,
    repeat: int,
    shards: int,
    tf_on: bool,
    st_on: bool,
    tf_variable_limit: int = 1000,
) -> dict[str, float]:
    tf = try_import("tensorflow") if tf_on else None
    st = try_import("safetensors.numpy") if st_on else None
    nbytes = total_bytes(state)
    print(f"{label}: {len(state)} tensors, {nbytes / MIB:.0f} MiB", file=sys.stderr)
    raw = os.path.join(work, "raw.bin")
    ck1, ckn, ckns, cknn = (
        os.path.join(work, n) for n in ("ck1/model", f"ck{shards}/model", "ck1nosync/model", f"ck{shards}nosync/model")
    )
    arrays = list(state.values())

    def raw_save() -> None:
        with open(raw, "wb") as f:
            for a in arrays:
                a.tofile(f)

    def raw_writev(checksum: bool = False) -> None:
        """Every array's own buffer handed to the kernel, 1024 per call, no index: the
        fastest one file of these bytes can be written from Python. With ``checksum``, a
        crc32c of every array (as every V2 checkpoint stores) on this thread meanwhile,
        each call releasing the GIL (the extension keeps it for buffers under 32 KiB, and
        would then stall the writer between its calls)."""
        fd = os.open(raw, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            with ThreadPoolExecutor(1) as writer:
                done = writer.submit(lambda: [os.writev(fd, arrays[i : i + 1024]) for i in range(0, len(arrays), 1024)])
                if checksum:
                    list(map(crc32c.crc32c, arrays, itertools.repeat(0), itertools.repeat(1)))
                done.result()
        finally:
            os.close(fd)

    def raw_save_fsync() -> None:
        with open(raw, "wb") as f:
            for a in arrays:
                a.tofile(f)
            f.flush()
            os.fsync(f.fileno())

    def raw_load() -> list[np.ndarray]:
        with open(raw, "rb") as f:
            out = [np.fromfile(f, dtype=a.dtype, count=a.size) for a in arrays]
        touch(out)
        return out

    def raw_memmap(checksum: bool = False) -> list[np.ndarray]:
        mm = np.memmap(raw, dtype=np.uint8, mode="c")
        out, pos = [], 0
        for a in arrays:
            out.append(mm[pos : pos + a.nbytes].view(a.dtype))
            pos += a.nbytes
        if checksum:  # the least any reader that verifies checksums must do: crc every byte
            crc_every_byte(mm)
        touch(out)
        return out

    def raw_views(checksum: bool) -> list[np.ndarray]:
        """Plain ndarrays over one copy-on-write map (np.memmap slices are a slow subclass):
        the least Python a reader can spend per tensor."""
        with open(raw, "rb") as f:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        base = np.frombuffer(mapped, np.uint8)
        out, pos = [], 0
        for a in arrays:
            out.append(np.ndarray(a.shape, a.dtype, base, pos))
            pos += a.nbytes
        if checksum:
            crc_every_byte(base)
        touch(out)
        return out

    targets = {name: np.empty_like(a) for name, a in state.items()}

    def fresh(*paths: str) -> Callable[[], None]:
        """Untimed: delete what the save will write (a training loop writes new files; an
        overwrite would time the old file's deletion) and flush dirty pages, so every save
        starts from the same clean page cache."""

        def prepare() -> None:
            for path in paths:
                for name in glob.glob(glob.escape(path) + "*"):
                    drop(name)
            os.sync()
            # This VM hands freed memory back to its host, which makes the next first touch
            # of a page slow and erratic; touching as much memory as the save will fill in
            # the page cache (then freeing it) gives every contender the same warm start.
            np.ones(int(1.1 * nbytes), dtype=np.uint8)

        return prepare

    bench = Bench(repeat)
    bench.add("raw tofile", raw_save, fresh(raw))
    bench.add("raw tofile+fsync", raw_save_fsync, fresh(raw))
    bench.add("raw writev", raw_writev, fresh(raw))
    bench.add("raw writev + crc32c", lambda: raw_writev(checksum=True), fresh(raw))
    bench.add("ckptlib save, 1 shard, no fsync", lambda: ckptlib.save(state, ckns, sync=False), fresh(ckns))
    bench.add("ckptlib save, 1 shard", lambda: ckptlib.save(state, ck1), fresh(ck1))
    bench.add(
        f"ckptlib save, {shards} shards, no fsync",
        lambda: ckptlib.save(state, cknn, num_shards=shards, sync=False),
        fresh(cknn),
    )
    bench.add(f"ckptlib save, {shards} shards", lambda: ckptlib.save(state, ckn, num_shards=shards), fresh(ckn))
    bench.add("raw fromfile + touch", raw_load)
    bench.add("raw np.memmap + touch", raw_memmap)
    bench.add("raw np.memmap + crc32c + touch", lambda: raw_memmap(checksum=True))
    bench.add("raw mmap views + touch", lambda: raw_views(checksum=False))
    bench.add("raw mmap views + crc32c + touch", lambda: raw_views(checksum=True))
    bench.add("ckptlib restore (mmap) + touch", lambda: touch(ckptlib.restore(ck1).values()))
    bench.add(f"ckptlib restore (mmap) {shards} shards + touch", lambda: touch(ckptlib.restore(ckn).values()))
    bench.add("ckptlib restore copying + touch", lambda: touch(ckptlib.restore(ck1, mmap=False).values()))
    bench.add(
        "ckptlib restore into arrays + touch", lambda: (ckptlib.restore(ck1, into=targets), touch(targets.values()))
    )
    bench.add("ckptlib mmap, no checksum + touch", lambda: touch(ckptlib.restore(ck1, verify_checksums=False).values()))
    if st is not None:
        stp = os.path.join(work, "model.safetensors")
        bench.add("safetensors save_file", lambda: st.save_file(state, stp), fresh(stp))
        bench.add("safetensors load_file + touch", lambda: touch(st.load_file(stp).values()))
    if tf is not None:
        raw_ops = TFRawOps(tf, state)
        t1p, t2p, t3p = (os.path.join(work, n) for n in ("tf1/model", "tf2/model", "tfraw/model"))
        bench.add("TF SaveV2 op", lambda: raw_ops.save(t3p), fresh(t3p))
        bench.add("TF RestoreV2 op + touch", lambda: raw_ops.restore(t3p))
        if len(state) <= tf_variable_limit:  # TF takes minutes to build 50,000 variables
            tf1, tf2 = TF1Graph(tf, state), TF2Objects(tf, state)
            bench.add("TF1 Saver.save", lambda: tf1.save(t1p), fresh(t1p))
            bench.add("TF2 Checkpoint.write", lambda: tf2.write(t2p), fresh(t2p))
            bench.add("TF1 Saver.restore", lambda: tf1.restore(t1p))
            bench.add("TF2 Checkpoint.read", lambda: tf2.read(t2p))
        else:
            t1p = t3p

        def tf_reader() -> list[np.ndarray]:
            reader = tf.train.load_checkpoint(t1p)
            out = [reader.get_tensor(name) for name in state]
            touch(out)
            return out

        bench.add("TF CheckpointReader.get_tensor all + touch", tf_reader)
    return bench.run()


# -- restore: the default restore against TensorFlow and np.fromfile, repeated and fresh ----------
RESTORE_SHAPES = {"1 GiB in 200 tensors": large_state, "20,000 small tensors": small_restore_state}


def restore_contenders(prefix: str, raw: str, tf: Any) -> dict[str, Callable[[], Any]]:
    """Each way of reading the checkpoint at ``prefix`` (``raw``: the same bytes in one
    plain file) into arrays, every page touched; setup (TF graphs) is done here, untimed."""
    with ckptlib.load_checkpoint(prefix) as reader:
        layout = [(name, reader.shape(name), reader.dtype(name)) for name in reader.keys_list()]
    # Targets hold values already, as a model's weights do when a restore fills them.
    targets = {name: np.ones(shape, dtype) for name, shape, dtype in layout}

    def touched(restored: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """(Returned, so that freeing them is not timed, as for every other contender.)"""
        touch(restored.values())
        return restored

    def fromfile() -> list[np.ndarray]:
        with open(raw, "rb") as f:
            out = [np.fromfile(f, dtype=dtype, count=int(np.prod(shape))) for _, shape, dtype in layout]
        touch(out)
        return out

    ops: dict[str, Callable[[], Any]] = {
        "ckptlib restore (default) + touch": lambda: touched(ckptlib.restore(prefix)),
        "ckptlib restore mmap=True + touch": lambda: touched(ckptlib.restore(prefix, mmap=True)),
        "ckptlib restore into arrays + touch": lambda: (ckptlib.restore(prefix, into=targets), touch(targets.values())),
        "raw fromfile + touch": fromfile,
    }
    if tf is not None:

        def tf_reader() -> list[np.ndarray]:
            reader = tf.train.load_checkpoint(prefix)
            out = [reader.get_tensor(name) for name, _, _ in layout]
            touch(out)
            return out

        names = [name for name, _, _ in layout]
        tf_dtypes = [tf.bfloat16 if d == ml_dtypes.bfloat16 else tf.as_dtype(d) for _, _, d in layout]

        def restore_op() -> list[Any]:
            out = tf.raw_ops.RestoreV2(
                prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names), dtypes=tf_dtypes
            )
            touch(t.numpy() for t in out)
            return out  # type: ignore[no-any-return]

        ops["TF CheckpointReader.get_tensor all + touch"] = tf_reader
        ops["TF RestoreV2 op + touch"] = restore_op
        if len(layout) <= 1000:  # TF takes minutes to build 20,000 variables
            zeros = {name: np.zeros(shape, dtype) for name, shape, dtype in layout}
            graph = TF1Graph(tf, zeros)
            del zeros
            ops["TF1 Saver.restore"] = lambda: graph.restore(prefix)
    return ops


def fresh_child(case: str, work: str, contender: str) -> None:
    """Run in a child: one restore by ``contender`` in this fresh process; prints seconds."""
    tf = try_import("tensorflow") if contender.startswith("TF") else None
    key = "large" if case.startswith("1 GiB") else "small"
    ops = restore_contenders(os.path.join(work, key, "model"), os.path.join(work, key, "raw.bin"), tf)
    gc.collect()
    t0 = time.perf_counter()
    ops[contender]()
    print(json.dumps(time.perf_counter() - t0))


def bench_restore(work: str, repeat: int, tf_on: bool) -> None:
    """The default restore side by side with TensorFlow's restores and ``np.fromfile``,
    warm page cache, checksums on: repeated in this process, and once per fresh process."""
    tf = try_import("tensorflow") if tf_on else None
    for case, make in RESTORE_SHAPES.items():
        key = "large" if case.startswith("1 GiB") else "small"
        state = make()
        prefix, raw = os.path.join(work, key, "model"), os.path.join(work, key, "raw.bin")
        ckptlib.save(state, prefix, sync=False)
        with open(raw, "wb") as f:
            for name in sorted(state):  # the checkpoint's order
                state[name].tofile(f)
        del state
        print(f"restore, {case}", file=sys.stderr)
        bench = Bench(repeat)
        for name, op in restore_contenders(prefix, raw, tf).items():
            bench.add(name, op)
        repeated = bench.run()
        report(f"restore, {case}, repeated in one process", repeated, RESTORE_TARGETS)
        fresh: dict[str, list[float]] = {}
        for round_ in range(repeat):
            for name in repeated:
                result = subprocess.run(
                    [sys.executable, __file__, "_fresh", case, name, "--dir", work],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                fresh.setdefault(name, []).append(json.loads(result.stdout.strip().splitlines()[-1]))
            print(f"  fresh processes: round {round_ + 1}/{repeat} done", file=sys.stderr)
        BEST.update({name: min(ts) for name, ts in fresh.items()})
        medians = {name: statistics.median(ts) for name, ts in fresh.items()}
        report(f"restore, {case}, one per fresh process", medians, RESTORE_FRESH_TARGETS)


def bench_open_one(work: str, repeat: int, tf_on: bool) -> dict[str, float]:
    state = open_one_state()
    prefix = os.path.join(work, "open/model")
    ckptlib.save(state, prefix)
    tf = try_import("tensorflow") if tf_on else None
    key = "model/layer_054321/w"
    bench = Bench(repeat)
    bench.add("ckptlib open + get one", lambda: ckptlib.load_checkpoint(prefix).get_tensor(key))
    if tf is not None:
        bench.add("TF load_checkpoint + get one", lambda: tf.train.load_checkpoint(prefix).get_tensor(key))
    return bench.run()


def rss_child(mode: str, work: str) -> None:
    """Run in a child: peak RSS above baseline of one save or restore of the large state."""

    def status(field: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    prefix = os.path.join(work, "rss/model")
    if mode == "save":
        state = large_state()
        gc.collect()
        baseline = status("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        ckptlib.save(state, prefix)
        peak = status("VmHWM")
        print(json.dumps({"peak_above_baseline": peak - baseline, "state": total_bytes(state)}))
    else:
        gc.collect()
        baseline = status("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        copy = mode == "restore-copy"
        restored = ckptlib.restore(prefix, mmap=not copy)
        touch(restored.values())
        peak = status("VmHWM")
        print(json.dumps({"peak_above_baseline": peak - baseline, "state": total_bytes(restored)}))


def measure_rss(work: str) -> dict[str, dict[str, int]]:
    out = {}
    for mode in ("save", "restore", "restore-copy"):
        result = subprocess.run(
            [sys.executable, __file__, "_rss", mode, "--dir", work], capture_output=True, text=True, check=True
        )
        out[mode] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def report(
    title: str, medians: dict[str, float], ratios: list[tuple[str, str, str | tuple[str, ...], float]], shards: int = 2
) -> None:
    """The medians, then each target's ratio; ``{n}`` in a target's names is the shard count."""
    print(f"\n## {title}\n")
    print("| operation | median s | best s |")
    print("|---|---:|---:|")
    for name, seconds in medians.items():
        print(f"| {name} | {seconds:.3f} | {BEST.get(name, seconds):.3f} |")
    print("\n| target (medians) | ratio | goal |")
    print("|---|---:|---|")
    for label, fast, slow, goal in ratios:
        label, fast = label.format(n=shards), fast.format(n=shards)
        slows = [name.format(n=shards) for name in ((slow,) if isinstance(slow, str) else slow)]
        others = [name for name in slows if name in medians]
        if fast in medians and others:
            ratio = min(medians[name] for name in others) / medians[fast]  # against the fastest of them
            verdict = "ok" if ratio >= goal else "MISSED"
            print(f"| {label} | {ratio:.2f}x | >= {goal}x {verdict} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case", choices=["large", "many-small", "open-one", "restore", "all", "_rss", "_fresh"])
    parser.add_argument("mode", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--dir", help="work directory (default: a temporary one under the current directory)")
    parser.add_argument("--no-tf", action="store_true", help="skip TensorFlow even if installed")
    parser.add_argument("--no-safetensors", action="store_true")
    args = parser.parse_args()
    if args.case == "_rss":
        rss_child(args.mode[0], args.dir)
        return 0
    if args.case == "_fresh":
        fresh_child(args.mode[0], args.dir, args.mode[1])
        return 0
    work = args.dir or tempfile.mkdtemp(prefix="ckptlib-bench-", dir=os.getcwd())
    os.makedirs(work, exist_ok=True)
    try:
        cases = ["large", "many-small", "open-one", "restore"] if args.case == "all" else [args.case]
        for case in cases:
            if case == "large":
                state = large_state()
                medians = bench_save_restore(
                    "large", state, work, args.repeat, args.shards, not args.no_tf, not args.no_safetensors
                )
                del state
                report("large: ~1 GiB in ~200 tensors", medians, LARGE_TARGETS, args.shards)
                rss = measure_rss(work)
                print("\n| peak RSS above baseline | MiB | / state size |")
                print("|---|---:|---:|")
                for mode, r in rss.items():
                    peak = r["peak_above_baseline"]
                    print(f"| {mode} | {peak / MIB:.0f} | {peak / r['state']:.3f} |")
            elif case == "many-small":
                state = many_small_state()
                medians = bench_save_restore(
                    "many-small", state, work, args.repeat, args.shards, not args.no_tf, not args.no_safetensors
                )
                del state
                report("many-small: 50,000 tensors of 1-16 KiB", medians, SMALL_TARGETS, args.shards)
            elif case == "restore":
                bench_restore(work, args.repeat, not args.no_tf)
            else:
                medians = bench_open_one(work, args.repeat, not args.no_tf)
                report("open-one: 100,000 tensors, read one", medians, OPEN_TARGETS)
                print(f"\nckptlib open + get one: {medians['ckptlib open + get one']:.3f} s (goal < 0.3 s)")
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


# (label, ckptlib operation, the operation(s) it is compared with (the fastest counts), the ratio to reach)
TF_RESTORES = (
    "TF1 Saver.restore",
    "TF2 Checkpoint.read",
    "TF CheckpointReader.get_tensor all + touch",
    "TF RestoreV2 op + touch",
)
TF2_WRITE = "TF2 Checkpoint.write"
LARGE_TARGETS = [
    ("save (no fsync) vs TF1 Saver.save (no fsync)", "ckptlib save, 1 shard, no fsync", "TF1 Saver.save", 2.0),
    ("save (no fsync) vs TF2 Checkpoint.write", "ckptlib save, 1 shard, no fsync", "TF2 Checkpoint.write", 3.0),
    ("save, {n} shards (no fsync) vs TF2 Checkpoint.write", "ckptlib save, {n} shards, no fsync", TF2_WRITE, 3.0),
    ("(limit) raw tofile, one file, vs TF1 Saver.save", "raw tofile", "TF1 Saver.save", 2.0),
    ("(limit) raw tofile, one file, vs TF2 Checkpoint.write", "raw tofile", "TF2 Checkpoint.write", 3.0),
    ("(limit) raw writev, one file, vs TF2 Checkpoint.write", "raw writev", "TF2 Checkpoint.write", 3.0),
    ("save (fsync) vs TF1 Saver.save (no fsync)", "ckptlib save, 1 shard", "TF1 Saver.save", 2.0),
    ("save (fsync) vs TF2 Checkpoint.write (no fsync)", "ckptlib save, 1 shard", "TF2 Checkpoint.write", 3.0),
    ("save vs raw tofile (within 1.25x => >= 0.8)", "ckptlib save, 1 shard, no fsync", "raw tofile", 0.8),
    ("save+fsync vs raw tofile+fsync (>= 0.8)", "ckptlib save, 1 shard", "raw tofile+fsync", 0.8),
    ("restore vs TF's fastest restore", "ckptlib restore (mmap) + touch", TF_RESTORES, 1.5),
    ("copying restore vs fromfile (>= 0.8)", "ckptlib restore copying + touch", "raw fromfile + touch", 0.8),
    ("restore into vs fromfile (>= 0.8)", "ckptlib restore into arrays + touch", "raw fromfile + touch", 0.8),
    ("mmap access vs np.memmap (>= 0.91)", "ckptlib restore (mmap) + touch", "raw np.memmap + touch", 0.91),
    (
        "mmap access, no checksums, vs np.memmap (>= 0.91)",
        "ckptlib mmap, no checksum + touch",
        "raw np.memmap + touch",
        0.91,
    ),
    (
        "mmap access vs np.memmap + crc32c (>= 0.91)",
        "ckptlib restore (mmap) + touch",
        "raw np.memmap + crc32c + touch",
        0.91,
    ),
    (
        "mmap access vs mmap views + crc32c (>= 0.91)",
        "ckptlib restore (mmap) + touch",
        "raw mmap views + crc32c + touch",
        0.91,
    ),
]


SMALL_TARGETS = [
    ("save (no fsync) vs TF SaveV2 op", "ckptlib save, 1 shard, no fsync", "TF SaveV2 op", 2.0),
    ("save, {n} shards (no fsync) vs TF SaveV2 op", "ckptlib save, {n} shards, no fsync", "TF SaveV2 op", 2.0),
    ("save (fsync) vs TF SaveV2 op (no fsync)", "ckptlib save, 1 shard", "TF SaveV2 op", 2.0),
    ("restore vs TF's fastest restore", "ckptlib restore (mmap) + touch", TF_RESTORES, 2.0),
    ("restore vs TF RestoreV2 op", "ckptlib restore (mmap) + touch", "TF RestoreV2 op + touch", 2.0),
    ("restore vs TF reader", "ckptlib restore (mmap) + touch", "TF CheckpointReader.get_tensor all + touch", 2.0),
    ("(limit) raw writev vs TF SaveV2 op", "raw writev", "TF SaveV2 op", 2.0),
    ("(limit) raw writev + crc32c vs TF SaveV2 op", "raw writev + crc32c", "TF SaveV2 op", 2.0),
    ("(limit) mmap views + crc32c vs TF's fastest restore", "raw mmap views + crc32c + touch", TF_RESTORES, 2.0),
]
RESTORE_TARGETS = [
    ("default restore vs TF's fastest restore", "ckptlib restore (default) + touch", TF_RESTORES, 1.0),
    ("default restore vs fromfile (>= 0.8)", "ckptlib restore (default) + touch", "raw fromfile + touch", 0.8),
    ("restore into vs TF's fastest restore", "ckptlib restore into arrays + touch", TF_RESTORES, 1.0),
    ("restore into vs fromfile (>= 0.8)", "ckptlib restore into arrays + touch", "raw fromfile + touch", 0.8),
]
RESTORE_FRESH_TARGETS = [
    ("default restore vs TF's fastest restore (>= 1.5)", "ckptlib restore (default) + touch", TF_RESTORES, 1.5),
    *RESTORE_TARGETS[1:],
]
OPEN_TARGETS = [("open-one vs TF", "ckptlib open + get one", "TF load_checkpoint + get one", 2.0)]


if __name__ == "__main__":
    sys.exit(main())
