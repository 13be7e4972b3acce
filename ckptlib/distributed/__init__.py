"""Checkpoints saved by many processes together: each writes its own part, one commits.

Pass a coordinator as ``coordinator=`` to ``Saver``, ``CheckpointManager`` or ``ckptlib.save``
on every process of the job, each with its own part of the state (replicas are written
once; tensors split across processes are given as ``ckptlib.Slice`` values). The result is
one ordinary TensorFlow checkpoint. ``TorchCoordinator`` runs on ``torch.distributed``,
``JaxCoordinator`` on a JAX multi-process job; any engine with an all-gather fits
``Coordinator``. Neither engine is imported until its coordinator is.
"""

from __future__ import annotations

from ckptlib.distributed.coordinator import Coordinator, SingleProcess
from ckptlib.distributed.jax import JaxCoordinator
from ckptlib.distributed.torch import TorchCoordinator

__all__ = ["Coordinator", "JaxCoordinator", "SingleProcess", "TorchCoordinator"]
