"""``FsspecStore``: checkpoints on any fsspec filesystem, with S3 (s3fs) done properly.

Object stores have no rename, no appends and no locks, so (see ``ckptlib.store.base``):

* a new file is written at its final key, as a multipart upload whose parts are uploaded
  as soon as the out-of-order ``write_at`` calls complete them, and appears only when
  ``finish`` completes the upload;
* opening a file costs one request (the file's tail, where the index's footer lies), and
  each further read is one ranged GET of exactly the bytes asked for;
* ``update`` is a conditional write (``If-Match`` the ETag read, ``If-None-Match: *`` when
  there was none), retried when another writer got there first.

Other fsspec protocols (``memory://``, ``gs://`` without its own specialisation, ...) get a
plain version: whole-file writes at ``finish``, ``cat_file`` ranges, and updates guarded by
a lock that only this process honours.

fsspec and s3fs are imported here only, when a store is made: ckptlib works without them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import posixpath
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, NoReturn

from ckptlib.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    StorageError,
    UnsupportedFeatureError,
)
from ckptlib.store.base import Buffer

if TYPE_CHECKING:
    import fsspec

__all__ = ["PART_BYTES", "TAIL_BYTES", "FsspecStore"]

logger = logging.getLogger("ckptlib")

# Bytes per multipart-upload part (S3 wants >= 5 MiB for every part but the last). Also the
# size below which a new file goes up as one PUT at ``finish``.
PART_BYTES = 16 << 20
# S3 allows at most this many parts per upload; larger files get larger parts.
MAX_PARTS = 10_000
# Bytes of a file's end fetched (and kept) by ``open``: the index's footer and, for most
# indexes, all of it.
TAIL_BYTES = 64 << 10
# S3 client limits. A request that gets no answer fails after CONNECT_TIMEOUT_S (no
# connection) or READ_TIMEOUT_S (no bytes) and is tried MAX_ATTEMPTS times in all, with
# botocore's jittered backoff between tries (at most 1 + 2 + 4 s): a dead server ends in
# StorageError within MAX_ATTEMPTS * (CONNECT_TIMEOUT_S + READ_TIMEOUT_S) + 7 s = 51 s, or 58 s
# for a GET whose body stalls after its headers (fetched once more, see BODY_ATTEMPTS).
CONNECT_TIMEOUT_S = 4
READ_TIMEOUT_S = 7
MAX_ATTEMPTS = 4
# Connections per S3 client: more than ``io_threads`` so that a file's parallel reads and a
# few small requests beside them never queue for a connection.
MAX_CONNECTIONS = 32
# update() is for state files and journals; a larger object is refused unread.
UPDATE_LIMIT_BYTES = 64 << 20
# Attempts of a conditional ``update`` losing to other writers before giving up.
UPDATE_TRIES = 20
# A response body cut short is fetched again, once (botocore retries only up to the headers;
# more would multiply the worst-case time).
BODY_ATTEMPTS = 2
S3_THREADS = 16
OTHER_THREADS = 4

_INSTALL_HINT = "pip install 'ckptlib[s3]'"

# ``update`` on protocols without conditional writes: serialised within this process only.
_UPDATE_LOCK = threading.Lock()
_warned_unprotected_update = False


def _fsspec() -> Any:
    try:
        import fsspec
    except ImportError as exc:
        raise UnsupportedFeatureError(f"remote stores need fsspec: {_INSTALL_HINT}") from exc
    return fsspec


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the store failed the request" (mapped to StorageError)."""
    errors: list[type[BaseException]] = [OSError, asyncio.TimeoutError]
    with contextlib.suppress(ImportError):
        from botocore.exceptions import BotoCoreError, ClientError

        errors += [BotoCoreError, ClientError]
    with contextlib.suppress(ImportError):
        import aiohttp

        errors.append(aiohttp.ClientError)
    return tuple(errors)


