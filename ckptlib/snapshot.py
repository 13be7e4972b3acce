"""Snapshots for asynchronous saves: a private copy of a writer's tensors, in reusable buffers.

An asynchronous save copies the state once, in the caller's thread, and writes the copy in
the background, so that a training loop changing its arrays in place right after ``save``
returns cannot reach the file. The copy lands in one arena per save: a single allocation
carved into aligned views, one per tensor. Arenas are kept after the save that used them
and reused by the next one, so a loop saving a state of the same size every epoch pays for
the copy alone (a fresh allocation pays the kernel's first touch of every page as well,
about as much again). CUDA torch tensors are copied into page-locked (pinned) host memory,
which the GPU writes at full speed, once, with no pageable copy in between.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ckptlib.dtensor import as_slice, is_dtensor
from ckptlib.frameworks import framework_of
from ckptlib.index_builder import Pending
from ckptlib.slice_value import Slice

ALIGN = 64  # each tensor starts on a cache line
PARALLEL_COPY_BYTES = 32 << 20  # smaller states are copied on the caller's thread alone
COPY_PIECE_BYTES = 8 << 20
MAX_COPY_THREADS = 8


@dataclass(eq=False)
class Arena:
    """One block of host memory holding one snapshot (``pinned``: page-locked, via torch)."""

    memory: np.ndarray  # uint8
    pinned: bool
    owner: Any = None  # the torch tensor owning pinned memory, kept alive with it

    @property
    def nbytes(self) -> int:
        return int(self.memory.nbytes)

    def holds(self, array: np.ndarray) -> bool:
        start = self.memory.ctypes.data
        address = array.__array_interface__["data"][0]
        return start <= address < start + self.nbytes


class Arenas:
    """The arenas of one saver: those in use by pending saves and idle ones kept for reuse,
    at most ``limit`` bytes in all (None: no limit beyond what the pending saves need)."""

    def __init__(self, limit: int | None, *, keep: bool = True):
        self.limit = limit
        self._keep = keep  # idle arenas kept for reuse, or freed
        self._idle: list[Arena] = []
        self._in_use = 0  # bytes
        self._lock = threading.Lock()

    def forget_in_use(self) -> None:
        """Count none in use (after a fork: the parent's saves hold them, not ours)."""
        self._lock = threading.Lock()
        self._in_use = 0

    def fits(self, nbytes: int) -> bool:
        """Whether an arena of ``nbytes`` may be taken now without passing the limit."""
        return self.limit is None or self._in_use + nbytes <= self.limit

    def take(self, nbytes: int, *, pinned: bool = False) -> Arena:
        """An arena of at least ``nbytes``: the smallest idle one that is large enough, or
        a new one (idle arenas are dropped first where the limit needs their memory)."""
        with self._lock:
            fitting = [a for a in self._idle if a.nbytes >= nbytes and a.pinned == pinned]
            if fitting:
                arena = min(fitting, key=lambda a: a.nbytes)
                self._idle.remove(arena)
            else:
                if self.limit is not None:
                    while self._idle and self._in_use + sum(a.nbytes for a in self._idle) + nbytes > self.limit:
                        self._idle.remove(min(self._idle, key=lambda a: a.nbytes))
                self._idle = [a for a in self._idle if a.pinned != pinned or a.nbytes > nbytes]
                arena = _pinned_arena(nbytes) if pinned else Arena(_aligned_memory(nbytes), pinned=False)
            self._in_use += arena.nbytes
            return arena

    def give_back(self, arena: Arena) -> None:
        with self._lock:
            self._in_use -= arena.nbytes
            if self._keep:
                self._idle.append(arena)


def copy_to_device_host(tensors: dict[str, Any], arenas: Arenas, taken: list[Arena]) -> Callable[[], None]:
    """Replace every CUDA torch tensor of a flat ``{name: leaf}`` mapping (a DTensor's
    block, a ``Slice``'s value) with a copy in pinned host memory, appending the arena used
    to ``taken``. Returns a function that waits for the copies (they run asynchronously on
    the devices' streams); a no-op without CUDA tensors."""
    for name, leaf in tensors.items():
        if is_dtensor(leaf):
            tensors[name] = as_slice(leaf, name)
    on_device = [name for name, leaf in tensors.items() if _is_cuda_tensor(_value(leaf))]
    if not on_device:
        return lambda: None
    import torch

    sources = [_value(tensors[name]).detach() for name in on_device]
    sizes = [source.numel() * source.element_size() for source in sources]
    arena = arenas.take(_carved_size(sizes), pinned=True)
    taken.append(arena)
    assert arena.owner is not None
    offset = 0
    for name, source, size in zip(on_device, sources, sizes, strict=True):
        host = arena.owner[offset : offset + size].view(source.dtype).view(source.shape)
        host.copy_(source, non_blocking=True)
        leaf = tensors[name]
        tensors[name] = dataclasses.replace(leaf, value=host) if isinstance(leaf, Slice) else host
        offset += _aligned(size)
    devices = {source.device for source in sources}

    def wait() -> None:
        for device in devices:
            torch.cuda.synchronize(device)

    return wait


def _value(leaf: Any) -> Any:
    return leaf.value if isinstance(leaf, Slice) else leaf


def snapshot(pending: Pending, arena: Arena, already_private: Iterable[Arena] = ()) -> None:
    """Replace every array ``pending`` holds with a private copy in ``arena`` (at least
    ``snapshot_bytes(pending)`` large). Arrays already in ``already_private`` arenas (CUDA
    tensors copied to the host) and string tensors (their own object arrays of immutable
    ``bytes``, made when added) are kept as they are."""
    private = list(already_private)
    memory = arena.memory
    offset = 0
    pairs = []
    for i, source in enumerate(pending.arrays):
        if source.dtype == object or not source.nbytes or any(a.holds(source) for a in private):
            continue
        copy = memory[offset : offset + source.nbytes].view(source.dtype).reshape(source.shape)
        pairs.append((copy, source))
        pending.arrays[i] = copy
        offset += _aligned(source.nbytes)
    _copy_all(pairs)


def _copy_all(pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """``np.copyto`` of every pair; a large state in pieces on several threads (numpy lets go
    of the GIL to copy, and one core cannot keep up with the memory: 1.3x faster on 2 cores)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = min(cores, MAX_COPY_THREADS)
    if threads < 2 or sum(source.nbytes for _, source in pairs) < PARALLEL_COPY_BYTES:
        for copy, source in pairs:
            np.copyto(copy, source, casting="no")
        return
    pieces = []
    for copy, source in pairs:
        if not source.flags.c_contiguous:
            np.copyto(copy, source, casting="no")
            continue
        to, of = copy.reshape(-1).view(np.uint8), source.reshape(-1).view(np.uint8)
        pieces += [
            (to[i : i + COPY_PIECE_BYTES], of[i : i + COPY_PIECE_BYTES]) for i in range(0, of.size, COPY_PIECE_BYTES)
        ]

    def copy_every_nth(first: int) -> None:
        for to, of in pieces[first::threads]:
            np.copyto(to, of)

    with ThreadPoolExecutor(threads, thread_name_prefix="ckptlib-snapshot") as pool:
        list(pool.map(copy_every_nth, range(threads)))


def snapshot_bytes(pending: Pending, already_private: Iterable[Arena] = ()) -> int:
    """The size of the arena ``snapshot`` needs for ``pending``."""
    private = list(already_private)
    return _carved_size(
        [a.nbytes for a in pending.arrays if a.dtype != object and not any(p.holds(a) for p in private)]
    )


def _carved_size(sizes: list[int]) -> int:
    return sum(_aligned(s) for s in sizes)


def _aligned(size: int) -> int:
    return -(-size // ALIGN) * ALIGN


def _aligned_memory(nbytes: int) -> np.ndarray:
    """``nbytes`` of host memory starting on an ``ALIGN`` boundary (numpy promises 16)."""
    raw = np.empty(nbytes + ALIGN, np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start : start + nbytes]


def _is_cuda_tensor(leaf: Any) -> bool:
    device = getattr(leaf, "device", None)
    return framework_of(leaf) == "torch" and getattr(device, "type", None) == "cuda" and not is_dtensor(leaf)


def _pinned_arena(nbytes: int) -> Arena:
    import torch

    owner = torch.empty(max(nbytes, 1), dtype=torch.uint8, pin_memory=True)
    return Arena(owner.numpy(), pinned=True, owner=owner)
