"""``Saver``: the ``tf.compat.v1.train.Saver`` a training loop calls every epoch."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ckptlib import commit
from ckptlib.background import BackgroundSaves, background_policy
from ckptlib.checkpoint import checkpoint_exists, present
from ckptlib.commit import Naming, Record, Retention, path_key, read_listing, saver_owner
from ckptlib.distributed.coordinator import Coordinator
from ckptlib.distributed.together import failing_together
from ckptlib.errors import CheckpointNotFoundError
from ckptlib.format.filenames import index_filename
from ckptlib.io_policy import DEFAULT, IOPolicy
from ckptlib.restore import RestoreReport, restore
from ckptlib.rotation import deletion_journal, inside
from ckptlib.state import DEFAULT_STATE_FILENAME, state_file_path
from ckptlib.store import Store, store_for
from ckptlib.tree import tensors_of
from ckptlib.writer import BundleWriter


class Saver:
    """Saves a state mapping as numbered checkpoints and rotates old ones, like TF1's Saver.

    ``save(state, "runs/exp/model.ckpt", global_step=7)`` writes the checkpoint
    ``runs/exp/model.ckpt-7`` and records it in ``runs/exp/checkpoint``. Rotation follows
    TensorFlow: keep the newest ``max_to_keep`` (None or 0: keep all, track none), and
    also keep one checkpoint every ``keep_checkpoint_every_n_hours``.

    Deliberate differences from TensorFlow, each with a TF-compatible option:

    * the state file holds paths relative to its directory (``save_relative_paths=True``),
      so a moved or copied run directory keeps working;
    * a new Saver picks up the checkpoints of its own prefix already listed in the state
      file (``recover=True``), so ``max_to_keep`` holds across restarts;
    * the state file also records timestamps, and entries of other savers sharing the
      directory are kept, under a cross-process lock.

    Sharding: ``num_shards`` data files, or as many as ``max_shard_bytes`` needs
    (``sharded=True`` alone: one per CPU, at most one per tensor). Files are fsynced before
    they become visible unless ``sync=False``.

    ``object_graph=True`` also writes each state as a TF2 object graph (see
    ``ckptlib.object_tree``), with ``save_counter`` the ``global_step`` or, without one, the
    number of saves this saver has made.

    ``async_save=True``: ``save`` returns once the state is copied, and the checkpoint is
    written and committed in a background thread (see ``save``). ``max_pending_saves``
    saves may be copied and not yet committed (a further ``save`` waits for the oldest);
    ``max_snapshot_bytes`` caps the memory their copies hold. ``io`` sets the writers'
    threads; a background save never changes process-wide settings.

    ``coordinator`` (``ckptlib.distributed``): every process of a job saves its own part
    of the state, making the same calls; each writes its own data file, replicas once, and
    rank 0 commits, once every part is durable (see ``ckptlib.distributed``).
    """

    def __init__(
        self,
        max_to_keep: int | None = 5,
        keep_checkpoint_every_n_hours: float | None = 10000.0,
        *,
        sharded: bool = False,
        num_shards: int | None = None,
        max_shard_bytes: int | None = None,
        pad_step_number: bool = False,
        save_relative_paths: bool = True,
        recover: bool = True,
        sync: bool = True,
        object_graph: bool = False,
        io: IOPolicy = DEFAULT,
        async_save: bool = False,
        max_pending_saves: int = 1,
        max_snapshot_bytes: int | None = None,
        coordinator: Coordinator | None = None,
    ):
        if max_to_keep is not None and max_to_keep < 0:
            raise ValueError(f"max_to_keep must be None or >= 0, got {max_to_keep}")
        if num_shards is not None and num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        if max_shard_bytes is not None and max_shard_bytes < 1:
            raise ValueError(f"max_shard_bytes must be >= 1, got {max_shard_bytes}")
        self._max_to_keep = max_to_keep or 0
        self._keep_every_hours = keep_checkpoint_every_n_hours
        # As in TF, 0 means: keep every checkpoint rotated out after construction; None: none.
        self._next_keep_time = (
            None if keep_checkpoint_every_n_hours is None else time.time() + keep_checkpoint_every_n_hours * 3600
        )
        self._sharded = sharded or num_shards is not None or max_shard_bytes is not None
        self._num_shards = num_shards
        self._max_shard_bytes = max_shard_bytes
        self._pad_step_number = pad_step_number
        self._relative = save_relative_paths
        self._recover = recover
        self._sync = sync
        self._object_graph = object_graph
        self._io = io
        if coordinator is not None and (sharded or num_shards not in (None, 1) or max_shard_bytes is not None):
            raise ValueError("a coordinated save writes one data file per process: leave sharding unset")
        if coordinator is not None and async_save and max_pending_saves != 1:
            # the caller's thread and the background one would both exchange with the other processes
            raise ValueError("coordinated asynchronous saves run one at a time: max_pending_saves must be 1")
        self._background = BackgroundSaves(max_pending_saves, max_snapshot_bytes) if async_save else None
        self._coordinator = coordinator
        self._saves = 0
        self._track = _Track()
        self._tracks: dict[str, _Track] = {}  # by state file
        self._recovered: set[str] = set()

    @property
    def last_checkpoints(self) -> list[str]:
        """Prefixes of the checkpoints this saver tracks in the state file it saved to
        last, oldest first (saves committed so far: asynchronous ones once written)."""
        return [path for path, _ in self._track.last]

    def save(
        self,
        state: Any,
        save_path: str | os.PathLike[str],
        global_step: Any = None,
        latest_filename: str | None = None,
        write_state: bool = True,
    ) -> str:
        """Save ``state`` (a tree: see ``ckptlib.save``) and return the checkpoint's prefix.

        ``global_step`` (an int or 0-d integer array/tensor) is appended as ``-<step>``.
        The checkpoint is complete on disk before the state file names it; old checkpoints
        are deleted only afterwards. An empty ``state`` saves a checkpoint of no tensors,
        as ``save`` and TensorFlow's ``tf.train.Checkpoint`` do.

        Asynchronous (``async_save=True``): returns as soon as ``state`` is copied, so
        changing its arrays afterwards, in place or not, never reaches the file; the
        checkpoint is written, then committed as above, in the background, after every
        save made before it. ``wait()`` waits for that. A save that failed in the background
        raises its error here, in the next call, which then saves nothing.
        """
        save_path = os.fspath(save_path)
        latest_filename = latest_filename or DEFAULT_STATE_FILENAME
        save_dir = os.path.dirname(save_path)
        state_file_path(save_dir, latest_filename)  # validates latest_filename
        counter = self._saves + 1
        if global_step is None:
            if os.path.basename(save_path) == latest_filename:
                raise ValueError(f"'latest_filename' collides with 'save_path': {latest_filename!r}")
            prefix = save_path
        else:
            step = counter = _as_step(global_step)
            prefix = f"{save_path}-{step:08d}" if self._pad_step_number else f"{save_path}-{step}"
        if self._background is not None:
            if self._coordinator is not None:
                self._background.drain()  # no exchange of this save while the last one's runs
            self._background.raise_error()
        if self._coordinator is not None:
            self._saves += 1  # on every process alike, whatever becomes of the save
        with failing_together(self._coordinator):
            tensors = tensors_of(state, object_graph=self._object_graph, save_counter=counter)
            store = store_for(save_path)
            naming = Naming(
                save_dir,
                latest_filename,
                deletion_journal(save_dir, latest_filename, os.path.basename(save_path)),
                saver_owner(store, save_dir, os.path.basename(save_path)),
            )
            writer = BundleWriter(
                prefix,
                num_shards=self._shard_count(tensors),
                max_shard_bytes=self._max_shard_bytes,
                sync=self._sync,
                io=self._io if self._background is None else background_policy(self._io),
            )
        # Counted when made where the save may finish (or fail) elsewhere: in the background,
        # or on rank 0 alone (coordinated saves are counted above, before anything can fail).
        count_when_made = self._background is not None or self._coordinator is not None

        def before_write() -> None:
            self._switch_to(store, save_dir, latest_filename)
            if write_state and self._recover:
                self._recover_from_state_file(store, naming, save_path)

        def retain() -> Retention:
            if not count_when_made:
                self._saves += 1
            return self._retention(store, naming, prefix)

        def commit_it() -> str:
            commit.save(
                store,
                naming,
                writer,
                retain if write_state else None,
                sync=self._sync,
                before_write=before_write,
                coordinator=self._coordinator,
            )
            return prefix

        if self._background is None:
            with failing_together(self._coordinator):
                writer.add_all(tensors)
            commit_it()
            if not write_state and not count_when_made:
                self._saves += 1
        else:
            with failing_together(self._coordinator):
                self._background.submit(writer, tensors, commit_it)
            if self._coordinator is None:
                self._saves += 1
        return prefix

    def wait(self) -> None:
        """Block until every pending asynchronous save is committed, durable and named by
        its state file; raise the first error a background save met (then forgotten). A
        no-op for a synchronous saver."""
        if self._background is not None:
            self._background.wait()

    def _retention(self, store: Store, naming: Naming, prefix: str) -> Retention:
        """Name ``prefix`` in the state file; delete what rotation dropped."""
        now = time.time()
        self._record(prefix, now)
        dropped = self._due_for_deletion()
        doomed = [p for p, _ in dropped]
        # This saver's checkpoints are those of this save_path, and any other it tracks or
        # is dropping in this directory (a Saver may save under several names).
        tracked = {path_key(p) for p in [*(p for p, _ in self._track.last), *doomed]}
        pattern_owns = naming.owns

        def owns(p: str) -> bool:
            return pattern_owns(p) or path_key(p) in tracked

        def undo() -> None:  # still listed: deleted by a later save
            self._track.to_delete[:0] = dropped

        mine = [r for r in self._track.last if inside(store, naming.directory, r[0])]
        return Retention((prefix, now), mine, doomed, owns, undo, relative=self._relative)

    def restore(self, state: Any, save_path: str | os.PathLike[str] | None) -> RestoreReport:
        """Fill ``state`` in place from ``save_path`` (TF's argument order); strict."""
        if save_path is None:
            raise ValueError("Can't load save_path when it is None.")
        self._settle()  # a checkpoint this saver is still writing becomes readable first
        if not store_for(os.fspath(save_path)).is_dir(os.fspath(save_path)) and not checkpoint_exists(save_path):
            raise CheckpointNotFoundError("not a valid checkpoint", path=os.fspath(save_path))
        return restore(save_path, into=state)

    def recover_last_checkpoints(self, checkpoint_paths: Sequence[str]) -> None:
        """Track existing checkpoints (timestamps from their index files); missing ones are skipped."""
        self._settle()
        records = []
        for path in checkpoint_paths:
            try:
                mtime = store_for(path).mtime(index_filename(path))
            except OSError:
                continue
            if mtime is not None:
                records.append((path, mtime))
        self.set_last_checkpoints_with_time(records)

    def set_last_checkpoints_with_time(self, last_checkpoints_with_time: Sequence[tuple[str, float]]) -> None:
        """Replace the tracked ``(prefix, timestamp)`` list, oldest first."""
        self._settle()
        self._track.last = [(os.fspath(p), float(t)) for p, t in last_checkpoints_with_time]

    # -- internals ----------------------------------------------------------------
    def _settle(self) -> None:
        """Let pending background saves finish before the caller changes what they use."""
        if self._background is not None:
            self._background.drain()

    def _switch_to(self, store: Store, save_dir: str, latest_filename: str) -> None:
        """Track the checkpoints of this state file: rotation counts each state file's
        checkpoints apart (TF's Saver mixes them, and lists them all in each)."""
        key = os.path.join(store.real(save_dir or "."), latest_filename)
        if not self._tracks:  # the first save: what was set before is this state file's
            self._tracks[key] = self._track
        self._track = self._tracks.setdefault(key, _Track())

    def _shard_count(self, tensors: Mapping[str, Any]) -> int | None:
        """Shards for this save; None lets the writer size them by ``max_shard_bytes``."""
        if self._num_shards is not None:
            return self._num_shards
        if self._max_shard_bytes is not None:
            return None
        if not self._sharded:
            return 1
        return max(1, min(len(tensors), os.cpu_count() or 1))

    def _record(self, prefix: str, now: float) -> None:
        """TF's ``_RecordLastCheckpoint``: newest last; overflow queued for deletion."""
        if not self._max_to_keep:
            return
        track = self._track
        track.last = [r for r in track.last if path_key(r[0]) != path_key(prefix)]
        track.last.append((prefix, now))
        while len(track.last) > self._max_to_keep:
            track.to_delete.append(track.last.pop(0))

    def _due_for_deletion(self) -> list[Record]:
        """The queued checkpoints to delete now, less one kept per
        ``keep_checkpoint_every_n_hours`` period (TF's ``_MaybeDeleteOldCheckpoints``)."""
        doomed = []
        while self._track.to_delete:
            prefix, timestamp = self._track.to_delete.pop(0)
            if self._next_keep_time is not None and timestamp > self._next_keep_time:
                self._next_keep_time += (self._keep_every_hours or 0) * 3600
                continue
            doomed.append((prefix, timestamp))
        return doomed

    def _recover_from_state_file(self, store: Store, naming: Naming, save_path: str) -> None:
        """Once per directory: adopt the checkpoints of this saver's prefix that the state
        file lists, so rotation continues where a previous process stopped."""
        save_dir, latest_filename = naming.directory, naming.state_name
        key = os.path.join(store.real(save_dir or "."), latest_filename or "", os.path.basename(save_path))
        if key in self._recovered:
            return
        self._recovered.add(key)
        found = read_listing(save_dir, latest_filename)
        if found is None or not self._max_to_keep:
            return
        owns = naming.owns
        track = self._track
        tracked = {path_key(p) for p, _ in track.last}
        stem = os.path.basename(save_path)
        mine = [(p, t) for p, t in found.records if owns(p)]
        there = set(present(p for p, _ in mine))  # one directory listing, not a glob per path
        # Rebuilt from save_path itself so they compare equal to the prefixes save() makes.
        adopted = [
            (save_path + os.path.basename(p)[len(stem) :], t) for p, t in mine if p in there and checkpoint_exists(p)
        ]
        # In the file's (save) order, before anything this saver already tracks.
        track.last = [r for r in adopted if path_key(r[0]) not in tracked] + track.last
        while len(track.last) > self._max_to_keep:
            track.to_delete.append(track.last.pop(0))


@dataclass
class _Track:
    """The checkpoints a saver keeps in one state file, oldest first, and those it dropped
    but has not deleted yet."""

    last: list[Record] = field(default_factory=list)
    to_delete: list[Record] = field(default_factory=list)


def _as_step(global_step: Any) -> int:
    if isinstance(global_step, bool):
        raise TypeError("global_step must be an integer, not a bool")
    if isinstance(global_step, int):
        return global_step
    array = np.asarray(global_step)
    if array.size != 1 or array.dtype.kind not in "iu":
        raise TypeError(f"global_step must be an integer scalar, got {array.dtype} of shape {list(array.shape)}")
    return int(array.reshape(()))
