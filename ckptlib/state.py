"""The ``checkpoint`` state file: which checkpoints a directory holds, newest last.

Protobuf text format of ``CheckpointState`` (TensorFlow's ``checkpoint_state.proto``)::

    model_checkpoint_path: "model.ckpt-3"
    all_model_checkpoint_paths: "model.ckpt-2"
    all_model_checkpoint_paths: "model.ckpt-3"
    all_model_checkpoint_timestamps: 1795737976.199231       (optional, one per path)
    last_preserved_timestamp: 1795737975.1568162              (optional)

Relative paths are relative to the directory holding the file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf import text_format

from ckptlib.errors import CorruptCheckpointError
from ckptlib.format.proto.checkpoint_state_pb2 import CheckpointState as _CheckpointStateProto
from ckptlib.state_lines import format_canonical, parse_canonical
from ckptlib.store import is_url, store_for

DEFAULT_STATE_FILENAME = "checkpoint"
# A state file lists paths; even 100,000 of them fit in a few MB. Anything larger is not
# one, and would take the (pure Python) text parser minutes.
MAX_STATE_FILE_BYTES = 16 << 20

logger = logging.getLogger("ckptlib")


@dataclass(frozen=True)
class CheckpointState:
    """The parsed state file. Paths are as resolved by ``get_checkpoint_state``."""

    model_checkpoint_path: str
    all_model_checkpoint_paths: tuple[str, ...] = ()
    all_model_checkpoint_timestamps: tuple[float, ...] = ()
    last_preserved_timestamp: float = 0.0


def parse_state(text: str) -> CheckpointState:
    """Parse state-file text; raises ``CorruptCheckpointError`` on malformed input."""
    canonical = parse_canonical(text)
    if canonical is not None:
        latest, paths, times, preserved = canonical
        return CheckpointState(latest, tuple(paths), tuple(times), preserved)
    proto = _CheckpointStateProto()
    try:
        text_format.Parse(text, proto)
    except (text_format.ParseError, UnicodeDecodeError) as e:
        raise CorruptCheckpointError(f"unparseable checkpoint state: {e}") from None
    return CheckpointState(
        proto.model_checkpoint_path,
        tuple(proto.all_model_checkpoint_paths),
        tuple(proto.all_model_checkpoint_timestamps),
        proto.last_preserved_timestamp,
    )


def format_state(state: CheckpointState) -> str:
    """State-file text, as TensorFlow's ``text_format.MessageToString`` writes it."""
    proto = _CheckpointStateProto(
        model_checkpoint_path=state.model_checkpoint_path,
        all_model_checkpoint_paths=state.all_model_checkpoint_paths,
        all_model_checkpoint_timestamps=state.all_model_checkpoint_timestamps,
        last_preserved_timestamp=state.last_preserved_timestamp,
    )
    return text_format.MessageToString(proto)


def read_state_file(path: str) -> CheckpointState | None:
    """The state stored at ``path`` with paths as written, or None if there is no file."""
    data = _read_bytes(path)
    return None if data is None else parse_state_bytes(data, path)


def _read_bytes(path: str) -> bytes | None:
    try:
        return store_for(path).read_small(path, MAX_STATE_FILE_BYTES)
    except CorruptCheckpointError as e:
        raise CorruptCheckpointError(f"cannot read the state file: {e.reason}", path=path) from None
    except OSError as e:  # a symlink loop, unreadable...
        raise CorruptCheckpointError(f"cannot read the state file: {e.strerror or e}", path=path) from None


def parse_state_bytes(data: bytes, path: str) -> CheckpointState:
    """Parse a state file's bytes; raises ``CorruptCheckpointError`` naming ``path``."""
    try:
        return parse_state(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise CorruptCheckpointError("state file is not UTF-8 text", path=path) from None
    except CorruptCheckpointError as e:
        raise e.with_context(path=path) from None


def resolve(directory: str, path: str) -> str:
    """A state-file path as a usable prefix: relative paths join ``directory``; an absolute
    path that no longer exists (a moved or copied run) falls back to its name in ``directory``."""
    return resolve_all(directory, [path])[0]


def resolve_all(directory: str, paths: Iterable[str]) -> list[str]:
    """``resolve`` of every path, listing each directory involved once instead of a few
    system calls per path: a state file may list hundreds of thousands."""
    listings: dict[str, set[str] | None] = {}

    def present(path: str) -> bool:
        parent, name = os.path.split(path)
        store = store_for(path)
        if parent not in listings:
            try:
                listings[parent] = set(store.listdir(parent))
            except OSError:  # cannot list it (execute-only), but may look up names in it
                listings[parent] = None
        names = listings[parent]
        return store.exists(path) if names is None else name in names

    resolved = []
    for path in paths:
        if not is_absolute(path):
            resolved.append(os.path.join(directory, path))
            continue
        if not present(path + ".index") and not present(path):
            moved = os.path.join(directory, os.path.basename(path))
            if present(moved + ".index"):
                path = moved
        resolved.append(path)
    return resolved


def is_absolute(path: str) -> bool:
    """An absolute local path, or a URL."""
    return os.path.isabs(path) or is_url(path)


def get_checkpoint_state(
    checkpoint_dir: str | os.PathLike[str], latest_filename: str | None = None
) -> CheckpointState | None:
    """The directory's state with every path resolved, or None if it has no state file.

    Like ``tf.train.get_checkpoint_state``, but a malformed file raises
    ``CorruptCheckpointError`` instead of being logged and ignored.
    """
    directory = os.fspath(checkpoint_dir)
    state = read_state_file(os.path.join(directory, latest_filename or DEFAULT_STATE_FILENAME))
    if state is None:
        return None
    if not state.model_checkpoint_path:
        raise CorruptCheckpointError(
            "checkpoint state has no model_checkpoint_path",
            path=os.path.join(directory, latest_filename or DEFAULT_STATE_FILENAME),
        )
    latest, *paths = resolve_all(directory, [state.model_checkpoint_path, *state.all_model_checkpoint_paths])
    return CheckpointState(
        latest,
        tuple(paths),
        state.all_model_checkpoint_timestamps,
        state.last_preserved_timestamp,
    )


def state_file_path(directory: str, latest_filename: str | None = None) -> str:
    name = latest_filename or DEFAULT_STATE_FILENAME
    if os.path.basename(name) != name or name in ("", ".", ".."):
        raise ValueError(f"latest_filename must be a plain file name, got {name!r}")
    return os.path.join(directory, name)


def write_state_file(path: str, state: CheckpointState, *, sync: bool = True) -> None:
    """Replace the state file atomically (readers see the old or the new file, whole)."""
    store_for(path).write_small(path, format_state_bytes(state), sync)


def format_state_bytes(state: CheckpointState) -> bytes:
    """The state file's bytes, as TensorFlow writes them."""
    text = format_canonical(
        state.model_checkpoint_path,
        state.all_model_checkpoint_paths,
        state.all_model_checkpoint_timestamps,
        state.last_preserved_timestamp,
    )
    return text.encode("utf-8")


def relative_to(directory: str, path: str) -> str:
    """``path`` as recorded in the state file of ``directory``: relative when it lies inside."""
    if is_url(path) or is_url(directory):
        parent = directory.rstrip("/") + "/"
        return path[len(parent) :] if path.startswith(parent) else path
    if not os.path.isabs(path) and not os.path.isabs(directory):
        return os.path.relpath(path, directory or ".")
    return os.path.relpath(os.path.abspath(path), os.path.abspath(directory or "."))
