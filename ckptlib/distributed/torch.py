"""``TorchCoordinator``: coordinated saves over an initialised ``torch.distributed`` job."""

from __future__ import annotations

import datetime
from typing import Any

from ckptlib.errors import CoordinationError

DEFAULT_TIMEOUT = datetime.timedelta(minutes=10)


class TorchCoordinator:
    """Coordinates the processes of a ``torch.distributed`` job (``init_process_group``
    called), whatever its backend: ckptlib's few collectives run on a gloo group of their
    own, made here, so they use the host's network and never the GPUs' (with NCCL too),
    and give up after ``timeout`` instead of waiting for a process that died.

    Every process must create it at the same point, as with any ``new_group``. ``group``:
    the processes that save together (default: all of them).
    """

    def __init__(self, group: Any = None, *, timeout: datetime.timedelta = DEFAULT_TIMEOUT):
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise CoordinationError("torch.distributed is not initialised: call init_process_group first")
        ranks = None if group is None else dist.get_process_group_ranks(group)
        self._group = dist.new_group(ranks=ranks, backend="gloo", timeout=timeout)
        self._rank = dist.get_rank(self._group)
        self._world_size = dist.get_world_size(self._group)
        self._timeout = timeout

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    def all_gather(self, payload: bytes) -> list[bytes]:
        import torch
        import torch.distributed as dist

        try:
            size = torch.tensor([len(payload)], dtype=torch.int64)
            sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self._world_size)]
            dist.all_gather(sizes, size, group=self._group)
            longest = max(int(s.item()) for s in sizes)
            mine = torch.zeros(longest, dtype=torch.uint8)
            if payload:
                mine[: len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
            gathered = [torch.empty(longest, dtype=torch.uint8) for _ in range(self._world_size)]
            dist.all_gather(gathered, mine, group=self._group)
        except (RuntimeError, ValueError) as e:  # torch's DistBackendError and timeouts are RuntimeErrors
            raise CoordinationError(
                f"the processes of the save did not all answer (a process died or is more than "
                f"{self._timeout} behind): {str(e).splitlines()[0] if str(e) else type(e).__name__}"
            ) from e
        return [bytes(t[: int(s.item())].numpy()) for t, s in zip(gathered, sizes, strict=True)]
