"""What a coordinated save needs from a distributed engine: each process's rank, how many
there are, and one collective, an all-gather of small byte strings.

That is all ckptlib asks for, so an adapter for an engine is a few lines (see
``ckptlib.distributed.torch`` for ``torch.distributed``). Tensor data never goes through it:
only what each process holds (names, dtypes, shapes), its index entries, and outcomes.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Coordinator(Protocol):
    """The processes of one job that save one checkpoint together."""

    @property
    def rank(self) -> int:
        """This process's place, 0 to ``world_size - 1``; rank 0 commits."""
        ...

    @property
    def world_size(self) -> int:
        """How many processes take part."""
        ...

    def all_gather(self, payload: bytes) -> list[bytes]:
        """Every process's ``payload``, by rank, on every process. Every process must call
        it the same number of times. Must raise (``CoordinationError``, or any exception)
        rather than wait forever when a process has died or does not answer in time."""
        ...


class SingleProcess:
    """A coordinator of one process: a coordinated save is then an ordinary one."""

    rank = 0
    world_size = 1

    def all_gather(self, payload: bytes) -> list[bytes]:
        return [payload]
