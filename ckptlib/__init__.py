"""ckptlib: TensorFlow-compatible checkpoints in pure Python.

Files written here are TensorFlow V2 checkpoints (``prefix.index`` + ``prefix.data-*``),
and every V2 (or legacy V1) checkpoint TensorFlow writes reads back here, with no
TensorFlow installed.
"""

from __future__ import annotations

from ckptlib.background import save_async
from ckptlib.checkpoint import (
    checkpoint_exists,
    latest_checkpoint,
    list_variables,
    load_checkpoint,
    load_variable,
)
from ckptlib.commit import repair
from ckptlib.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CheckpointTooLargeError,
    ChecksumMismatchError,
    CorruptCheckpointError,
    DtypeMismatchError,
    InvalidStructureError,
    InvalidTensorError,
    ReadOnlyTargetError,
    RestoreMismatchError,
    ShapeMismatchError,
    StorageError,
    TensorNotFoundError,
    UnsupportedFeatureError,
)
from ckptlib.format.slices import TensorSlice
from ckptlib.io_policy import IOPolicy
from ckptlib.manager import CheckpointManager
from ckptlib.merge import merge_bundles
from ckptlib.object_graph_view import ObjectGraph
from ckptlib.private_memory import release_cached_memory
from ckptlib.reader import CheckpointReader
from ckptlib.restore import RestoreReport, restore
from ckptlib.saver import Saver
from ckptlib.slice_value import Slice
from ckptlib.state import CheckpointState, get_checkpoint_state
from ckptlib.writer import BundleWriter, save

__version__ = "0.1.0"

__all__ = [
    "BundleWriter",
    "CheckpointError",
    "CheckpointManager",
    "CheckpointNotFoundError",
    "CheckpointReader",
    "CheckpointState",
    "CheckpointTooLargeError",
    "ChecksumMismatchError",
    "CorruptCheckpointError",
    "DtypeMismatchError",
    "IOPolicy",
    "InvalidStructureError",
    "InvalidTensorError",
    "ObjectGraph",
    "ReadOnlyTargetError",
    "RestoreMismatchError",
    "RestoreReport",
    "Saver",
    "ShapeMismatchError",
    "Slice",
    "StorageError",
    "TensorNotFoundError",
    "TensorSlice",
    "UnsupportedFeatureError",
    "checkpoint_exists",
    "get_checkpoint_state",
    "latest_checkpoint",
    "list_variables",
    "load_checkpoint",
    "load_variable",
    "merge_bundles",
    "release_cached_memory",
    "repair",
    "restore",
    "save",
    "save_async",
]
