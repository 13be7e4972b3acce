"""What each ``ckptlib`` command finds, as plain data; ``ckptlib.cli`` parses the arguments
and renders these results as text or JSON.

Everything goes through the public API (``load_checkpoint``, ``get_checkpoint_state``,
``CheckpointReader.verify``...) and the store seam (``store_for``), never the file system
directly, so that a local path and a URL (``s3://bucket/run``) behave alike. Functions raise
``CheckpointError`` (or ``OSError``) for damaged or missing input and ``UsageError`` for
arguments that cannot work together; nothing here prints.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import numpy as np

import ckptlib
from ckptlib.convert import export_arrays, import_arrays
from ckptlib.object_graph_view import ObjectGraph, path_text
from ckptlib.store import Store, is_url, store_for
from ckptlib.tree import STRUCTURE_KEY

# ``progress(done, total)``, called as work advances (the CLI draws it on a terminal).
Progress = Callable[[int, int], None]

# TensorFlow 2's record of the object graph: one string tensor in every tf.train.Checkpoint,
# structure rather than weights; .safetensors, which holds no strings, goes without it.
OBJECT_GRAPH = "_CHECKPOINTABLE_OBJECT_GRAPH"
# String entries that describe the checkpoint rather than hold a value: left out of safetensors files
_METADATA = frozenset({OBJECT_GRAPH, STRUCTURE_KEY})

_STEP = re.compile(r"-(\d+)$")


class UsageError(ValueError):
    """The arguments cannot work together (the CLI exits 2)."""


def _no_progress(done: int, total: int) -> None:
    pass


# -- ls -------------------------------------------------------------------------------
@dataclass
class CheckpointRow:
    """One checkpoint of a directory listing. ``listed``: named by the state file (else
    found by its ``.index`` file, complete or not: crash leftovers show). ``time``: the
    state file's timestamp, else the index file's modification time, else None."""

    name: str
    prefix: str
    step: int | None
    complete: bool
    shards: int
    size: int
    missing_files: list[str]
    listed: bool = False
    time: float | None = None
    latest: bool = False


@dataclass
class Listing:
    """A directory's checkpoints: those its state file lists, in its order, then the rest."""

    directory: str
    latest: str | None
    checkpoints: list[CheckpointRow]


def list_directory(directory: str) -> Listing:
    """Every checkpoint in ``directory`` (a local path or a URL), with its size and whether
    it is complete. Raises ``CheckpointNotFoundError`` if there is no such directory,
    ``CorruptCheckpointError`` if its state file cannot be read."""
    store = store_for(directory)
    if not directory or not store.is_dir(directory):  # the local store reads "" as "."; ls never did
        raise ckptlib.CheckpointNotFoundError("no such directory", path=directory)
    state = ckptlib.get_checkpoint_state(directory)
    listed: list[tuple[str, float | None]] = []
    if state is not None:
        paths = list(state.all_model_checkpoint_paths)
        times: list[float | None] = list(state.all_model_checkpoint_timestamps)
        if len(times) != len(paths):
            times = [None] * len(paths)
        if state.model_checkpoint_path not in paths:
            paths.append(state.model_checkpoint_path)
            times.append(None)
        listed = list(zip(paths, times, strict=True))
    latest = ckptlib.latest_checkpoint(directory)
    rows = []
    seen = set()
    for prefix, timestamp in listed:
        row = _describe(prefix)
        row.listed = True
        row.time = timestamp if timestamp is not None else _index_mtime(prefix)
        rows.append(row)
        seen.add(store_for(prefix).real(prefix))
    for prefix in _indexed_prefixes(directory, seen):
        row = _describe(prefix)
        row.time = _index_mtime(prefix)
        rows.append(row)
    latest_real = None if latest is None else store_for(latest).real(latest)
    for row in rows:
        row.latest = latest_real is not None and store_for(row.prefix).real(row.prefix) == latest_real
    return Listing(directory, latest, rows)


