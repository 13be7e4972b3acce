"""A Keras 3 model (TF backend) and its Adam optimizer in a ``tf.train.Checkpoint``, saved through
``ckptlib.CheckpointManager`` (``ckptlib.tf.state``) against ``tf.train.CheckpointManager.save``
on the same objects, side by side in one run; then restored by each.

    python benchmarks/bench_tf2.py --repeat 3          # ~256 MiB of weights, ~768 MiB with Adam's slots
    python benchmarks/bench_tf2.py --width 2048        # smaller: 4 Dense layers of width x width

Every operation runs ``--repeat`` times after one untimed warm-up round, interleaved round by
round (``bench.Bench``); the tables show medians and the fastest round, then the target ratios.
Both managers keep 2 checkpoints, so from the third save on each save also deletes one, as in
training. Before every save, untimed: ``os.sync()`` and a touch of as much memory as the save
fills (see ``bench.py``). ckptlib's save includes asking TensorFlow for the tensors and the
object graph, and fsyncs data, index, state file and directory; TensorFlow's does not fsync
(its ``+ fsync`` row adds an fsync of every file it wrote and of the directory, untimed by TF
itself). Restores end in the live variables: ``ckptlib.tf.restore`` (every checksum verified,
everything checked before the first assignment) and ``tf.train.Checkpoint.restore`` of the
same files.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import tempfile
from collections.abc import Callable

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf
from bench import MIB, Bench, report

import ckptlib
import ckptlib.tf


def large_objects(width: int, layers: int = 4, seed: int = 0) -> tuple[keras.Model, keras.optimizers.Optimizer]:
    """``layers`` Dense layers of ``width`` x ``width`` float32 and a built Adam (two slots
    per weight): ``3 * layers * width**2 * 4`` bytes in the checkpoint."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((width,)), *(keras.layers.Dense(width) for _ in range(layers))])
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)
    for variable in optimizer.variables:  # slots of real training are not zeros
        if len(variable.shape) > 0:
            variable.assign(tf.random.normal(variable.shape, seed=seed))
    return model, optimizer


def fsync_tree(directory: str) -> None:
    """fsync every file in ``directory`` and the directory itself."""
    for path in glob.glob(os.path.join(directory, "*")):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fresh(nbytes: int) -> Callable[[], None]:
    def prepare() -> None:
        os.sync()
        np.ones(int(1.1 * nbytes), dtype=np.uint8)

    return prepare


def bench_tf2(work: str, repeat: int, width: int) -> dict[str, float]:
    model, optimizer = large_objects(width)
    variables = [*model.weights, *optimizer.variables]
    nbytes = sum(int(np.prod(v.shape)) * 4 for v in variables)
    print(f"Keras model + Adam: {len(variables)} variables, {nbytes / MIB:.0f} MiB", file=sys.stderr)
    dirs = {name: os.path.join(work, name) for name in ("ckptlib", "ckptlib-nosync", "tf", "tf-fsync")}
    # one Checkpoint per manager, each with its own save_counter, over the same objects
    ours = ckptlib.CheckpointManager(dirs["ckptlib"], max_to_keep=2)
    ours_nosync = ckptlib.CheckpointManager(dirs["ckptlib-nosync"], max_to_keep=2, sync=False)
    ckpts = {name: tf.train.Checkpoint(model=model, optimizer=optimizer) for name in dirs}
    theirs = tf.train.CheckpointManager(ckpts["tf"], dirs["tf"], max_to_keep=2)
    theirs_fsync = tf.train.CheckpointManager(ckpts["tf-fsync"], dirs["tf-fsync"], max_to_keep=2)

    def tf_save_fsync() -> None:
        theirs_fsync.save()
        fsync_tree(dirs["tf-fsync"])

    bench = Bench(repeat)
    before = fresh(nbytes)
    bench.add(
        "ckptlib CheckpointManager.save(ckptlib.tf.state(ckpt))",
        lambda: ours.save(ckptlib.tf.state(ckpts["ckptlib"])),
        before,
    )
    bench.add(
        "ckptlib, sync=False",
        lambda: ours_nosync.save(ckptlib.tf.state(ckpts["ckptlib-nosync"])),
        before,
    )
    bench.add("tf.train.CheckpointManager.save", theirs.save, before)
    bench.add("tf.train.CheckpointManager.save + fsync", tf_save_fsync, before)
    bench.add("ckptlib.tf.state alone", lambda: ckptlib.tf.state(ckpts["ckptlib"], count=False), before)

    target_model, target_optimizer = large_objects(width, seed=1)
    target = tf.train.Checkpoint(model=target_model, optimizer=target_optimizer)
    bench.add("ckptlib.tf.restore", lambda: ckptlib.tf.restore(dirs["ckptlib"], target), before)
    bench.add(
        "tf.train.Checkpoint.restore (of ckptlib's files)",
        lambda: target.restore(ours.latest_checkpoint).assert_consumed(),
        before,
    )
    return bench.run()


TARGETS: list[tuple[str, str, str | tuple[str, ...], float]] = [
    (
        "save (fsync) vs tf.train.CheckpointManager.save (no fsync)",
        "ckptlib CheckpointManager.save(ckptlib.tf.state(ckpt))",
        "tf.train.CheckpointManager.save",
        1.0,
    ),
    (
        "save (fsync) vs tf.train.CheckpointManager.save + fsync",
        "ckptlib CheckpointManager.save(ckptlib.tf.state(ckpt))",
        "tf.train.CheckpointManager.save + fsync",
        1.0,
    ),
    (
        "save, sync=False, vs tf.train.CheckpointManager.save",
        "ckptlib, sync=False",
        "tf.train.CheckpointManager.save",
        1.0,
    ),
    (
        "ckptlib.tf.restore vs tf.train.Checkpoint.restore",
        "ckptlib.tf.restore",
        "tf.train.Checkpoint.restore (of ckptlib's files)",
        1.0,
    ),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--width", type=int, default=4096, help="Dense layer width (4 layers of width x width)")
    parser.add_argument("--dir", help="work directory (default: a temporary one under the current directory)")
    args = parser.parse_args()
    work = args.dir or tempfile.mkdtemp(prefix="ckptlib-bench-tf2-", dir=os.getcwd())
    os.makedirs(work, exist_ok=True)
    try:
        medians = bench_tf2(work, args.repeat, args.width)
        report("a Keras 3 model + Adam in a tf.train.Checkpoint: save through each manager, restore", medians, TARGETS)
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