def _client_error(exc: BaseException) -> tuple[str, int] | None:
    """(error code, HTTP status) of the botocore ClientError behind ``exc`` (s3fs translates
    them into OSErrors, keeping the original as ``__cause__``), or None."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 5:
        response = getattr(current, "response", None)
        if isinstance(response, dict) and "Error" in response:
            code = str(response["Error"].get("Code", ""))
            status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            return code, status
        current = current.__cause__
        seen += 1
    return None


def _is_missing(exc: BaseException) -> bool:
    if isinstance(exc, FileNotFoundError):
        return True
    error = _client_error(exc)
    return error is not None and (error[0] in ("NoSuchKey", "NoSuchBucket", "NotFound", "404") or error[1] == 404)


def _is_write_conflict(exc: BaseException) -> bool:
    """Another writer changed (or removed) the object since we read it."""
    error = _client_error(exc)
    if error is None:
        return False
    code, status = error
    return code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey") or status in (409, 412)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 300 else text[:300] + "..."


def _fail(exc: BaseException, path: str, doing: str) -> NoReturn:
    """Re-raise ``exc`` as ckptlib's error naming ``path``; ckptlib's own errors pass."""
    if isinstance(exc, CheckpointError):
        raise exc
    raise StorageError(f"{doing} failed: {_describe(exc)}", path=path) from exc


def _byte_view(buffer: Buffer) -> memoryview:
    view = memoryview(buffer)  # type: ignore[arg-type]
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


class FsspecStore:
    """A ``Store`` over an fsspec filesystem; paths are URLs (``s3://bucket/run/x.index``).

    ``part_bytes`` (default ``PART_BYTES``) is the multipart part size for S3; set it on the
    class or an instance (tests use small parts against a server configured to allow them).
    """

    atomic_rename = False
    can_map = False
    part_bytes = PART_BYTES

    def __init__(self, fs: fsspec.AbstractFileSystem) -> None:
        self._fs = fs
        protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
        self._protocol: str = str(protocols[0])
        self._s3 = "s3" in protocols and hasattr(fs, "_call_s3")
        self.io_threads = S3_THREADS if self._s3 else OTHER_THREADS
        # Parts of one multipart upload go up side by side; other protocols assemble a new
        # file under one lock.
        self.writers_per_file = S3_THREADS if self._s3 else 1
        self._errors = _transport_errors()

    @classmethod
    def for_url(cls, url: str, **storage_options: Any) -> FsspecStore:
        """The store for ``url``'s protocol. Listings are never cached (other processes write
        the same bucket). For S3 the endpoint comes from ``AWS_ENDPOINT_URL_S3`` or
        ``AWS_ENDPOINT_URL`` and credentials from the usual ``AWS_*`` variables; timeouts and
        retries are bounded (see ``READ_TIMEOUT_S``). ``storage_options`` go to
        ``fsspec.filesystem`` and override these defaults (e.g. ``endpoint_url``).

        Raises ``UnsupportedFeatureError`` if fsspec (or s3fs, for ``s3://``) is missing."""
        fsspec = _fsspec()
        protocol = fsspec.utils.get_protocol(url)
        options: dict[str, Any] = {"use_listings_cache": False}
        if protocol in ("s3", "s3a"):
            try:
                import s3fs  # noqa: F401
            except ImportError as exc:
                raise UnsupportedFeatureError(f"s3:// needs s3fs: {_INSTALL_HINT}", path=url) from exc
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            if endpoint:
                # botocore reads these too, but naming it makes fsspec's instance cache tell
                # endpoints apart.
                options["endpoint_url"] = endpoint
            options["config_kwargs"] = {
                "connect_timeout": CONNECT_TIMEOUT_S,
                "read_timeout": READ_TIMEOUT_S,
                "retries": {"mode": "standard", "total_max_attempts": MAX_ATTEMPTS},
                "max_pool_connections": MAX_CONNECTIONS,
            }
        options.update(storage_options)
        try:
            fs = fsspec.filesystem(protocol, **options)
        except ImportError as exc:
            raise UnsupportedFeatureError(f"{protocol}:// needs an fsspec backend: {exc}", path=url) from exc
        if protocol in ("s3", "s3a"):
            # s3fs retries on top of botocore (5 times by default), which would multiply the
            # worst-case time; botocore's retries alone are bounded.
            fs.retries = 1
        return cls(fs)

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """The underlying fsspec filesystem."""
        return self._fs

    # --- helpers

    def _split(self, path: str) -> tuple[str, str]:
        """(bucket, key) of an S3 path; the key has no leading or trailing slash."""
        stripped = str(self._fs._strip_protocol(path)).strip("/")
        bucket, _, key = stripped.partition("/")
        return bucket, key

    def _prefix(self, directory: str) -> tuple[str, str]:
        bucket, key = self._split(directory)
        return bucket, (key + "/" if key else "")

    def _call(self, method: str, **kwargs: Any) -> dict[str, Any]:
        """One S3 API call (s3fs' client, botocore's retries); errors raised as they come."""
        result: dict[str, Any] = self._fs.call_s3(method, **kwargs)
        return result

    def _run(self, coroutine: Callable[..., Any], *args: Any) -> Any:
        from fsspec.asyn import sync

        return sync(self._fs.loop, coroutine, *args)

    async def _get_object(self, max_bytes: int | None, kwargs: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        """GET an object (or a range) with its body; (response, body). A body longer than
        ``max_bytes`` raises ``_TooLarge`` without being read."""
        attempt = 0
        while True:
            response = await self._fs._call_s3("get_object", **kwargs)
            body = response["Body"]
            try:
                if max_bytes is not None and int(response.get("ContentLength", 0)) > max_bytes:
                    raise _TooLarge(int(response["ContentLength"]))
                data: bytes = await body.read()
                return response, data
            except self._errors:
                attempt += 1
                if attempt >= BODY_ATTEMPTS:
                    raise
                await asyncio.sleep(0.1 * 2**attempt * random.random())
            finally:
                body.close()

    def _get(self, path: str, max_bytes: int | None = None, **kwargs: Any) -> tuple[dict[str, Any], bytes]:
        bucket, key = self._split(path)
        return self._run(self._get_object, max_bytes, {"Bucket": bucket, "Key": key, **kwargs})  # type: ignore[no-any-return]

    def _head(self, path: str) -> dict[str, Any] | None:
        bucket, key = self._split(path)
        try:
            return self._call("head_object", Bucket=bucket, Key=key)
        except self._errors as exc:
            if _is_missing(exc):
                return None
            _fail(exc, path, "HEAD")

    # --- reading

    def open(self, path: str) -> FsspecReadFile | S3ReadFile:
        """Open ``path`` for positioned reads. S3: one ranged GET of the last ``TAIL_BYTES``,
        kept. ``CheckpointNotFoundError`` if missing, ``CorruptCheckpointError`` if not a
        file, ``StorageError`` if the store fails."""
        if self._s3:
            return S3ReadFile.open(self, path)
        try:
            info = self._fs.info(path)
        except self._errors as exc:
            if _is_missing(exc):
                raise CheckpointNotFoundError("no such file", path=path) from exc
            _fail(exc, path, "opening")
        if info.get("type") != "file":
            raise CorruptCheckpointError("not a regular file", path=path)
        return FsspecReadFile(self, path, int(info["size"]))

    def read_small(self, path: str, limit: int) -> bytes | None:
        """All of a small file (at most ``limit`` bytes, else ``CorruptCheckpointError``);
        None if missing. One GET on S3."""
        try:
            if self._s3:
                return self._get(path, max_bytes=limit)[1]
            info = self._fs.info(path)
            if info.get("type") != "file":
                raise CorruptCheckpointError("not a regular file", path=path)
            if int(info["size"]) > limit:
                raise _TooLarge(int(info["size"]))
            data: bytes = self._fs.cat_file(path)
        except _TooLarge as exc:
            raise CorruptCheckpointError(f"{exc.size} bytes, more than the {limit} expected", path=path) from None
        except self._errors as exc:
            if _is_missing(exc):
                return None
            _fail(exc, path, "reading")
        if len(data) > limit:
            raise CorruptCheckpointError(f"{len(data)} bytes, more than the {limit} expected", path=path)
        return data

    # --- writing

    def create(self, final_path: str, size: int | None = None, *, sync: bool = True) -> S3NewFile | FsspecNewFile:
        """A new file, written at ``final_path`` and visible there once ``finish``ed. ``size``
        (bytes), when known, plans the parts (a file under ``part_bytes`` is one PUT).
        ``sync`` is moot: an object is durable once its upload completes."""
        if self._s3:
            return S3NewFile(self, final_path, size)
        return FsspecNewFile(self, final_path, size)

    def write_small(self, path: str, data: bytes, sync: bool) -> None:
        """Replace ``path`` by ``data``: one PUT, atomic on object stores. ``sync`` is moot:
        a PUT is durable once answered."""
        try:
            if self._s3:
                bucket, key = self._split(path)
                self._call("put_object", Bucket=bucket, Key=key, Body=bytes(data))
            else:
                self._fs.pipe_file(path, bytes(data))
        except self._errors as exc:
            _fail(exc, path, "writing")

    def update(self, path: str, change: Callable[[bytes | None], bytes | None], sync: bool) -> None:
        """Read-modify-write ``path``. S3: conditional PUT (``If-Match`` the ETag read,
        ``If-None-Match: *`` when absent), retried with jittered backoff while other
        writers win, ``UPDATE_TRIES`` times, then ``StorageError``. Elsewhere: a lock
        honoured by this process only (a warning says so, once)."""
        if not self._s3:
            self._update_locally(path, change)
            return
        bucket, key = self._split(path)
        for attempt in range(UPDATE_TRIES):
            try:
                response, old = self._get(path, max_bytes=UPDATE_LIMIT_BYTES)
                etag: str | None = response["ETag"]
            except _TooLarge as exc:
                raise CorruptCheckpointError(
                    f"larger than {UPDATE_LIMIT_BYTES} bytes ({exc.size})", path=path
                ) from None
            except self._errors as exc:
                if not _is_missing(exc):
                    _fail(exc, path, "reading for an update")
                old, etag = None, None
            new = change(old)
            if new is None:
                return
            condition = {"IfMatch": etag} if etag is not None else {"IfNoneMatch": "*"}
            try:
                self._call("put_object", Bucket=bucket, Key=key, Body=bytes(new), **condition)
                return
            except self._errors as exc:
                if not _is_write_conflict(exc):
                    _fail(exc, path, "conditional PUT")
            time.sleep(random.uniform(0, min(0.5, 0.005 * 2**attempt)))
        raise StorageError(f"gave up after {UPDATE_TRIES} updates lost to concurrent writers", path=path)

    def _update_locally(self, path: str, change: Callable[[bytes | None], bytes | None]) -> None:
        global _warned_unprotected_update
        if not _warned_unprotected_update:
            _warned_unprotected_update = True
            logger.warning(
                "%s:// has no conditional writes: updates of state files are serialised within "
                "this process only, not against other processes",
                self._protocol,
            )
        with _UPDATE_LOCK:
            new = change(self.read_small(path, 1 << 62))
            if new is not None:
                self.write_small(path, new, sync=False)

    def rename(self, source: str, target: str) -> None:
        """Not available: object stores have no atomic rename (``atomic_rename`` is False)."""
        raise UnsupportedFeatureError(f"{self._protocol}:// has no atomic rename", path=source)

    def delete(self, path: str) -> None:
        """Remove a file; a missing one is not an error."""
        try:
            if self._s3:
                bucket, key = self._split(path)
                self._call("delete_object", Bucket=bucket, Key=key)
            else:
                self._fs.rm_file(path)
        except self._errors as exc:
            if not _is_missing(exc):
                _fail(exc, path, "deleting")

    # --- names

    def exists(self, path: str) -> bool:
        """A file or a directory (on S3: a key, or a prefix with keys under it)."""
        if self._s3:
            return self._head(path) is not None or self.is_dir(path)
        try:
            return bool(self._fs.exists(path))
        except self._errors as exc:
            _fail(exc, path, "checking")

    def is_dir(self, path: str) -> bool:
        """On S3: a bucket, or a prefix with at least one key under it."""
        try:
            if self._s3:
                bucket, prefix = self._prefix(path)
                if not prefix:
                    self._call("head_bucket", Bucket=bucket)
                    return True
                listing = self._call("list_objects_v2", Bucket=bucket, Prefix=prefix, MaxKeys=1)
                return int(listing.get("KeyCount", 0)) > 0
            self._fs.invalidate_cache(path)
            return bool(self._fs.isdir(path))
        except self._errors as exc:
            if _is_missing(exc):
                return False
            _fail(exc, path, "checking")

    def listdir(self, directory: str) -> list[str]:
        """Names of the files directly in ``directory`` (not subdirectories), listed afresh
        every time; [] if there is none."""
        try:
            if self._s3:
                return self._list_s3(directory)
            self._fs.invalidate_cache(directory)
            entries = self._fs.ls(directory, detail=True)
        except self._errors as exc:
            if _is_missing(exc):
                return []
            _fail(exc, directory, "listing")
        return sorted(posixpath.basename(e["name"].rstrip("/")) for e in entries if e.get("type") == "file")

    def _list_s3(self, directory: str) -> list[str]:
        bucket, prefix = self._prefix(directory)
        names: list[str] = []
        token: dict[str, str] = {}
        while True:
            page = self._call("list_objects_v2", Bucket=bucket, Prefix=prefix, Delimiter="/", **token)
            names += [name for item in page.get("Contents", []) if (name := item["Key"][len(prefix) :])]
            if not page.get("IsTruncated"):
                return sorted(names)
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def mtime(self, path: str) -> float | None:
        """Last modification, seconds since the epoch (S3: ``LastModified``); None if missing."""
        if self._s3:
            head = self._head(path)
            return None if head is None else float(head["LastModified"].timestamp())
        try:
            return float(self._fs.modified(path).timestamp())
        except self._errors as exc:
            if _is_missing(exc):
                return None
            _fail(exc, path, "checking")

    def makedirs(self, directory: str) -> None:
        """A no-op on S3 (prefixes exist while keys are under them)."""
        if self._s3:
            return
        try:
            self._fs.makedirs(directory, exist_ok=True)
        except self._errors as exc:
            _fail(exc, directory, "making the directory")

    def sync_dir(self, directory: str) -> None:
        """A no-op: names on an object store are durable once made."""

    def real(self, path: str) -> str:
        """``protocol://`` + the normalised path, without a trailing slash."""
        stripped = str(self._fs._strip_protocol(path))
        normal = posixpath.normpath(stripped) if stripped else ""
        return f"{self._protocol}://{'' if normal == '.' else normal}"

    # --- saves

    def saving(self, directory: str, repair: Callable[[], None] | None) -> AbstractContextManager[None]:
        """Nothing to hold: an object store has no lock that is released when its holder
        dies, so ``repair`` never runs here."""
        return contextlib.nullcontext()

    def repair_if_idle(self, directory: str, repair: Callable[[], None]) -> bool:
        """Always False: an object store cannot tell that no save is running."""
        return False

    def discard_unfinished(self, directory: str, owns: Callable[[str], bool]) -> list[str]:
        """Abort the incomplete multipart uploads directly in ``directory`` (not in its
        subdirectories) whose final path (``s3://bucket/key``) ``owns`` accepts; their final
        paths, sorted. [] off S3."""
        if not self._s3:
            return []
        bucket, prefix = self._prefix(directory)
        dropped: set[str] = set()
        try:
            for key, upload_id in self._unfinished(directory, bucket, prefix):
                path = f"s3://{bucket}/{key}"
                # Directly in ``directory`` only: the listing also holds its subdirectories'
                # uploads, which may be saves running there.
                if "/" not in key[len(prefix) :] and owns(path):
                    with contextlib.suppress(*self._errors):
                        self._call("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
                        dropped.add(path)
        except self._errors as exc:
            _fail(exc, directory, "listing unfinished uploads")
        return sorted(dropped)

    def _unfinished(self, directory: str, bucket: str, prefix: str) -> Iterator[tuple[str, str]]:
        markers: dict[str, str] = {}
        while True:
            page = self._call("list_multipart_uploads", Bucket=bucket, Prefix=prefix, **markers)
            for upload in page.get("Uploads", []):
                yield upload["Key"], upload["UploadId"]
            if not page.get("IsTruncated"):
                return
            markers = {"KeyMarker": page["NextKeyMarker"], "UploadIdMarker": page["NextUploadIdMarker"]}


class _TooLarge(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


def _check_range(path: str, size: int, offset: int, length: int) -> None:
    if offset < 0 or length < 0 or offset + length > size:
        raise CorruptCheckpointError(
            f"read of {length} bytes at offset {offset} past the end of the file ({size} bytes)", path=path
        )


class S3ReadFile:
    """An S3 object open for reading: its tail cached, other ranges fetched on demand.
    Every later GET carries ``If-Match`` the ETag seen at opening, so a file replaced while
    open is reported (``CorruptCheckpointError``) rather than read as a mixture."""

    def __init__(self, store: FsspecStore, path: str, size: int, etag: str | None, tail_start: int, tail: bytes):
        self.path = path
        self._store = store
        self._size = size
        self._etag = etag
        self._tail_start = tail_start
        self._tail = tail

    @classmethod
    def open(cls, store: FsspecStore, path: str) -> S3ReadFile:
        try:
            try:
                response, tail = store._get(path, Range=f"bytes=-{TAIL_BYTES}")
            except store._errors as exc:
                # S3 refuses any range of an empty object (416 InvalidRange).
                if _client_error(exc) != ("InvalidRange", 416):
                    raise
                response, tail = store._get(path)
        except store._errors as exc:
            if _is_missing(exc):
                raise CheckpointNotFoundError("no such file", path=path) from exc
            _fail(exc, path, "opening")
        content_range = response.get("ContentRange")
        if content_range:  # "bytes 100-65635/65636"
            span, _, total = str(content_range).partition(" ")[2].partition("/")
            try:
                size, tail_start = int(total), int(span.partition("-")[0])
            except ValueError:
                raise StorageError(f"unexpected Content-Range {content_range!r}", path=path) from None
        else:
            size, tail_start = len(tail), 0
        if tail_start + len(tail) != size:
            raise StorageError(f"tail GET answered {content_range!r} with {len(tail)} bytes", path=path)
        return cls(store, path, size, response.get("ETag"), tail_start, tail)

    @property
    def size(self) -> int:
        """In bytes."""
        return self._size

    def read_at(self, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset``: from the cached tail, else one ranged GET of the
        bytes before it. ``CorruptCheckpointError`` past the end, ``StorageError`` if the
        store fails."""
        _check_range(self.path, self._size, offset, length)
        end = offset + length
        if offset >= self._tail_start:
            return self._tail[offset - self._tail_start : end - self._tail_start]
        head = self._fetch(offset, min(end, self._tail_start))
        if end <= self._tail_start:
            return head
        return head + self._tail[: end - self._tail_start]

    def readinto(self, offset: int, view: memoryview) -> None:
        """Fill ``view`` (writable bytes) from ``offset``."""
        target = view if view.format == "B" and view.ndim == 1 else view.cast("B")
        target[:] = self.read_at(offset, target.nbytes)

    def _fetch(self, start: int, end: int) -> bytes:
        condition: dict[str, Any] = {"IfMatch": self._etag} if self._etag else {}
        try:
            _, data = self._store._get(self.path, None, Range=f"bytes={start}-{end - 1}", **condition)
        except self._store._errors as exc:
            if _is_write_conflict(exc) or _is_missing(exc):
                raise CorruptCheckpointError("replaced or removed while open", path=self.path) from exc
            _fail(exc, self.path, f"ranged GET of bytes {start}-{end - 1}")
        if len(data) != end - start:
            raise StorageError(f"ranged GET of {end - start} bytes returned {len(data)}", path=self.path)
        return data

    def mapped(self) -> None:
        """None: object stores cannot be mapped."""
        return None

    def mapped_view(self) -> None:
        """None: object stores cannot be mapped."""
        return None

    def close(self) -> None:
        self._tail = b""


class FsspecReadFile:
    """A file of any fsspec filesystem: ``cat_file`` per read."""

    def __init__(self, store: FsspecStore, path: str, size: int):
        self.path = path
        self._store = store
        self._size = size

    @property
    def size(self) -> int:
        """In bytes."""
        return self._size

    def read_at(self, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset``; ``CorruptCheckpointError`` past the end."""
        _check_range(self.path, self._size, offset, length)
        if length == 0:
            return b""
        try:
            data: bytes = self._store._fs.cat_file(self.path, start=offset, end=offset + length)
        except self._store._errors as exc:
            if _is_missing(exc):
                raise CorruptCheckpointError("removed while open", path=self.path) from exc
            _fail(exc, self.path, f"reading {length} bytes at {offset}")
        if len(data) != length:
            raise CorruptCheckpointError(f"read {len(data)} of {length} bytes at {offset}", path=self.path)
        return data

    def readinto(self, offset: int, view: memoryview) -> None:
        """Fill ``view`` (writable bytes) from ``offset``."""
        target = view if view.format == "B" and view.ndim == 1 else view.cast("B")
        target[:] = self.read_at(offset, target.nbytes)

    def mapped(self) -> None:
        return None

    def mapped_view(self) -> None:
        return None

    def close(self) -> None:
        pass


class S3NewFile:
    """A multipart upload assembled from out-of-order ``write_at`` calls.

    Bytes are copied into a staging buffer per part; the thread whose write completes a
    part uploads it and the buffer is dropped at once. Staging memory is thus the parts
    being written at the moment, about one per writer thread when writers go through the
    file in order (as ``shard_writer`` does), never the whole file. A file smaller than one
    part (size known), or that turns out so (size unknown), is one PUT at ``finish``.
    """

    def __init__(self, store: FsspecStore, final_path: str, size: int | None):
        self.final_path = final_path
        self.path = final_path
        self._store = store
        self._bucket, self._key = store._split(final_path)
        self._size = size
        part = store.part_bytes
        if size is not None and size > part * MAX_PARTS:
            mib = 1 << 20
            part = -(-size // MAX_PARTS // mib) * mib + mib
        self._part = part
        # With a known size, a one-part file is one PUT; without, only a full part starts
        # the upload.
        self._multipart = size is None or size > part
        self._lock = threading.Lock()
        self._staged: dict[int, bytearray] = {}
        self._filled: dict[int, int] = {}
        self._etags: dict[int, str] = {}
        self._written = 0
        self._end = 0
        self._upload_lock = threading.Lock()
        self._upload_id: str | None = None
        self._closed = False
        self._finished = False
        self._error: BaseException | None = None

    def _part_size(self, index: int) -> int:
        if self._size is None:
            return self._part
        return min(self._part, self._size - index * self._part)

    def write_at(self, offset: int, buffers: Sequence[Buffer], size: int) -> None:
        """Copy ``buffers`` (``size`` bytes in all) to ``offset``; upload the parts this
        completes. ``StorageError`` naming the file if an upload fails."""
        if self._closed:
            raise StorageError("write to a file already finished or aborted", path=self.final_path)
        if offset < 0 or (self._size is not None and offset + size > self._size):
            raise ValueError(f"{self.final_path}: write of {size} bytes at {offset} outside the file's {self._size}")
        if self._size is None and offset + size > self._part * MAX_PARTS:
            raise StorageError(f"larger than {MAX_PARTS} parts of {self._part} bytes", path=self.final_path)
        position = offset
        complete: list[int] = []
        for buffer in buffers:
            view = _byte_view(buffer)
            done = 0
            while done < view.nbytes:
                index, within = divmod(position, self._part)
                count = min(self._part - within, view.nbytes - done)
                with self._lock:
                    staged = self._staged.get(index)
                    if staged is None:
                        if index in self._etags:
                            raise ValueError(f"{self.final_path}: part {index} written twice")
                        staged = self._staged[index] = bytearray(self._part_size(index))
                        self._filled[index] = 0
                # Writes are disjoint, so copies into one part's buffer need no lock.
                staged[within : within + count] = view[done : done + count]
                with self._lock:
                    self._filled[index] += count
                    if self._multipart and self._filled[index] == self._part_size(index):
                        complete.append(index)
                position += count
                done += count
        with self._lock:
            self._written += size
            self._end = max(self._end, offset + size)
        for index in complete:
            self._upload(index)

    def _upload(self, index: int) -> None:
        with self._lock:
            data = self._staged.pop(index)
            self._filled.pop(index)
        try:
            upload_id = self._start()
            response = self._store._call(
                "upload_part",
                Bucket=self._bucket,
                Key=self._key,
                UploadId=upload_id,
                PartNumber=index + 1,
                Body=data,
            )
        except BaseException as exc:
            self._error = self._error or exc
            if isinstance(exc, self._store._errors):
                _fail(exc, self.final_path, f"uploading part {index + 1}")
            raise
        with self._lock:
            self._etags[index] = response["ETag"]

    def _start(self) -> str:
        with self._upload_lock:
            if self._closed:
                raise StorageError("upload aborted", path=self.final_path)
            if self._upload_id is None:
                response = self._store._call("create_multipart_upload", Bucket=self._bucket, Key=self._key)
                self._upload_id = str(response["UploadId"])
            return self._upload_id

    def finish(self, sync: bool) -> None:
        """Upload what is left and complete the upload (one PUT for a small file): the
        object then exists at ``final_path``. On failure the upload is aborted and
        ``StorageError`` names ``final_path``."""
        try:
            self._finish()
        except BaseException as exc:
            self.abort()
            if isinstance(exc, self._store._errors):
                _fail(exc, self.final_path, "finishing the upload")
            raise

    def _finish(self) -> None:
        if self._closed:
            raise StorageError("finish of a file already finished or aborted", path=self.final_path)
        if self._error is not None:
            raise StorageError(f"an earlier part failed: {_describe(self._error)}", path=self.final_path)
        total = self._end if self._size is None else self._size
        if self._written != total:
            raise StorageError(f"only {self._written} of {total} bytes were written", path=self.final_path)
        if self._upload_id is None and total <= self._part:
            data = self._staged.get(0, bytearray())[:total]
            self._store._call("put_object", Bucket=self._bucket, Key=self._key, Body=data)
            self._closed = self._finished = True
            self._staged.clear()
            return
        for index in sorted(self._staged):
            if self._size is None:  # the last part, short
                self._staged[index] = self._staged[index][: self._filled[index]]
            self._upload(index)
        parts = [{"PartNumber": index + 1, "ETag": etag} for index, etag in sorted(self._etags.items())]
        if len(parts) != -(-total // self._part):
            raise StorageError(f"{len(parts)} parts uploaded of {-(-total // self._part)}", path=self.final_path)
        self._store._call(
            "complete_multipart_upload",
            Bucket=self._bucket,
            Key=self._key,
            UploadId=self._start(),
            MultipartUpload={"Parts": parts},
        )
        self._closed = self._finished = True

    def abort(self) -> None:
        """Abort the upload (if one was started) and drop the staged bytes; after ``finish``,
        delete the object. Never raises ``Exception``s (failures are logged)."""
        with self._upload_lock:
            if self._finished:
                self._finished = False
                with contextlib.suppress(Exception):
                    self._store.delete(self.final_path)
                    return
                logger.warning("%s: could not delete the aborted file", self.final_path)
                return
            if self._closed:
                return
            self._closed = True
            upload_id = self._upload_id
        with self._lock:
            self._staged.clear()
        if upload_id is not None:
            try:
                self._store._call(
                    "abort_multipart_upload",
                    Bucket=self._bucket,
                    Key=self._key,
                    UploadId=upload_id,
                )
            except Exception as exc:
                # An upload left behind is invisible and removed by ``discard_unfinished``.
                logger.warning("%s: could not abort the multipart upload: %s", self.final_path, _describe(exc))


class FsspecNewFile:
    """A file of any fsspec filesystem: assembled in memory, written whole at ``finish``."""

    def __init__(self, store: FsspecStore, final_path: str, size: int | None):
        self.final_path = final_path
        self.path = final_path
        self._store = store
        self._size = size
        self._data = bytearray(size or 0)
        self._written = 0
        self._lock = threading.Lock()
        self._closed = False
        self._finished = False

    def write_at(self, offset: int, buffers: Sequence[Buffer], size: int) -> None:
        """Copy ``buffers`` (``size`` bytes in all) to ``offset``."""
        if offset < 0 or (self._size is not None and offset + size > self._size):
            raise ValueError(f"{self.final_path}: write of {size} bytes at {offset} outside the file's {self._size}")
        with self._lock:
            if self._closed:
                raise StorageError("write to a file already finished or aborted", path=self.final_path)
            if offset + size > len(self._data):
                self._data.extend(bytes(offset + size - len(self._data)))
            position = offset
            for buffer in buffers:
                view = _byte_view(buffer)
                self._data[position : position + view.nbytes] = view
                position += view.nbytes
            self._written += size

    def finish(self, sync: bool) -> None:
        """Write the file whole; ``StorageError`` naming ``final_path`` on failure."""
        try:
            if self._closed:
                raise StorageError("finish of a file already finished or aborted", path=self.final_path)
            if self._written != len(self._data):
                raise StorageError(
                    f"only {self._written} of {len(self._data)} bytes were written", path=self.final_path
                )
            self._store._fs.pipe_file(self.final_path, bytes(self._data))
        except self._store._errors as exc:
            self.abort()
            _fail(exc, self.final_path, "writing")
        except BaseException:
            self.abort()
            raise
        self._closed = self._finished = True
        self._data = bytearray()

    def abort(self) -> None:
        """Drop the bytes, and the file if ``finish`` wrote it; never raises ``Exception``s."""
        self._closed = True
        self._data = bytearray()
        if self._finished:
            self._finished = False
            try:
                self._store.delete(self.final_path)
            except Exception as exc:
                logger.warning("%s: could not delete the aborted file: %s", self.final_path, _describe(exc))
