"""The ``Store`` interface: where a checkpoint's bytes live (the role of LevelDB's ``Env``).

Everything above this layer names files by path: a local path (``runs/a/model.ckpt-7.index``)
or a URL (``s3://bucket/run/model.ckpt-7.index``). A store moves bytes by path and knows
nothing of tensors. What differs between stores, and how the commit protocol
(``ckptlib.commit``) adapts::

    ability                local files     memory      object stores (fsspec: s3, gs, ...)
    positioned reads       pread           slices      ranged GETs, several at once
    zero-copy map          mmap            no          no
    a new file is written  under a temp    temp name   at its final key, visible only once
                           name, renamed               finished (multipart upload)
    atomic rename          yes             yes         no: the index, written last, commits
    state file update      lock + rename   lock        conditional write (If-Match), retried
    save lock (repairs)    flock           a lock      none: leftovers wait for ``repair``

A store never decides what is safe to delete: that is the commit protocol's job.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable


class Buffer(Protocol):
    """Bytes to write: a memoryview, bytes, or a C-contiguous ndarray (its buffer)."""

    @property
    def nbytes(self) -> int: ...


@runtime_checkable
class ReadFile(Protocol):
    """An open, immutable file: positioned reads (a ``ByteSource`` for the format layer).

    Every method may be called from several threads at once. Reads past the end raise
    ``CorruptCheckpointError`` naming the file.
    """

    path: str

    @property
    def size(self) -> int: ...

    def read_at(self, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset``."""
        ...

    def readinto(self, offset: int, view: memoryview) -> None:
        """Fill ``view`` (a writable byte buffer) from ``offset``."""
        ...

    def mapped(self) -> Any | None:
        """A writable copy-on-write memory map of the whole file (a buffer, made once), or
        None where the store has none (reads then copy)."""
        ...

    def mapped_view(self) -> memoryview | None:
        """A memoryview of ``mapped()``, kept so that slicing it per tensor is cheap."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class NewFile(Protocol):
    """A file being written. Nothing appears under ``final_path`` until the commit
    protocol installs it (stores with rename) or ``finish`` completes it (stores without).

    ``write_at`` may be called from several threads at once for disjoint ranges, in any
    order; together the writes must cover ``[0, size)`` exactly when a size was given.
    """

    final_path: str
    # Where the bytes are until installed: a temporary path beside ``final_path`` on stores
    # with rename, ``final_path`` itself on stores without.
    path: str

    def write_at(self, offset: int, buffers: Sequence[Buffer], size: int) -> None:
        """Write ``buffers`` back to back at ``offset``; ``size`` is their total ``nbytes``."""
        ...

    def finish(self, sync: bool) -> None:
        """Every byte written and (``sync``) durable; on a store without rename the file
        now exists under ``final_path``. Closes the file. Raises ``OSError`` naming
        ``final_path`` on failure (and the file is then aborted)."""
        ...

    def abort(self) -> None:
        """Drop the file and whatever was written of it, finished or not (a finished one
        is deleted from ``path``); never raises ``Exception``s."""
        ...


@runtime_checkable
class Store(Protocol):
    """Where checkpoint files live. Paths are the store's own (local paths or URLs)."""

    # ``rename`` exists and replaces its target atomically. Without it, new files are
    # written at their final path, visible once finished, and the index commits a bundle.
    atomic_rename: bool
    # ``ReadFile.mapped`` gives memory maps (else it gives None, and readers copy).
    can_map: bool
    # How many transfers to run at once for one bundle (``shard_writer``, ``bulk_read``):
    # cores for a local disk, more for a network store, where each request mostly waits.
    io_threads: int
    # How many writes to one file gain from running at once: 1 for a local disk (the
    # kernel serialises buffered writes to one file), several for multipart uploads.
    writers_per_file: int

    def open(self, path: str) -> ReadFile:
        """Open a regular file for reading; ``CheckpointNotFoundError`` if there is none,
        ``CorruptCheckpointError`` if it is not a regular file."""
        ...

    def create(self, final_path: str, size: int | None = None, *, sync: bool = True) -> NewFile:
        """Start a new file that will become ``final_path``; ``size``, if known, lets the
        store reserve space (local) or plan its parts (multipart uploads). ``sync`` says
        the file will be finished durably, so the store may start flushing early."""
        ...

    def rename(self, source: str, target: str) -> None:
        """Atomically replace ``target`` by ``source`` (only where ``atomic_rename``)."""
        ...

    def delete(self, path: str) -> None:
        """Remove a file; a missing one is not an error."""
        ...

    def exists(self, path: str) -> bool: ...

    def is_dir(self, path: str) -> bool: ...

    def listdir(self, directory: str) -> list[str]:
        """The names (not paths) of the files directly in ``directory``; [] if it does not
        exist. Raises ``OSError`` if it exists but cannot be listed."""
        ...

    def mtime(self, path: str) -> float | None:
        """Modification time in seconds since the epoch; None if there is no such file."""
        ...

    def makedirs(self, directory: str) -> None:
        """Create ``directory`` and its parents where the store has directories."""
        ...

    def sync_dir(self, directory: str) -> None:
        """Make the names created or renamed in ``directory`` durable (a no-op where they
        are durable once made)."""
        ...

    def read_small(self, path: str, limit: int) -> bytes | None:
        """A whole small file (state file, journal); None if there is none. A file larger
        than ``limit`` or not a regular file raises ``CorruptCheckpointError``."""
        ...

    def write_small(self, path: str, data: bytes, sync: bool) -> None:
        """Replace ``path`` by ``data`` atomically: readers see the old or the new bytes."""
        ...

    def update(self, path: str, change: Callable[[bytes | None], bytes | None], sync: bool) -> None:
        """Atomically read-modify-write a small file against concurrent updaters (other
        threads, processes, machines): ``change`` gets the current bytes (None if absent)
        and returns the new ones (None: leave it as it is). It may be called more than once
        when another updater got there first (conditional writes), so it must not have
        side effects."""
        ...

    def saving(self, directory: str, repair: Callable[[], None] | None) -> AbstractContextManager[None]:
        """Held for the whole of one save into ``directory``: while any is held, nothing
        may touch leftovers there. ``repair`` runs first if the store can tell that no
        other save is running (local files: ``flock``); where it cannot, it never runs."""
        ...

    def repair_if_idle(self, directory: str, repair: Callable[[], None]) -> bool:
        """Run ``repair`` if the store can tell that no save is running in ``directory``."""
        ...

    def real(self, path: str) -> str:
        """A canonical spelling of ``path`` (symlinks resolved, for local files), so that
        two spellings of one file compare equal."""
        ...

    def discard_unfinished(self, directory: str, owns: Callable[[str], bool]) -> list[str]:
        """Drop writes started in ``directory`` and never finished whose final path ``owns``
        accepts, returning their final paths: an object store's incomplete multipart
        uploads (invisible, but billed). Only for a caller that knows their writers are gone.
        Temporary files of stores with rename are ordinary files, listed and deleted by the
        commit protocol (``TEMP_MARKER`` in their names), so there this is a no-op."""
        ...
