"""An S3 server for tests: moto in a subprocess, and a fault-injecting proxy in front of it.

::

    store ──> FaultProxy (a thread here: counts requests and bytes, fails some) ──> moto server
                                                                                    (subprocess)

``conftest.py`` turns these into the fixtures ``s3_endpoint``, ``s3_bucket`` and ``s3_proxy``.
The moto server allows parts down to ``TEST_PART_BYTES`` (real S3: 5 MiB), so multipart
tests stay small; ``FsspecStore.part_bytes`` is set to that size by the tests that need it.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# Smallest multipart part the test server accepts (and the part size tests use).
TEST_PART_BYTES = 64 << 10
# Credentials moto accepts (any), and a region.
TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MotoServer:
    """``python -m moto.server`` on a free port of 127.0.0.1, until ``stop``."""

    def __init__(self, startup_s: float = 30.0) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, **TEST_ENV, "S3_UPLOAD_PART_MIN_SIZE": str(TEST_PART_BYTES)}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + startup_s
        while True:
            try:
                with urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1):
                    return
            except OSError:
                if self._process.poll() is not None:
                    raise RuntimeError(f"moto server exited with {self._process.returncode}") from None
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto server did not answer on {self.endpoint} in {startup_s} s") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


def new_bucket(endpoint: str, name: str | None = None) -> str:
    """Create a bucket at ``endpoint`` (a fresh name unless ``name`` is given); its URL ``s3://name``."""
    import boto3

    name = name or "ckpt-" + uuid.uuid4().hex[:16]
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **_keys())
    client.create_bucket(Bucket=name)
    return f"s3://{name}"


def _keys() -> dict[str, str]:
    return {
        "aws_access_key_id": TEST_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": TEST_ENV["AWS_SECRET_ACCESS_KEY"],
    }


def unfinished_uploads(endpoint: str, url: str) -> list[str]:
    """Keys of the incomplete multipart uploads in ``url``'s bucket (a direct boto3 call)."""
    import boto3

    bucket = url.removeprefix("s3://").split("/", 1)[0]
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **_keys())
    return [upload["Key"] for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def make_store(endpoint: str, **options: Any) -> Any:
    """An ``FsspecStore`` for S3 at ``endpoint`` (its own client: fresh retry quota and
    connections), configured as ``FsspecStore.for_url`` configures it."""
    from ckptlib.store.remote import FsspecStore

    return FsspecStore.for_url("s3://", endpoint_url=endpoint, skip_instance_cache=True, **options)


@dataclass
class Fault:
    """Answer the next ``count`` requests matching ``method``/``path`` (substring) by
    ``kind``: "503" (SlowDown), "drop" (close the connection unanswered) or "hang" (never
    answer: the connection stays open until the proxy closes)."""

    count: int
    kind: str = "503"
    method: str | None = None
    path: str | None = None

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (self.path is None or self.path in path)


_SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>fault</RequestId></Error>"
)
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection", "te", "upgrade"}


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 forwarding to ``upstream`` (host, port).

    ``requests`` and ``response_bytes`` (bodies) count what passed, faults included;
    ``log`` holds (method, path, status) per request, status 0 for one dropped or left
    hanging. Thread-safe.
    """

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.removeprefix("http://").partition(":")
        self._upstream = (host, int(port))
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self.requests = 0
        self.response_bytes = 0
        self.log: list[tuple[str, str, int]] = []
        self.closing = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-fault-proxy", daemon=True)
        self._thread.start()

    def fail_next(self, count: int, kind: str = "503", method: str | None = None, path: str | None = None) -> None:
        """Fail the next ``count`` matching requests (see ``Fault``)."""
        if kind not in ("503", "drop", "hang"):
            raise ValueError(kind)
        with self._lock:
            self._faults.append(Fault(count, kind, method, path))

    def reset(self) -> None:
        """Zero the counters and drop pending faults."""
        with self._lock:
            self._faults.clear()
            self.requests = 0
            self.response_bytes = 0
            self.log.clear()

    def counts(self) -> tuple[int, int]:
        """(requests, response body bytes) so far."""
        with self._lock:
            return self.requests, self.response_bytes

    def _fault_for(self, method: str, path: str) -> str | None:
        with self._lock:
            self.requests += 1
            for fault in self._faults:
                if fault.count > 0 and fault.matches(method, path):
                    fault.count -= 1
                    return fault.kind
            return None

    def _record(self, method: str, path: str, status: int, nbytes: int) -> None:
        with self._lock:
            self.response_bytes += nbytes
            self.log.append((method, path, status))

    def close(self) -> None:
        self.closing.set()
        self._server.shutdown()
        self._server.server_close()


def _handler_for(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))

        def _forward(self) -> None:
            body = self._body()
            method, path = self.command, self.path
            fault = proxy._fault_for(method, path)
            if fault in ("drop", "hang"):
                proxy._record(method, path, 0, 0)
                if fault == "hang":
                    proxy.closing.wait(120)
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault == "503":
                self._answer(503, [("Content-Type", "application/xml")], _SLOW_DOWN, method, path)
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            headers["Content-Length"] = str(len(body))
            upstream = http.client.HTTPConnection(*proxy._upstream, timeout=60)
            try:
                upstream.request(method, path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                kept = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
            finally:
                upstream.close()
            self._answer(response.status, kept, data, method, path)

        def _answer(self, status: int, headers: list[tuple[str, str]], data: bytes, method: str, path: str) -> None:
            # Recorded before the client can see the answer: a test reading the log once its
            # call returned finds every request of that call in it.
            proxy._record(method, path, status, len(data))
            self.send_response_only(status)
            for key, value in headers:
                if key.lower() != "content-length":
                    self.send_header(key, value)
            if method == "HEAD":
                length = next((v for k, v in headers if k.lower() == "content-length"), "0")
                self.send_header("Content-Length", length)
            else:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(data)
            self.wfile.flush()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

    return Handler


def increment_counter(endpoint: str, url: str, times: int) -> None:
    """Add 1 to the decimal counter at ``url``, ``times`` times, by ``update`` (run in
    another process by the multi-process test)."""
    store = make_store(endpoint)
    for _ in range(times):
        store.update(url, lambda old: str(int(old or b"0") + 1).encode(), sync=False)