def _describe(prefix: str) -> CheckpointRow:
    """Name, step, completeness, shard count and size on disk of the checkpoint ``prefix``."""
    store = store_for(prefix)
    match = _STEP.search(prefix)
    complete = ckptlib.checkpoint_exists(prefix)
    try:
        with ckptlib.load_checkpoint(prefix, verify_checksums=False) as reader:
            files = reader.files
    except ckptlib.CheckpointError:
        files = [f for f in [prefix + ".index"] if store.exists(f)]
    sizes = {f: _size(store, f) for f in files}
    return CheckpointRow(
        name=os.path.basename(prefix),
        prefix=prefix,
        step=int(match.group(1)) if match else None,
        complete=complete,
        shards=max(len(files) - 1, 0),
        size=sum(s for s in sizes.values() if s is not None),
        missing_files=[os.path.basename(f) for f, s in sizes.items() if s is None],
    )


def _size(store: Store, path: str) -> int | None:
    """The size of the file at ``path``, or None if there is none."""
    try:
        file = store.open(path)
    except ckptlib.CheckpointNotFoundError:
        return None
    try:
        return file.size
    finally:
        file.close()


def _index_mtime(prefix: str) -> float | None:
    return store_for(prefix).mtime(prefix + ".index")


def _indexed_prefixes(directory: str, seen: set[str]) -> list[str]:
    """Prefixes of the ``.index`` files in ``directory`` whose real path is not in ``seen``."""
    store = store_for(directory)
    found = []
    for name in sorted(store.listdir(directory)):
        if name.endswith(".index"):
            prefix = os.path.join(directory, name[: -len(".index")])
            if store.real(prefix) not in seen:
                found.append(prefix)
    return found


# -- inspect --------------------------------------------------------------------------
@dataclass
class Slot:
    """An optimizer slot: its name, the variable it belongs to and the optimizer (object
    paths, "" where unknown)."""

    name: str
    variable: str
    optimizer: str


@dataclass
class ObjectPaths:
    """Where a TF2 checkpoint's object graph puts a tensor: the path naming it (None if
    none does), every path reaching it (TF's escaped spelling), and its slot if it is one."""

    object_path: str | None
    object_paths: list[str]
    slot: Slot | None


@dataclass
class TensorRow:
    """One tensor of an inspected checkpoint. ``stats`` and ``value`` only when asked for;
    ``paths`` only for a checkpoint with a readable object graph."""

    name: str
    dtype: str
    shape: list[int]
    nbytes: int
    shard: int | None
    slices: int
    stats: dict[str, Any] | None = None
    value: np.ndarray | None = None
    paths: ObjectPaths | None = None


class Inspection:
    """A checkpoint open for inspection: ``prefix``, ``files``, the ``names`` selected, and
    ``rows()``, which reads one tensor at a time, so that a checkpoint of a million tensors
    is never held in memory whole. ``graph_problem`` says why object paths are missing when
    the object graph is damaged (the tensors can still be listed). Close it (or use it as a
    context manager) to release the reader."""

    def __init__(self, path: str, tensor: str | None = None, *, values: bool = False, stats: bool = False):
        """Open ``path`` (a prefix, directory or checkpoint file, local or URL). Raises
        ``CheckpointNotFoundError`` or ``CorruptCheckpointError`` if it cannot be opened,
        ``TensorNotFoundError`` if ``tensor`` is not in it."""
        self._reader = ckptlib.load_checkpoint(path)
        try:
            self.prefix: str = self._reader.prefix
            self.files: list[str] = list(self._reader.files)
            names = self._reader.keys_list()
            if tensor is not None and tensor not in self._reader:
                raise ckptlib.TensorNotFoundError("no such tensor", path=self.prefix, tensor=tensor)
            self.names: list[str] = [tensor] if tensor is not None else names
            self.graph_problem: str | None = None
            self._graph: ObjectGraph | None = None
            try:
                self._graph = self._reader.object_graph
            except ckptlib.CorruptCheckpointError as e:
                self.graph_problem = str(e)
        except BaseException:
            self._reader.close()
            raise
        self._values = values
        self._stats = stats

    def rows(self) -> Iterator[TensorRow]:
        """The selected tensors in order, each read only when its row is asked for. Raises
        ``CheckpointError`` for a tensor that cannot be read."""
        for name in self.names:
            info = self._reader.tensor_info(name)
            array = self._reader.get_tensor(name) if self._stats or self._values else None
            yield TensorRow(
                name=info.name,
                dtype=info.dtype,
                shape=list(info.shape),
                nbytes=info.nbytes,
                shard=info.shard,
                slices=info.num_slices,
                stats=tensor_stats(array) if self._stats and array is not None else None,
                value=array if self._values else None,
                paths=None if self._graph is None else _object_paths(self._graph, name),
            )

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> Inspection:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def _object_paths(graph: ObjectGraph, name: str) -> ObjectPaths:
    tensor = graph.tensors.get(name)
    if tensor is None:
        return ObjectPaths(None, [], None)
    slot = tensor.slot
    return ObjectPaths(
        object_path=path_text(tensor.path) if tensor.path else None,
        object_paths=[path_text(p) for p in tensor.paths],
        slot=None
        if slot is None
        else Slot(name=slot.name, variable=path_text(slot.variable), optimizer=path_text(slot.optimizer)),
    )


