"""The verbs users type: open, list, read, save and find checkpoints by prefix or directory."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Iterator

import numpy as np

from ckptlib.errors import CheckpointError, CheckpointNotFoundError, CorruptCheckpointError
from ckptlib.format.filenames import data_filename, index_filename
from ckptlib.io_policy import DEFAULT, IOPolicy
from ckptlib.reader import BundleReader, CheckpointReader
from ckptlib.reader_v1 import V1Reader, v1_files
from ckptlib.state import get_checkpoint_state
from ckptlib.store import store_for

logger = logging.getLogger("ckptlib")

PathLike = str | os.PathLike[str]


def load_checkpoint(
    ckpt_dir_or_file: PathLike, *, verify_checksums: bool = True, mmap: bool = False, io: IOPolicy = DEFAULT
) -> CheckpointReader:
    """Open a checkpoint lazily: only its index is read until a tensor is requested.

    ``ckpt_dir_or_file`` is a prefix (``dir/model.ckpt-7``), a directory (its latest
    checkpoint, through the ``checkpoint`` state file), or one of the checkpoint's own
    files (``.index``, ``.data-00000-of-00001``), on the local disk or at a URL
    (``s3://bucket/run``: see ``ckptlib.store``; only the index is fetched, then each
    tensor's bytes as ranged reads). Legacy V1 files are read too.

    Tensors are read into private memory. With ``mmap=True``, numeric tensors come back as
    writable copy-on-write views of the memory-mapped data files instead: no copy is made,
    pages are shared with the page cache until written, but the views depend on the files
    staying as they are: truncating one while views are held kills the process with
    SIGBUS, rewriting one in place (``cp``, ``rsync --inplace``; ckptlib itself only ever
    replaces files by rename) silently changes their values, even of pages already written
    to, and each held map keeps a file descriptor open. Stores without maps (object stores,
    memory) read as with ``mmap=False``. Checksums are verified either way unless
    ``verify_checksums=False``. ``io`` sets the threads and process-wide settings that reads
    of many tensors at once may use (``IOPolicy``).
    Raises ``CheckpointNotFoundError`` or ``CorruptCheckpointError``.
    """
    prefix = _prefix_of(os.fspath(ckpt_dir_or_file))
    if store_for(prefix).exists(index_filename(prefix)):
        return BundleReader(prefix, verify_checksums=verify_checksums, mmap=mmap, io=io)
    if v1_files(prefix):
        return V1Reader(prefix, verify_checksums=verify_checksums)
    raise CheckpointNotFoundError("no checkpoint found (no .index file)", path=prefix)


def list_variables(ckpt_dir_or_file: PathLike) -> list[tuple[str, list[int]]]:
    """Sorted ``(name, shape)`` of every tensor, like ``tf.train.list_variables``."""
    with load_checkpoint(ckpt_dir_or_file) as reader:
        return [(name, list(reader.shape(name))) for name in sorted(reader.keys_list())]


def load_variable(ckpt_dir_or_file: PathLike, name: str) -> np.ndarray:
    """One tensor, like ``tf.train.load_variable`` (a trailing ``:0`` is ignored)."""
    if name.endswith(":0"):
        name = name[:-2]
    with load_checkpoint(ckpt_dir_or_file) as reader:
        return reader.get_tensor(name)


def checkpoint_exists(prefix: PathLike) -> bool:
    """Whether ``prefix`` is a complete checkpoint: index present and parseable, every data
    shard it names present (TensorFlow only looks for the index)."""
    prefix = os.fspath(prefix)
    store = store_for(prefix)
    if not store.exists(index_filename(prefix)):
        return bool(v1_files(prefix))
    try:
        reader = BundleReader(prefix, verify_checksums=False)
    except CheckpointError:
        return False
    num_shards = reader.header.num_shards
    reader.close()
    return all(store.exists(data_filename(prefix, i, num_shards)) for i in range(num_shards))


def latest_checkpoint(
    checkpoint_dir: PathLike, latest_filename: str | None = None, *, verify: bool = False
) -> str | None:
    """The newest complete checkpoint the directory's state file lists, or None.

    Like ``tf.train.latest_checkpoint``, except that when the newest recorded checkpoint is
    missing or incomplete, the newest complete one listed before it is returned (with a
    warning) instead of None. With ``verify``, the newest one whose every block and tensor
    checksum verifies (``CheckpointReader.verify``): a damaged or incomplete checkpoint is
    skipped with a warning naming it and what is wrong, so that a training job resumes from
    the newest intact one (tensors ckptlib cannot decode, such as TF's DT_VARIANT iterator
    state, are not damage).

    Only reads: what a killed save left behind is repaired by the next save, never here.
    """
    directory = os.fspath(checkpoint_dir)
    try:
        state = get_checkpoint_state(directory, latest_filename)
    except CorruptCheckpointError as e:
        logger.warning("ignoring unreadable checkpoint state: %s", e)
        return None
    if state is None:
        return None
    candidates = dict.fromkeys([state.model_checkpoint_path, *reversed(state.all_model_checkpoint_paths)])
    skipped: list[str] = []
    for prefix in present(candidates):
        if not checkpoint_exists(prefix):
            continue
        problems = _damage(prefix) if verify else []
        if problems:
            logger.warning("skipping damaged checkpoint %s: %s", prefix, problems[0])
            skipped.append(prefix)
            continue
        if prefix != state.model_checkpoint_path:
            logger.warning(
                "newest checkpoint %s is %s; using %s",
                state.model_checkpoint_path,
                "damaged" if state.model_checkpoint_path in skipped else "missing or incomplete",
                prefix,
            )
        return prefix
    logger.warning("none of the checkpoints listed in %s %s", directory, "verify" if skipped else "exist")
    return None


def present(prefixes: Iterable[str]) -> Iterator[str]:
    """Those of ``prefixes`` (in order) with an index or V1 file in their directory. Each
    directory is listed once: a state file may list hundreds of thousands of paths."""
    listings: dict[str, _Listing] = {}
    for prefix in prefixes:
        directory, name = os.path.split(prefix)
        listing = listings.get(directory)
        if listing is None:
            listing = listings[directory] = _Listing(directory)
        if listing.may_hold(name):
            yield prefix


class _Listing:
    """The names in one directory, as far as checkpoints go."""

    def __init__(self, directory: str):
        self.names: set[str] | None = None  # None: cannot list (execute-only): may hold anything
        try:
            names = store_for(directory).listdir(directory)
        except OSError:
            return
        self.names = set(names)
        self.v1_stems = {match.group(1) for match in map(_V1_SHARD.fullmatch, names) if match}

    def may_hold(self, name: str) -> bool:
        if self.names is None or any(c in name for c in "*?["):  # (a glob recorded for a sharded V1 save)
            return True
        return name + ".index" in self.names or name in self.names or name in self.v1_stems


_V1_SHARD = re.compile(r"(.+)-\d{5}-of-\d{5}")


def _damage(prefix: str) -> list[CheckpointError]:
    """What ``verify`` finds damaged or missing in a checkpoint; features ckptlib cannot
    decode (a DT_VARIANT tensor of TF's) are not damage."""
    try:
        with load_checkpoint(prefix) as reader:
            problems = reader.verify()
    except CheckpointError as e:
        problems = [e]
    return [e for e in problems if isinstance(e, (CorruptCheckpointError, CheckpointNotFoundError))]


_DATA_SUFFIX = ".data-"


def _prefix_of(path: str) -> str:
    """Map a directory or a checkpoint file to its prefix."""
    store = store_for(path)
    if store.is_dir(path):
        latest = latest_checkpoint(path)
        if latest is None:
            raise CheckpointNotFoundError("no checkpoint state file or no complete checkpoint listed in it", path=path)
        return latest
    if path.endswith(".index"):
        return path[: -len(".index")]
    base = os.path.basename(path)
    if _DATA_SUFFIX in base and not store.exists(path + ".index"):
        cut = base.rindex(_DATA_SUFFIX)
        candidate = os.path.join(os.path.dirname(path), base[:cut])
        if store.exists(index_filename(candidate)):
            return candidate
    return path
