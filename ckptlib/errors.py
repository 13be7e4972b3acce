"""Every exception ckptlib raises on purpose.

::

    CheckpointError (Exception)
    ├── CheckpointNotFoundError (+ FileNotFoundError)   no such checkpoint, file or directory
    ├── TensorNotFoundError (+ KeyError)                 the checkpoint has no tensor by that name
    ├── CorruptCheckpointError (+ ValueError)            the bytes are not a valid checkpoint
    │   └── ChecksumMismatchError                        a stored crc32c disagrees with the bytes
    ├── UnsupportedFeatureError (+ NotImplementedError)  valid, but a feature ckptlib cannot handle
    ├── CheckpointTooLargeError (+ MemoryError)          valid, but too large for this process's memory
    ├── StorageError (+ OSError)                         the store failed a request (after its retries)
    ├── InvalidTensorError (+ ValueError)                 a value that cannot be saved (type, name, slice)
    ├── InvalidStructureError (+ TypeError)              the state to save or restore into is not a mapping
    └── RestoreMismatchError (+ ValueError)               restoring into targets that do not fit
        ├── ShapeMismatchError
        ├── DtypeMismatchError
        └── ReadOnlyTargetError                          a target that cannot be written in place

Each class also derives from the builtin it resembles, so ``except KeyError`` or
``except ValueError`` keeps working for callers who do not know ckptlib. Errors about a
file carry ``path`` (and ``tensor`` where one is involved); both appear in the message.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "CheckpointTooLargeError",
    "ChecksumMismatchError",
    "CorruptCheckpointError",
    "DtypeMismatchError",
    "InvalidStructureError",
    "InvalidTensorError",
    "ReadOnlyTargetError",
    "RestoreMismatchError",
    "ShapeMismatchError",
    "StorageError",
    "TensorNotFoundError",
    "UnsupportedFeatureError",
]


class CheckpointError(Exception):
    """Base of every error ckptlib raises deliberately.

    ``path`` is the file (or prefix) concerned and ``tensor`` the tensor name, when known.
    """

    def __init__(self, message: str, *, path: str | None = None, tensor: str | None = None):
        self.reason = message
        self.path = path
        self.tensor = tensor
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.path is not None:
            where.append(self.path)
        if self.tensor is not None:
            where.append(f"tensor {self.tensor!r}")
        return f"{': '.join(where)}: {self.reason}" if where else self.reason

    def __str__(self) -> str:
        return self._render()

    def with_context(self, *, path: str | None = None, tensor: str | None = None) -> CheckpointError:
        """Fill in ``path``/``tensor`` where still unknown; returns self for ``raise ... from``."""
        if self.path is None and path is not None:
            self.path = path
        if self.tensor is None and tensor is not None:
            self.tensor = tensor
        self.args = (self._render(),)
        return self


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No checkpoint, file or directory where one was expected."""

    def __init__(self, message: str, *, path: str | None = None, tensor: str | None = None):
        CheckpointError.__init__(self, message, path=path, tensor=tensor)


class TensorNotFoundError(CheckpointError, KeyError):
    """The checkpoint holds no tensor of the requested name."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return self._render()


class CorruptCheckpointError(CheckpointError, ValueError):
    """The bytes do not form a valid checkpoint (truncated, damaged or hostile)."""


class ChecksumMismatchError(CorruptCheckpointError):
    """A stored crc32c does not match the bytes it covers."""


class UnsupportedFeatureError(CheckpointError, NotImplementedError):
    """A valid checkpoint feature that ckptlib does not implement (e.g. DT_VARIANT)."""


class CheckpointTooLargeError(CheckpointError, MemoryError):
    """Valid as far as read, but reading it needs more memory than this process can get."""


class StorageError(CheckpointError, OSError):
    """The store holding the checkpoint failed a request (a network store refusing or
    dropping it even after retries, a permission denied). Nothing committed is lost: the
    save that met it did not become visible."""

    def __init__(self, message: str, *, path: str | None = None, tensor: str | None = None):
        CheckpointError.__init__(self, message, path=path, tensor=tensor)


class CoordinationError(CheckpointError, RuntimeError):
    """A save coordinated across processes failed: another process failed or died, or the
    processes did not answer in time. The previous checkpoints are intact; the new one is
    not visible, unless the failure came after rank 0 put it in place (it is then whole
    but, as after any failed commit, perhaps not named by the state file)."""


class InvalidTensorError(CheckpointError, ValueError):
    """A value or name that cannot be written to a checkpoint."""


class InvalidStructureError(CheckpointError, TypeError):
    """What was passed as the state to save, or the structure to restore into, is not a
    mapping of names to values."""


class RestoreMismatchError(CheckpointError, ValueError):
    """Restoring into existing targets failed: missing, unexpected or ill-fitting tensors."""


class ShapeMismatchError(RestoreMismatchError):
    """A stored tensor's shape differs from its restore target's."""


class DtypeMismatchError(RestoreMismatchError):
    """A stored tensor's dtype differs from its restore target's."""


class ReadOnlyTargetError(RestoreMismatchError):
    """A restore target cannot be written in place: a read-only array, or a plain value
    held by a mapping that cannot be updated."""
