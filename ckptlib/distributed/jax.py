"""``JaxCoordinator``: coordinated saves over a JAX multi-process job.

The all-gather goes through the key-value store of JAX's distributed runtime (the
coordination service that ``jax.distributed.initialize`` starts), not through XLA
collectives: each process sets one key and reads everyone's with a deadline. So a process
that died or stalls costs the others ``timeout`` and a ``CoordinationError``, never a hang;
nothing is compiled, no device memory is used, and a GPU or TPU job's collectives are left
alone. ``jax.experimental.multihost_utils.process_allgather`` works too, but has no timeout.

The store's client is ``jax._src.distributed.global_state.client``: private, but the one
JAX's own ``jax.experimental.array_serialization`` (and Orbax) use for the same purpose.
Keys of one round::

    ckptlib/coordinator/<instance>/<round>/<rank>  ->  that rank's payload (bytes)

A process deletes its key of round n - 2 as it starts round n: by then every process has
set its key of round n - 1, so each has finished reading round n - 2.
"""

from __future__ import annotations

import datetime
import itertools
import time
from typing import Any

from ckptlib.errors import CoordinationError

DEFAULT_TIMEOUT = datetime.timedelta(minutes=10)

# Instances are numbered alike on every process when every process makes them at the same point.
_instances = itertools.count()


class JaxCoordinator:
    """Coordinates the processes of a JAX job (``jax.distributed.initialize`` called):
    rank ``jax.process_index()`` of ``jax.process_count()``. ``all_gather`` gives up
    after ``timeout`` (from its start) with ``CoordinationError``.

    Every process must create it at the same point, and use it the same number of times.
    """

    def __init__(self, *, timeout: datetime.timedelta = DEFAULT_TIMEOUT):
        import jax
        from jax._src import distributed

        client = getattr(getattr(distributed, "global_state", None), "client", None)
        if client is None:
            raise CoordinationError("jax.distributed is not initialised: call jax.distributed.initialize first")
        self._client: Any = client
        self._rank = int(jax.process_index())
        self._world_size = int(jax.process_count())
        self._timeout = timeout
        self._prefix = f"ckptlib/coordinator/{next(_instances)}"
        self._round = 0

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    def all_gather(self, payload: bytes) -> list[bytes]:
        deadline = time.monotonic() + self._timeout.total_seconds()
        n = self._round
        self._round += 1
        try:
            if n >= 2:
                self._client.key_value_delete(self._key(n - 2, self._rank))
            self._client.key_value_set_bytes(self._key(n, self._rank), bytes(payload))
            gathered = []
            for rank in range(self._world_size):
                if rank == self._rank:
                    gathered.append(bytes(payload))
                    continue
                left_ms = max(int((deadline - time.monotonic()) * 1000), 1)
                gathered.append(bytes(self._client.blocking_key_value_get_bytes(self._key(n, rank), left_ms)))
        except (RuntimeError, ValueError) as e:  # JaxRuntimeError (DEADLINE_EXCEEDED, ...) is a RuntimeError
            raise CoordinationError(
                f"the processes of the save did not all answer (a process died or is more than "
                f"{self._timeout} behind): {str(e).splitlines()[0] if str(e) else type(e).__name__}"
            ) from e
        return gathered

    def _key(self, round_: int, rank: int) -> str:
        return f"{self._prefix}/{round_}/{rank}"
