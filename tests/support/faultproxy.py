"""A registry fault proxy: a threaded HTTP reverse proxy on 127.0.0.1 with a controllable fault plan.

It forwards method, path, headers (Host kept as the proxy's, so the registry's ``Location`` headers point
back at the proxy) and body verbatim to the upstream registry, streaming request and response bodies.
Faults are queued and consumed one per request, in order::

    with FaultProxy(upstream=registry.host) as proxy:
        proxy.fail_next(3, status=503)      # the next 3 requests get a 503, then traffic passes through
        proxy.reset_next(1)                 # then one connection is reset (RST, no response)
        proxy.stall_next(1, seconds=30)     # then one request hangs for 30 s before being forwarded
        engine.push(f"{proxy.host}/enginetest/app", tag, ...)
        proxy.requests, proxy.faults_served, proxy.seen

Docker treats 127.0.0.0/8 as an insecure registry, so ``proxy.host`` is pushable over plain HTTP. The
daemon's first TLS probe is not valid HTTP; it is answered 400 by the server and never counted.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import struct
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Literal

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
    }
)
_PIECE = 64 * 1024
_REASONS = {
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class Fault:
    """One planned fault. ``kind`` is ``status`` (answer ``status``), ``reset`` (RST) or ``stall``."""

    kind: Literal["status", "reset", "stall"]
    status: int = 503
    seconds: float = 0.0
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    path: re.Pattern[str] | None = None
    method: str | None = None

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and method != self.method:
            return False
        return self.path is None or self.path.search(path) is not None


@dataclass(frozen=True)
class Seen:
    """One request the proxy handled: what was asked and what was answered (a status, ``reset`` or ``stall``)."""

    method: str
    path: str
    outcome: int | str
    injected: bool


class FaultProxy:
    """Reverse proxy in front of ``upstream`` (``host:port``) that can fail, reset or stall requests."""

    def __init__(self, upstream: str, *, upstream_timeout: float = 120.0) -> None:
        host, _, port = upstream.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"upstream must be host:port, got {upstream!r}")
        self.upstream_host, self.upstream_port = host, int(port)
        self.upstream_timeout = upstream_timeout
        self._lock = threading.Lock()
        self._plan: deque[Fault] = deque()
        self._seen: list[Seen] = []
        self._closing = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- the fault plan ---------------------------------------------------------------------------------------

    def fail_next(
        self,
        count: int = 1,
        *,
        status: int = 503,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        path: str | None = None,
        method: str | None = None,
    ) -> None:
        """Answer the next ``count`` requests (matching ``path`` regex / ``method`` if given) with ``status``."""
        if not 400 <= status <= 599:
            raise ValueError(f"status must be 4xx or 5xx, got {status}")
        reason = _REASONS.get(status, "Error")
        payload = body if body is not None else f"{status} {reason}\n".encode()
        extra = tuple((headers or {}).items())
        self._add(count, Fault("status", status=status, body=payload, headers=extra), path, method)

    def reset_next(self, count: int = 1, *, path: str | None = None, method: str | None = None) -> None:
        """Reset (TCP RST, no response) the connection of the next ``count`` matching requests."""
        self._add(count, Fault("reset"), path, method)

    def stall_next(
        self, count: int = 1, *, seconds: float = 3600.0, path: str | None = None, method: str | None = None
    ) -> None:
        """Hold the next ``count`` matching requests for ``seconds`` (or until the proxy stops), then forward."""
        self._add(count, Fault("stall", seconds=seconds), path, method)

    def clear(self) -> None:
        """Drop the faults still planned."""
        with self._lock:
            self._plan.clear()

    def _add(self, count: int, fault: Fault, path: str | None, method: str | None) -> None:
        if count < 0:
            raise ValueError("count must be >= 0")
        planned = Fault(
            fault.kind,
            status=fault.status,
            seconds=fault.seconds,
            body=fault.body,
            headers=fault.headers,
            path=re.compile(path) if path is not None else None,
            method=method.upper() if method is not None else None,
        )
        with self._lock:
            self._plan.extend([planned] * count)

    def _take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for index, fault in enumerate(self._plan):
                if fault.matches(method, path):
                    del self._plan[index]
                    return fault
            return None

    # -- what happened ----------------------------------------------------------------------------------------

    @property
    def seen(self) -> list[Seen]:
        """Every request handled so far, in arrival order."""
        with self._lock:
            return list(self._seen)

    @property
    def requests(self) -> int:
        """How many HTTP requests reached the proxy."""
        with self._lock:
            return len(self._seen)

    @property
    def faults_served(self) -> int:
        """How many requests got a planned fault."""
        with self._lock:
            return sum(1 for s in self._seen if s.injected)

    @property
    def pending_faults(self) -> int:
        """How many planned faults are still waiting for a request."""
        with self._lock:
            return len(self._plan)

    def _record(self, method: str, path: str, outcome: int | str, injected: bool) -> None:
        with self._lock:
            self._seen.append(Seen(method, path, outcome, injected))

    # -- lifecycle --------------------------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """``127.0.0.1:<port>``: use it as the registry host of image references."""
        if self._server is None:
            raise RuntimeError("the proxy is not running")
        return f"127.0.0.1:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(_ProxyHandler):
            owner = proxy

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="faultproxy", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._closing.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class _ProxyHandler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        with self.owner._lock:
            self.owner._connections.add(self.connection)

    def finish(self) -> None:
        with self.owner._lock:
            self.owner._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: tests read :attr:`FaultProxy.seen` instead."""

    def _handle(self) -> None:
        method, path = self.command, self.path
        fault = self.owner._take(method, path)
        if fault is not None and fault.kind == "reset":
            self.owner._record(method, path, "reset", True)
            self._reset()
            return
        if fault is not None and fault.kind == "stall":
            self.owner._record(method, path, "stall", True)
            self.owner._closing.wait(fault.seconds)
            if self.owner._closing.is_set():
                self._reset()
                return
        if fault is not None and fault.kind == "status":
            self._drain_body()
            self.owner._record(method, path, fault.status, True)
            self.send_response_only(fault.status, _REASONS.get(fault.status))
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(fault.body)))
            for name, value in fault.headers:
                self.send_header(name, value)
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(fault.body)
            return
        try:
            status = self._forward()
        except (OSError, http.client.HTTPException):
            self.owner._record(method, path, "upstream-error", False)
            self._reset()
            return
        self.owner._record(method, path, status, fault is not None)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _handle

    def _reset(self) -> None:
        """Abort the connection with a TCP RST."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()

    def _body(self) -> Iterator[bytes]:
        """The request body as it arrives, chunked transfer decoded."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size_line = self.rfile.readline(1024)
                if not size_line:
                    return
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return
                remaining = size
                while remaining:
                    piece = self.rfile.read(min(remaining, _PIECE))
                    if not piece:
                        return
                    remaining -= len(piece)
                    yield piece
                self.rfile.readline(16)
            return
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining > 0:
            piece = self.rfile.read(min(remaining, _PIECE))
            if not piece:
                return
            remaining -= len(piece)
            yield piece

    def _drain_body(self) -> None:
        for _ in self._body():
            pass

    def _forward(self) -> int:
        owner = self.owner
        upstream = http.client.HTTPConnection(
            owner.upstream_host, owner.upstream_port, timeout=owner.upstream_timeout
        )
        try:
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    upstream.putheader(name, value)
            chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
            if chunked:
                upstream.putheader("Transfer-Encoding", "chunked")
            upstream.endheaders()
            for piece in self._body():
                upstream.send(b"%x\r\n%b\r\n" % (len(piece), piece) if chunked else piece)
            if chunked:
                upstream.send(b"0\r\n\r\n")
            response = upstream.getresponse()
            self.send_response_only(response.status, response.reason)
            length = response.getheader("Content-Length")
            has_body = self.command != "HEAD" and response.status not in (204, 304) and response.status >= 200
            for name, value in response.getheaders():
                if name.lower() not in HOP_BY_HOP:
                    self.send_header(name, value)
            reframe = has_body and length is None
            if reframe:
                self.send_header("Transfer-Encoding", "chunked")
            if response.will_close and length is None and not reframe:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if has_body:
                while piece := response.read1(_PIECE):
                    self.wfile.write(b"%x\r\n%b\r\n" % (len(piece), piece) if reframe else piece)
                if reframe:
                    self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            return response.status
        finally:
            upstream.close()
