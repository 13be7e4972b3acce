"""Step 1 of the commit protocol: a bundle's new files take their place, the index last.

On a store with atomic rename (local files, memory) the files were written under
temporary names; an existing bundle of the same prefix is moved aside (its index first, so
no reader ever pairs an old index with new data), the new shards are renamed in, then the
new index; on failure everything goes back. A kill in between leaves files aside, which
``recover_interrupted_saves``, run by a later save once the store's save lock says no save
is running, puts back (or drops, if the new index made it)::

    prefix.index -> prefix.index.ckptlib-old-<t>     (old bundle aside, index first)
    prefix.data-* -> prefix.data-*.ckptlib-old-<t>
    prefix.data-*.ckptlib-tmp-<t> -> prefix.data-*   (new shards in)
    prefix.index.ckptlib-tmp-<t> -> prefix.index     (the commit mark)

On a store without rename (object stores) the shards were uploaded straight to their
final names, and the index, uploaded last, is the commit mark: a bundle without its index
does not exist. A bundle there cannot be replaced without a moment when neither the old
nor the new one is whole, so saving over an existing checkpoint is refused
(``UnsupportedFeatureError``) before anything is written.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Collection, Sequence

from ckptlib.errors import CheckpointError, UnsupportedFeatureError
from ckptlib.format.bundle import HEADER_KEY, decode_header
from ckptlib.format.filenames import bundle_prefix, data_filename, index_filename, is_data_file_of
from ckptlib.format.table import TableReader
from ckptlib.store import NewFile, Store
from ckptlib.store.temp_names import ASIDE_MARKER, TEMP_MARKER, aside_path, leftovers

logger = logging.getLogger("ckptlib")


def write_bundle(
    store: Store,
    prefix: str,
    write_data: Callable[[list[str]], tuple[list[NewFile], bytes]],
    num_shards: int,
    sync: bool,
) -> None:
    """Write a bundle at ``prefix`` and put it in place, replacing any bundle there.

    ``write_data(final_paths)`` writes the ``num_shards`` data files (``shard_writer``)
    and returns them, finished, with the index's bytes. On failure nothing new remains
    and an existing bundle at ``prefix`` is left as it was; on a store without rename, an
    existing bundle is refused (``UnsupportedFeatureError``) before anything is written.
    """
    finals = [data_filename(prefix, i, num_shards) for i in range(num_shards)]
    index = index_filename(prefix)
    if not store.atomic_rename and store.exists(index):
        raise UnsupportedFeatureError(
            "a checkpoint already exists here, and this store cannot replace one atomically (it has no "
            "rename): a failed save would lose both; save under a new prefix (a new step), or delete "
            "the old checkpoint first",
            path=prefix,
        )
    files, index_bytes = write_data(finals)
    try:
        index_file = store.create(index, len(index_bytes), sync=sync)
        files.append(index_file)
        index_file.write_at(0, [memoryview(index_bytes)], len(index_bytes))
        index_file.finish(sync)
    except BaseException:
        for file in files:
            file.abort()
        raise
    if store.atomic_rename:
        install_files(store, prefix, [file.path for file in files], [*finals, index], sync)
    else:
        remove_stale_shards(store, prefix, finals)


def remove_stale_shards(store: Store, prefix: str, keep: Collection[str]) -> None:
    """Data files of ``prefix`` of another shard count than the new bundle's (leftovers of
    the bundle it replaced)."""
    directory, name = os.path.split(prefix)
    kept = {os.path.basename(path) for path in keep}
    for other in store.listdir(directory):
        if other not in kept and is_data_file_of(other, name):
            store.delete(os.path.join(directory, other))


def install_files(store: Store, prefix: str, temps: list[str], finals: list[str], sync: bool) -> None:
    """Rename ``temps`` to ``finals`` (the index last), replacing any bundle at ``prefix``.

    An existing bundle is first moved aside: its index before its data. On failure the
    new files are removed and the old bundle is put back; on success its leftovers (say,
    shards of another shard count) go.

    An earlier save of this prefix killed mid-install and not repaired yet (another save was
    running) left files aside: they are repaired first, as a later save would, so that only
    ever one generation of files is aside.
    """
    directory, name = os.path.split(prefix)
    index = index_filename(prefix)
    names = store.listdir(directory)
    earlier = {
        final: aside
        for aside, final in leftovers(directory, names, ASIDE_MARKER)
        if os.path.basename(bundle_prefix(final) or "") == name
    }
    if earlier:
        _recover_bundle(store, os.path.join(directory, name), earlier)
        names = store.listdir(directory)
    existing = [index] if name + ".index" in names else []
    existing += sorted(os.path.join(directory, n) for n in names if is_data_file_of(n, name))
    existing = [path for path in existing if not store.is_dir(path)]  # files only: never move a directory
    moved: list[tuple[str, str]] = []
    installed: list[str] = []
    try:
        for path in existing:
            aside = aside_path(path)
            store.rename(path, aside)
            moved.append((aside, path))
        for temp, final in zip(temps, finals, strict=True):
            if final == index and sync:
                store.sync_dir(directory)  # every shard's new name is durable before the index appears
            store.rename(temp, final)
            installed.append(final)
        if sync:
            store.sync_dir(directory)
    except BaseException:
        for path in installed:
            store.delete(path)
        for temp in temps[len(installed) :]:
            store.delete(temp)
        for aside, path in reversed(moved):
            with contextlib.suppress(OSError):
                store.rename(aside, path)
        raise
    for aside, _ in moved:
        store.delete(aside)


def recover_interrupted_saves(
    store: Store, directory: str, owns: Callable[[str], bool], own_files: Collection[str] = ()
) -> None:
    """Repair what killed saves left in ``directory``: a bundle whose prefix ``owns`` accepts
    that was being replaced gets its old files back unless the new index made it, and the
    temporary files of those bundles and of ``own_files`` (names: a saver's state file and
    deletion journal) go, as do unfinished uploads of those bundles.

    Only for a caller that knows every writer of these files is gone (the store's save
    lock held exclusively, or a user's word). Other savers' files are theirs to repair.
    """
    names = store.listdir(directory)
    by_prefix: dict[str, dict[str, str]] = {}
    for aside, final in leftovers(directory, names, ASIDE_MARKER):
        prefix = bundle_prefix(final)
        if prefix is not None and owns(prefix):
            by_prefix.setdefault(prefix, {})[final] = aside
    for prefix, asides in by_prefix.items():
        _recover_bundle(store, prefix, asides)
    for temp, final in leftovers(directory, names, TEMP_MARKER):
        prefix = bundle_prefix(final)
        if os.path.basename(final) in own_files if prefix is None else owns(prefix):
            store.delete(temp)
    store.discard_unfinished(directory, lambda path: (p := bundle_prefix(path)) is not None and owns(p))


def remove_unindexed_data(store: Store, directory: str, owns: Callable[[str], bool]) -> list[str]:
    """Delete the data files of bundles ``owns`` accepts that have no index: on a store
    without rename, what a save killed before its index went up leaves. Returns their
    prefixes. Only for a caller that knows no save of those bundles is running."""
    names = set(store.listdir(directory))
    removed: dict[str, None] = {}
    for name in sorted(names):
        prefix = bundle_prefix(name)
        if prefix is None or name.endswith(".index") or prefix + ".index" in names:
            continue
        if TEMP_MARKER in name or ASIDE_MARKER in name or not owns(os.path.join(directory, prefix)):
            continue
        store.delete(os.path.join(directory, name))
        removed[os.path.join(directory, prefix)] = None
    return list(removed)


def _recover_bundle(store: Store, prefix: str, asides: dict[str, str]) -> None:
    """``asides``: final name -> moved-aside file, for one prefix. ``install_files`` moves the
    old index, then every old shard, then installs the new shards and the new index last."""
    index = index_filename(prefix)
    old_index = asides.get(index)
    old_shards = _num_shards(store, old_index) if old_index is not None else None
    if store.exists(index) or old_index is None or old_shards is None:
        for aside in asides.values():  # the new bundle is whole, or the old one is beyond use
            store.delete(aside)
        return
    directory, name = os.path.split(prefix)
    old_data = {data_filename(prefix, i, old_shards) for i in range(old_shards)}
    if old_data <= asides.keys():  # all old shards had moved: what is in place now is new
        for other in store.listdir(directory):
            if is_data_file_of(other, name):
                store.delete(os.path.join(directory, other))
    for final in sorted(asides, key=lambda f: f == index):  # data first, index last
        with contextlib.suppress(OSError):
            store.rename(asides[final], final)
    store.sync_dir(directory)


def _num_shards(store: Store, index_path: str) -> int | None:
    try:
        file = store.open(index_path)
    except CheckpointError:
        return None
    try:
        key, value = TableReader(file).first()
        return decode_header(value).num_shards if key == HEADER_KEY else None
    except CheckpointError:
        return None
    finally:
        file.close()


def bundle_files(prefix: str, num_shards: int) -> Sequence[str]:
    """Every file of a bundle of ``num_shards`` shards, data first, index last."""
    return [*(data_filename(prefix, i, num_shards) for i in range(num_shards)), index_filename(prefix)]