def tensor_stats(array: np.ndarray) -> dict[str, Any]:
    """NaN and Inf counts and, over the finite values, min, max, mean and std (not for
    complex tensors); {} for strings."""
    if array.dtype == object:
        return {}
    with np.errstate(all="ignore"):  # NaN payloads, overflowing squares: no RuntimeWarnings on stderr
        values = array.astype(np.float64) if array.dtype.kind not in "c" else array.astype(np.complex128)
        if values.size == 0:
            return {"nan": 0, "inf": 0}
        finite = values[np.isfinite(values)]
        out: dict[str, Any] = {
            "nan": int(np.isnan(values).sum()),
            "inf": int(np.isinf(values).sum()),
        }
        if finite.size and values.dtype.kind != "c":
            out.update(
                min=float(finite.min()), max=float(finite.max()), mean=float(finite.mean()), std=float(finite.std())
            )
    return out


# -- verify ---------------------------------------------------------------------------
@dataclass
class Problem:
    """One thing wrong: ``label`` is DAMAGED, MISSING or UNSUPPORTED."""

    label: str
    message: str


@dataclass
class Verdict:
    """One checkpoint verified: its ``prefix`` (as resolved), how many ``tensors`` it has,
    what is wrong with it; ``listed`` (in a directory) whether its state file names it."""

    prefix: str
    tensors: int
    problems: list[Problem] = field(default_factory=list)
    listed: bool | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class DirectoryVerdict:
    """Every checkpoint of a directory verified; ``problems``: what is wrong with the
    directory itself (an unreadable state file)."""

    directory: str
    checkpoints: list[Verdict]
    problems: list[str]

    @property
    def bad(self) -> int:
        return sum(not v.ok for v in self.checkpoints)

    @property
    def ok(self) -> bool:
        return not self.bad and not self.problems


def verify_path(path: str, progress: Progress | None = None) -> Verdict | DirectoryVerdict:
    """``verify_directory`` for a directory, else ``verify_checkpoint`` of the one
    checkpoint ``path`` names (which must exist: ``CheckpointNotFoundError`` if not)."""
    if path and store_for(path).is_dir(path):  # "": the latest checkpoint of "." (load_checkpoint)
        return verify_directory(path, progress)
    return verify_checkpoint(path, must_exist=True, progress=progress)


def verify_checkpoint(path: str, *, must_exist: bool = False, progress: Progress | None = None) -> Verdict:
    """Check everything a restore checks (``CheckpointReader.verify``). Damage is reported
    in the verdict, not raised; a missing checkpoint too, unless ``must_exist`` (then
    ``CheckpointNotFoundError``)."""
    problems: list[Problem] = []
    count = 0
    prefix = str(path)
    # A state file listing a directory: not opened, as that would resolve it.
    if not must_exist and store_for(path).is_dir(path):
        return Verdict(prefix, 0, [Problem("MISSING", f"{prefix}: a directory, not a checkpoint prefix")])
    try:
        with ckptlib.load_checkpoint(path) as reader:
            prefix = reader.prefix
            problems = [Problem(_label(p), str(p)) for p in reader.verify(progress=progress or _no_progress)]
            with contextlib.suppress(ckptlib.CheckpointError):  # an unreadable index: reported above
                count = len(reader)
    except ckptlib.CheckpointNotFoundError as e:
        if must_exist:
            raise
        problems = [Problem("MISSING", str(e))]
    except ckptlib.CheckpointError as e:
        problems = [Problem(_label(e), str(e))]
    return Verdict(prefix, count, problems)


def _label(problem: ckptlib.CheckpointError) -> str:
    return "UNSUPPORTED" if isinstance(problem, ckptlib.UnsupportedFeatureError) else "DAMAGED"


