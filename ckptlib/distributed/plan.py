"""Who writes what in a coordinated save, decided alike on every process from what each holds.

Each process describes the tensors (and slices of tensors) it holds in a ``Manifest``; all
of them are gathered everywhere, and ``make_plan`` turns them into the same ``Plan`` on
every process, with no further exchange:

* a key held by several processes (a replica: a whole tensor, or the same slice) is written
  once, by one of them, chosen to spread the bytes evenly (largest first, each to the
  holder with the fewest bytes so far; ties to the lowest rank);
* every process that writes anything writes one data file; they are numbered in rank order
  (``data-0000k-of-0000N``), and rank 0 always writes one, so that even an empty save has
  one, as a single process's does;
* holders of one key must agree on its dtype and shape, and the slices of one tensor on its
  full shape and dtype, and distinct slices must not overlap: else every process raises
  the same ``InvalidTensorError``;
* a string tensor held by several processes with different values cannot be a replica,
  and is an error, except ckptlib's structure record and TF2's object graph, which differ
  when processes hold different parts of one tree: rank 0 writes them merged (a structure
  record whose parts conflict is left out: the checkpoint then restores as
  ``{name: array}``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ckptlib.errors import CorruptCheckpointError, InvalidTensorError
from ckptlib.format import dtypes
from ckptlib.format.bundle import Entry, key_to_name, name_to_key
from ckptlib.format.object_graph import OBJECT_GRAPH_KEY
from ckptlib.format.slices import decode_slice_key, overlaps
from ckptlib.index_builder import Pending
from ckptlib.object_tree import graph_of_keys
from ckptlib.tree import STRUCTURE_KEY

# Left out, with a warning, when the processes' versions differ.
_PER_PROCESS_KEYS = {name_to_key(STRUCTURE_KEY), name_to_key(OBJECT_GRAPH_KEY)}


@dataclass(frozen=True)
class Held:
    """One key a process holds: its dtype, shape, bytes, and for a string tensor a digest."""

    dtype: int
    shape: tuple[int, ...]
    nbytes: int
    digest: str = ""


@dataclass(frozen=True)
class Manifest:
    """What one process brings to a coordinated save."""

    prefix: str
    held: dict[bytes, Held]
    partitioned: dict[str, tuple[int, tuple[int, ...]]]  # sliced tensor name -> (dtype, full shape)
    records: dict[bytes, bytes] = field(default_factory=dict)  # structure record, object graph

    def encode(self) -> bytes:
        return json.dumps(
            {
                "prefix": self.prefix,
                "held": [
                    [k.decode("latin-1"), h.dtype, list(h.shape), h.nbytes, h.digest] for k, h in self.held.items()
                ],
                "partitioned": [[n, d, list(s)] for n, (d, s) in self.partitioned.items()],
                "records": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in self.records.items()],
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        try:
            raw = json.loads(data)
            held = {k.encode("latin-1"): Held(int(d), tuple(s), int(n), str(g)) for k, d, s, n, g in raw["held"]}
            partitioned = {str(n): (int(d), tuple(int(x) for x in s)) for n, d, s in raw["partitioned"]}
            records = {k.encode("latin-1"): v.encode("latin-1") for k, v in raw["records"]}
            return cls(str(raw["prefix"]), held, partitioned, records)
        except (ValueError, KeyError, TypeError) as e:
            raise CorruptCheckpointError(f"a malformed manifest from another process: {e}") from None


def manifest_of(prefix: str, pending: Pending, sliced: dict[str, Entry]) -> Manifest:
    """The manifest of a writer's queued tensors (``BundleWriter.pending`` and its
    partitioned tensors' full entries)."""
    sizes = pending.nbytes()
    held = {}
    records = {}
    for i, (key, dtype, array) in enumerate(zip(pending.keys, pending.dtypes, pending.arrays, strict=True)):
        digest = ""
        if dtype == dtypes.DT_STRING:
            h = hashlib.sha256()
            for item in array.reshape(-1):
                h.update(len(item).to_bytes(8, "little"))
                h.update(item)
            digest = h.hexdigest()
            if key in _PER_PROCESS_KEYS and array.shape == ():
                records[key] = bytes(array.item())
        held[key] = Held(dtype, tuple(int(d) for d in array.shape), int(sizes[i]), digest)
    partitioned = {name: (entry.dtype, tuple(entry.shape)) for name, entry in sliced.items()}
    return Manifest(prefix, held, partitioned, records)


@dataclass
class Plan:
    """The outcome: the keys each process writes, and each writer's data file number."""

    owned: list[set[bytes]]  # by rank
    shard_of: dict[int, int]  # rank -> shard id, for the processes that write a file
    merged: dict[str, bytes] = field(default_factory=dict)  # records made of every process's; rank 0 writes them
    dropped: set[str] = field(default_factory=set)  # records that could not be merged, left out

    @property
    def num_shards(self) -> int:
        return len(self.shard_of)


