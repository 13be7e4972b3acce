"""``CheckpointManager``: directory-based numbered checkpoints, in the shape of
``tf.train.CheckpointManager``, on the same commit protocol as ``Saver``."""

from __future__ import annotations

import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ckptlib import commit
from ckptlib.background import BackgroundSaves, background_policy
from ckptlib.checkpoint import checkpoint_exists, load_checkpoint
from ckptlib.commit import Naming, Retention, read_listing
from ckptlib.distributed.coordinator import Coordinator
from ckptlib.distributed.together import failing_together
from ckptlib.errors import CheckpointNotFoundError, CorruptCheckpointError
from ckptlib.io_policy import DEFAULT, IOPolicy
from ckptlib.restore import RestoreReport, restore
from ckptlib.rotation import deletion_journal, owner
from ckptlib.store import is_url, store_for
from ckptlib.tree import tensors_of
from ckptlib.writer import BundleWriter

logger = logging.getLogger("ckptlib")

# What makes restore_or_initialize try the checkpoint before (a tensor ckptlib cannot
# decode, or a mismatch with the targets, is the caller's to see).
_DAMAGE = (CorruptCheckpointError, CheckpointNotFoundError)


class CheckpointManager:
    """Keeps ``directory/<checkpoint_name>-<N>`` checkpoints and their state file.

    Semantics follow ``tf.train.CheckpointManager``: ``max_to_keep`` newest are kept (None:
    all), ``keep_checkpoint_every_n_hours`` preserves one checkpoint per period (no longer
    listed, never deleted), the state file records timestamps and relative paths, and
    checkpoints listed by an earlier run are managed again after a restart.

    Differences: values come from the ``state`` mapping passed to ``save`` (there is no
    checkpoint object), and numbering continues from the newest listed checkpoint after a
    restart, where TensorFlow would restart at 1 unless its counter was restored.

    Like TensorFlow's, each checkpoint holds an object graph (``object_graph=True``, see
    ``ckptlib.object_tree``), so ``tf.train.Checkpoint(**mirror)`` restores it and
    ``tf.train.CheckpointManager`` manages the directory; its ``save_counter`` is the number
    of saves, which is the checkpoint number unless ``checkpoint_number`` was given.
    ``object_graph=False`` writes the state's tensors by path alone, as TF1's ``Saver`` does.

    ``async_save=True``: ``save`` returns once the state is copied; the checkpoint is
    written and committed in the background, in order, and ``latest_checkpoint`` and
    ``checkpoints`` show it once committed (``wait()`` waits for that). See ``Saver`` for
    ``max_pending_saves`` and ``max_snapshot_bytes``. ``coordinator``: one checkpoint saved by
    every process of a job together, as with ``Saver``.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        max_to_keep: int | None,
        keep_checkpoint_every_n_hours: float | None = None,
        checkpoint_name: str = "ckpt",
        step_counter: Callable[[], int] | None = None,
        checkpoint_interval: int | None = None,
        *,
        num_shards: int = 1,
        sync: bool = True,
        object_graph: bool = True,
        io: IOPolicy = DEFAULT,
        async_save: bool = False,
        max_pending_saves: int = 1,
        max_snapshot_bytes: int | None = None,
        coordinator: Coordinator | None = None,
    ):
        if max_to_keep is not None and max_to_keep <= 0:
            raise ValueError(f"Expected a positive integer or `None` for `max_to_keep`, got {max_to_keep}.")
        if checkpoint_interval is not None and step_counter is None:
            raise ValueError("`step_counter` should be passed if `checkpoint_interval` is not None.")
        if not checkpoint_name or os.path.basename(checkpoint_name) != checkpoint_name:
            raise ValueError(f"checkpoint_name must be a plain file name, got {checkpoint_name!r}")
        self._directory = os.fspath(directory)
        if is_url(self._directory):  # one spelling: "s3://b/run/" names the same directory
            self._directory = self._directory.rstrip("/")
        self._max_to_keep = max_to_keep
        self._keep_every_hours = keep_checkpoint_every_n_hours
        self._name = checkpoint_name
        self._prefix = os.path.join(self._directory, checkpoint_name)
        self._step_counter = step_counter
        self._checkpoint_interval = checkpoint_interval
        self._last_checkpoint_step: int | None = None
        self._num_shards = num_shards
        self._sync = sync
        self._object_graph = object_graph
        self._io = io
        if coordinator is not None and num_shards != 1:
            raise ValueError("a coordinated save writes one data file per process: num_shards must be 1")
        if coordinator is not None and async_save and max_pending_saves != 1:
            # the caller's thread and the background one would both exchange with the other processes
            raise ValueError("coordinated asynchronous saves run one at a time: max_pending_saves must be 1")
        self._background = BackgroundSaves(max_pending_saves, max_snapshot_bytes) if async_save else None
        self._coordinator = coordinator
        self._pattern = re.compile(re.escape(checkpoint_name) + r"-(-?\d+)")
        self._store = store_for(self._directory)
        self._owner = owner(self._store, self._directory, self._pattern)
        self._managed: OrderedDict[str, float] = OrderedDict()
        journal = deletion_journal(self._directory, None, checkpoint_name)
        self._naming = Naming(self._directory, None, journal, self._owner, meta=False)
        # Like TF's, a manager is a writer from the start: it finishes what a killed one left.
        if self._store.is_dir(self._directory):
            self._store.repair_if_idle(self._directory, lambda: commit.repair_own(self._store, self._naming))
        self._recover()

    def _recover(self) -> None:
        """Adopt the checkpoints an earlier run listed, exactly as TensorFlow's manager does."""
        now = time.time()
        found = read_listing(self._directory, None)
        if found is None:
            self._latest: str | None = None
            self._last_preserved = now - 1
            self._counter = 0
            return
        self._latest = found.latest or None
        self._last_preserved = min(found.last_preserved, now)
        for prefix, timestamp in found.records:
            timestamp = min(timestamp if found.has_timestamps else self._last_preserved, now)
            if self._owns(prefix) and timestamp > self._last_preserved:
                self._managed[prefix] = timestamp
        owned_latest = [self._latest] if self._latest and self._owns(self._latest) else []
        numbers = [self._number(p) for p in [*self._managed, *owned_latest]]
        self._counter = max([n for n in numbers if n is not None], default=0)

    @property
    def directory(self) -> str:
        return self._directory

    @property
    def checkpoint_interval(self) -> int | None:
        return self._checkpoint_interval

    @property
    def latest_checkpoint(self) -> str | None:
        """The newest checkpoint's prefix, if it still exists."""
        if self._latest is not None and checkpoint_exists(self._latest):
            return self._latest
        return None

    @property
    def checkpoints(self) -> list[str]:
        """Managed checkpoints, oldest first (preserved ones are not listed)."""
        return list(self._managed)

    def save(self, state: Any, checkpoint_number: int | None = None, check_interval: bool = True) -> str | None:
        """Save ``state`` as the next checkpoint; returns its prefix, or None when
        ``checkpoint_interval`` says it is too early. An empty ``state`` saves a checkpoint
        of no tensors, as ``tf.train.CheckpointManager`` does."""
        if self._checkpoint_interval is not None:
            assert self._step_counter is not None
            step = int(self._step_counter())
            if self._last_checkpoint_step is not None:
                if step == self._last_checkpoint_step:
                    return None
                if check_interval and step < self._last_checkpoint_step + self._checkpoint_interval:
                    return None
            self._last_checkpoint_step = step
        if self._background is not None:
            if self._coordinator is not None:
                self._background.drain()  # no exchange of this save while the last one's runs
            self._background.raise_error()
        counter = self._counter + 1
        if self._coordinator is not None:
            self._counter += 1  # on every process alike, whatever becomes of the save
        with failing_together(self._coordinator):
            tensors = tensors_of(state, object_graph=self._object_graph, save_counter=counter)
            number = counter if checkpoint_number is None else int(checkpoint_number)
            prefix = f"{self._prefix}-{number}"
            io = self._io if self._background is None else background_policy(self._io)
            writer = BundleWriter(prefix, num_shards=self._num_shards, sync=self._sync, io=io)

        # Counted when made where the save may finish (or fail) elsewhere: in the background,
        # or on rank 0 alone (coordinated saves are counted above, before anything can fail).
        count_when_made = self._background is not None or self._coordinator is not None

        def retain() -> Retention:
            if not count_when_made:
                self._counter += 1
            return self._retention(prefix)

        def commit_it() -> str:
            commit.save(self._store, self._naming, writer, retain, sync=self._sync, coordinator=self._coordinator)
            return prefix

        if self._background is None:
            with failing_together(self._coordinator):
                writer.add_all(tensors)
            commit_it()
        else:
            with failing_together(self._coordinator):
                self._background.submit(writer, tensors, commit_it)
            if self._coordinator is None:
                self._counter += 1
        return prefix

    def wait(self) -> None:
        """Block until every pending asynchronous save is committed and durable; raise the
        first error a background save met (then forgotten). A no-op when saves are synchronous."""
        if self._background is not None:
            self._background.wait()

    def _retention(self, prefix: str) -> Retention:
        """Name ``prefix`` in the state file; delete what rotation dropped."""
        timestamp = time.time()
        # replaced, not changed in place: the caller's thread may be reading it (async saves)
        managed = self._managed.copy()
        managed.pop(prefix, None)
        managed[prefix] = timestamp
        before = managed.copy(), self._last_preserved
        doomed = self._sweep(managed)
        self._managed = managed
        self._latest = prefix

        def undo() -> None:
            # still listed: they stay managed (the new checkpoint too), deleted by a later save
            self._managed, self._last_preserved = before

        return Retention(
            (prefix, timestamp),
            list(self._managed.items()),
            doomed,
            self._owns,
            undo,
            last_preserved=self._last_preserved,
        )

    def restore_or_initialize(self, into: Any = None, init_fn: Callable[[], Any] | None = None) -> str | None:
        """Restore the newest intact checkpoint into ``into`` and return its prefix; with
        none, call ``init_fn`` (if given) and return None.

        A damaged or incomplete checkpoint is skipped with a warning naming it and the
        damage, and the one before it is tried: a restore is all or nothing, so ``into``
        holds either one whole checkpoint or what it held before. Without ``into``, each
        candidate is verified instead (every checksum read).
        """
        self._settle()
        candidates = [self._latest] if self._latest is not None else []
        candidates += [p for p in reversed(self._managed) if p != self._latest]
        for prefix in candidates:
            if not checkpoint_exists(prefix):
                logger.warning("skipping checkpoint %s: missing or incomplete", prefix)
                continue
            try:
                if into is not None:
                    restore(prefix, into=into)
                else:
                    with load_checkpoint(prefix) as reader:
                        damage = [e for e in reader.verify() if isinstance(e, _DAMAGE)]
                    if damage:
                        raise damage[0]
            except _DAMAGE as e:
                logger.warning("skipping damaged checkpoint %s: %s", prefix, e)
                continue
            if self._checkpoint_interval is not None:
                assert self._step_counter is not None
                self._last_checkpoint_step = int(self._step_counter())
            return prefix
        if init_fn is not None:
            init_fn()
        return None

    def restore(self, into: Any, save_path: str | None = None) -> RestoreReport:
        """Fill ``into`` from ``save_path`` (default: the latest checkpoint); strict."""
        self._settle()
        path = save_path or self.latest_checkpoint
        if path is None:
            raise CheckpointNotFoundError("no checkpoint to restore", path=self._directory)
        return restore(path, into=into)

    def _settle(self) -> None:
        """Let pending background saves finish, so that what they commit is seen."""
        if self._background is not None:
            self._background.drain()

    def _owns(self, prefix: str) -> bool:
        return self._owner(prefix)

    def _number(self, prefix: str) -> int | None:
        match = self._pattern.fullmatch(os.path.basename(prefix))
        return int(match.group(1)) if match else None

    def _sweep(self, managed: OrderedDict[str, float]) -> list[str]:
        """Drop the oldest checkpoints beyond ``max_to_keep`` from ``managed``; returns those
        to delete (one per ``keep_checkpoint_every_n_hours`` period is preserved instead)."""
        doomed: list[str] = []
        if not self._max_to_keep:
            return doomed
        while len(managed) > self._max_to_keep:
            prefix, timestamp = managed.popitem(last=False)
            if self._keep_every_hours and timestamp - self._keep_every_hours * 3600 >= self._last_preserved:
                self._last_preserved = timestamp
                continue
            doomed.append(prefix)
        return doomed