def verify_directory(directory: str, progress: Progress | None = None) -> DirectoryVerdict:
    """Every checkpoint the state file lists, then every complete one it does not; reads
    only. Raises ``CheckpointNotFoundError`` if there is nothing to verify."""
    problems: list[str] = []
    try:
        listed = _listed_prefixes(directory)
    except ckptlib.CorruptCheckpointError as e:  # still check what the directory holds
        problems.append(str(e))
        listed = []
    seen = {store_for(prefix).real(prefix) for prefix in listed}
    unlisted = [p for p in _indexed_prefixes(directory, seen) if ckptlib.checkpoint_exists(p)]
    if not listed and not unlisted and not problems:
        raise ckptlib.CheckpointNotFoundError("no checkpoints in this directory", path=directory)
    verdicts = []
    for prefixes, is_listed in ((listed, True), (unlisted, False)):
        for prefix in prefixes:
            verdict = verify_checkpoint(prefix, progress=progress)
            verdict.listed = is_listed
            verdicts.append(verdict)
    return DirectoryVerdict(directory, verdicts, problems)


def _listed_prefixes(directory: str) -> list[str]:
    """The prefixes the state file lists, oldest first, the latest last if not among them."""
    state = ckptlib.get_checkpoint_state(directory)
    if state is None:
        return []
    paths = list(state.all_model_checkpoint_paths)
    if state.model_checkpoint_path not in paths:
        paths.append(state.model_checkpoint_path)
    return list(dict.fromkeys(paths))


# -- diff -----------------------------------------------------------------------------
@dataclass
class TensorType:
    dtype: str
    shape: list[int]


@dataclass
class TypeChange:
    """A tensor in both checkpoints whose dtype or shape differs."""

    name: str
    a: TensorType
    b: TensorType


@dataclass
class ValueChange:
    """A tensor whose values differ (beyond the tolerance); ``max_abs_diff`` is None for
    strings."""

    name: str
    max_abs_diff: float | None


@dataclass
class Diff:
    """Two checkpoints compared tensor by tensor; every list sorted by name."""

    only_in_a: list[str]
    only_in_b: list[str]
    changed: list[TypeChange]
    different: list[ValueChange]
    equal: list[str]


def diff_checkpoints(a: str, b: str, *, atol: float = 0.0, progress: Progress | None = None) -> Diff:
    """Compare the checkpoints ``a`` and ``b`` (local or URLs): names in one only, dtype or
    shape changes, and values equal within ``atol`` or not. Raises ``CheckpointError`` if
    either cannot be read."""
    progress = progress or _no_progress
    with ckptlib.load_checkpoint(a) as ra, ckptlib.load_checkpoint(b) as rb:
        names_a, names_b = set(ra.keys_list()), set(rb.keys_list())
        changed: list[TypeChange] = []
        equal: list[str] = []
        different: list[ValueChange] = []
        common = sorted(names_a & names_b)
        for i, name in enumerate(common):
            ia, ib = ra.tensor_info(name), rb.tensor_info(name)
            if ia.dtype != ib.dtype or ia.shape != ib.shape:
                changed.append(
                    TypeChange(name, TensorType(ia.dtype, list(ia.shape)), TensorType(ib.dtype, list(ib.shape)))
                )
            else:
                same, max_diff = compare_arrays(ra.get_tensor(name), rb.get_tensor(name), atol)
                if same:
                    equal.append(name)
                else:
                    different.append(ValueChange(name, max_diff))
            progress(i + 1, len(common))
    return Diff(sorted(names_a - names_b), sorted(names_b - names_a), changed, different, equal)


def compare_arrays(x: np.ndarray, y: np.ndarray, atol: float) -> tuple[bool, float | None]:
    """Whether two same-shape tensors are equal (within ``atol``), and their max |x - y|.

    NaNs in the same places count as equal; strings compare exactly.
    """
    if x.dtype == object:
        return all(a == b for a, b in zip(x.flat, y.flat, strict=True)), None
    if x.size == 0:
        return True, 0.0
    wide = np.complex128 if x.dtype.kind == "c" else np.float64
    with np.errstate(all="ignore"):  # casting NaN payloads warns; keep stderr clean
        xf, yf = x.astype(wide), y.astype(wide)
        same = (xf == yf) | (np.isnan(xf) & np.isnan(yf))
        delta = np.where(same, 0.0, np.abs(xf - yf))
    delta[np.isnan(delta)] = np.inf
    max_diff = float(delta.max())
    if x.dtype.kind in "biu":  # exact, whatever float64 rounding says
        return bool(np.array_equal(x, y)) or (max_diff <= atol and atol > 0), max_diff
    return max_diff <= atol, max_diff