def make_plan(manifests: Sequence[Manifest]) -> Plan:
    """The plan every process computes alike from every process's manifest (by rank)."""
    prefixes = {m.prefix for m in manifests}
    if len(prefixes) > 1:
        raise InvalidTensorError(f"the processes are saving to different prefixes: {sorted(prefixes)}")
    _check_partitioned(manifests)
    holders: dict[bytes, list[int]] = {}
    for rank, manifest in enumerate(manifests):
        for key in manifest.held:
            holders.setdefault(key, []).append(rank)
    differing = set()
    for key, ranks in holders.items():
        first = manifests[ranks[0]].held[key]
        for rank in ranks[1:]:
            other = manifests[rank].held[key]
            if (other.dtype, other.shape) != (first.dtype, first.shape):
                raise InvalidTensorError(
                    f"held by rank {ranks[0]} as {_describe(first)} and by rank {rank} as {_describe(other)}",
                    tensor=_name(key),
                )
            if other.digest != first.digest:
                if key not in _PER_PROCESS_KEYS:
                    raise InvalidTensorError(
                        f"a string tensor held by several processes with different values "
                        f"(ranks {ranks[0]} and {rank}): a replica must be the same everywhere",
                        tensor=_name(key),
                    )
                differing.add(key)
    merged, dropped = _merge_records(manifests, holders, differing)
    loads = [0] * len(manifests)
    owned: list[set[bytes]] = [set() for _ in manifests]
    by_size = sorted(
        (k for k in holders if k not in differing),
        key=lambda k: (-manifests[holders[k][0]].held[k].nbytes, k),
    )
    for key in by_size:
        writer = min(holders[key], key=lambda r: (loads[r], r))
        loads[writer] += manifests[writer].held[key].nbytes
        owned[writer].add(key)
    writers = [r for r in range(len(manifests)) if owned[r] or r == 0]
    return Plan(owned, {rank: i for i, rank in enumerate(writers)}, merged, dropped)


def _merge_records(
    manifests: Sequence[Manifest], holders: dict[bytes, list[int]], differing: set[bytes]
) -> tuple[dict[str, bytes], set[str]]:
    """The structure record and object graph for processes that saved different parts of
    one tree: dicts joined key by key (a record whose trees conflict elsewhere is left out),
    the object graph rebuilt from every process's tensor names."""
    merged: dict[str, bytes] = {}
    dropped: set[str] = set()
    structure, graph = name_to_key(STRUCTURE_KEY), name_to_key(OBJECT_GRAPH_KEY)
    if structure in differing:
        record = merge_structure_records([manifests[r].records[structure] for r in holders[structure]])
        if record is None:
            dropped.add(STRUCTURE_KEY)
        else:
            merged[STRUCTURE_KEY] = record
    if graph in differing:
        names = dict.fromkeys(
            decode_slice_key(key)[0] if key.startswith(b"\0") else key_to_name(key)
            for manifest in manifests
            for key in manifest.held
        )
        merged[OBJECT_GRAPH_KEY] = graph_of_keys(names)
    return merged, dropped


class _Conflict(Exception):
    pass


def merge_structure_records(records: Sequence[bytes]) -> bytes | None:
    """One structure record (``ckptlib.tree``) holding every process's part of a tree: dict
    nodes joined key by key (first seen first); None if the parts conflict (a list of
    another length, a leaf of another kind)."""
    try:
        parsed = [json.loads(r) for r in records]
        first = parsed[0]
        root = first["root"]
        for other in parsed[1:]:
            if (other["format"], other["version"]) != (first["format"], first["version"]):
                return None
            root = _merge_nodes(root, other["root"])
    except (ValueError, KeyError, TypeError, IndexError, _Conflict):
        return None
    return json.dumps({**first, "root": root}, separators=(",", ":")).encode("utf-8")


def _merge_nodes(a: Any, b: Any) -> Any:
    if a == b:
        return a
    if isinstance(a, list) and isinstance(b, list) and a[:1] == b[:1] == ["dict"]:
        keys, children = list(a[1]), list(a[2])
        for key, child in zip(b[1], b[2], strict=True):
            same = [i for i, k in enumerate(keys) if k == key and type(k) is type(key)]
            if same:
                children[same[0]] = _merge_nodes(children[same[0]], child)
            else:
                keys.append(key)
                children.append(child)
        return ["dict", keys, children]
    if isinstance(a, list) and isinstance(b, list) and a[:1] == b[:1] == ["object_graph"]:
        return ["object_graph", _merge_nodes(a[1], b[1])]
    raise _Conflict


def _check_partitioned(manifests: Sequence[Manifest]) -> None:
    """The slices of each partitioned tensor agree on its dtype and shape, and distinct
    slices do not overlap; a name is not whole on one process and sliced on another."""
    full: dict[str, tuple[int, tuple[int, ...], int]] = {}
    for rank, manifest in enumerate(manifests):
        for name, (dtype, shape) in manifest.partitioned.items():
            known = full.setdefault(name, (dtype, shape, rank))
            if known[:2] != (dtype, shape):
                raise InvalidTensorError(
                    f"sliced by rank {known[2]} as {dtypes.lookup(known[0]).name}{list(known[1])} and by rank "
                    f"{rank} as {dtypes.lookup(dtype).name}{list(shape)}",
                    tensor=name,
                )
    for rank, manifest in enumerate(manifests):
        for key in manifest.held:
            if not key.startswith(b"\0") and key_to_name(key) in full:
                raise InvalidTensorError(
                    f"held whole by rank {rank} and as slices by rank {full[key_to_name(key)][2]}",
                    tensor=key_to_name(key),
                )
    slices: dict[str, dict[tuple[tuple[int, int], ...], int]] = {}
    for rank, manifest in enumerate(manifests):
        for key in manifest.held:
            if not key.startswith(b"\0"):
                continue
            name, tensor_slice = decode_slice_key(key)
            bounds = tensor_slice.bounds(full[name][1])
            seen = slices.setdefault(name, {})
            for other, other_rank in seen.items():
                if other != bounds and overlaps(bounds, other):
                    raise InvalidTensorError(
                        f"slice {tensor_slice} of rank {rank} overlaps a different slice of rank {other_rank}",
                        tensor=name,
                    )
            seen.setdefault(bounds, rank)


def _describe(held: Held) -> str:
    return f"{dtypes.lookup(held.dtype).name}{list(held.shape)}"


def _name(key: bytes) -> str:
    if key.startswith(b"\0"):
        name, tensor_slice = decode_slice_key(key)
        return f"{name} (slice {tensor_slice})"
    return key_to_name(key)