# -- convert --------------------------------------------------------------------------
@dataclass
class Conversion:
    """What ``convert`` wrote: ``format`` is "checkpoint", "npz" or "safetensors";
    ``skipped`` names the string tensors left out."""

    source: str
    destination: str
    format: str
    tensors: int
    skipped: list[str]


def is_array_file(path: str) -> bool:
    """Whether ``path`` names a ``.npz`` or ``.safetensors`` file (else a checkpoint)."""
    return path.endswith((".npz", ".safetensors"))


def convert(src: str, dst: str, *, skip_strings: bool = False, progress: Progress | None = None) -> Conversion:
    """Convert a checkpoint (local or URL) to a local ``.npz`` / ``.safetensors`` file, or
    such a file to a new checkpoint ``dst`` (local or URL).

    ``skip_strings`` leaves string tensors out; without it, .safetensors (which cannot hold
    strings) leaves out only the object graph and ckptlib's structure record, and refuses
    other string tensors (``InvalidTensorError``). ``UsageError`` when neither or both sides
    are array files, or an array file is a URL.
    """
    if is_array_file(src) and is_array_file(dst):
        raise UsageError("one of SRC and DST must be a checkpoint (array file to array file is not supported)")
    for path in (src, dst):
        if is_array_file(path) and is_url(path):
            raise UsageError(f".npz and .safetensors files must be local paths (the checkpoint may be a URL): {path}")
    if is_array_file(src):
        tensors, dtype_names = import_arrays(src)
        skipped = [name for name, a in tensors.items() if a.dtype == object] if skip_strings else []
        writer = ckptlib.BundleWriter(dst)
        for name, value in tensors.items():
            if name not in skipped:
                writer.add(name, value, dtype=dtype_names.get(name))
        writer.finish()
        return Conversion(src, dst, "checkpoint", len(tensors) - len(skipped), skipped)
    if not is_array_file(dst):
        raise UsageError("DST must end in .npz or .safetensors (or SRC must, to make a checkpoint)")
    progress = progress or _no_progress
    with ckptlib.load_checkpoint(src) as reader:
        names = reader.keys_list()
        dtype_names = {name: reader.dtype_name(name) for name in names}
        strings = [name for name in names if dtype_names[name] == "string"]
        skipped = strings if skip_strings else []
        if dst.endswith(".safetensors") and not skip_strings:
            skipped = [name for name in strings if name in _METADATA]
            refused = [name for name in strings if name not in _METADATA]
            if refused:
                raise ckptlib.InvalidTensorError(
                    f"safetensors cannot hold string tensors ({len(refused)} here: {', '.join(refused)}); "
                    "--skip-strings leaves them out",
                    tensor=refused[0],
                )
        wanted = [name for name in names if name not in set(skipped)]
        arrays = {}
        for i, name in enumerate(wanted):
            arrays[name] = reader.get_tensor(name)
            progress(i + 1, len(wanted))
    export_arrays(arrays, dst, {name: dtype_names[name] for name in arrays})
    kind = "safetensors" if dst.endswith(".safetensors") else "npz"
    return Conversion(src, dst, kind, len(arrays), skipped)


# -- repair ---------------------------------------------------------------------------
@dataclass
class Repair:
    """Whether ``ckptlib.repair`` ran in ``directory``, and ``why`` not if it did not."""

    directory: str
    repaired: bool
    why: str | None = None


def repair_directory(directory: str, *, assume_idle: bool = False) -> Repair:
    """``ckptlib.repair(directory, assume_idle=...)``: refused (``repaired`` False) while a
    save may be running there, which on a store without a save lock (S3) is always unless
    ``assume_idle``. Raises ``CheckpointNotFoundError`` if there is no such directory."""
    if ckptlib.repair(directory, assume_idle=assume_idle):
        return Repair(directory, True)
    return Repair(
        directory,
        False,
        "a save is running there (or its store cannot tell: --assume-idle if you know none is): nothing was touched",
    )
