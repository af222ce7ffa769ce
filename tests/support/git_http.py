"""An authenticated git smart-HTTP server for tests: ``git http-backend`` (CGI) behind ``http.server``.

It stands in for github.com's git endpoint: every request must carry ``Authorization: Basic
base64("x-access-token:<token>")`` (what ``previews.git`` sends) or it is answered 401. Each repository can
require its own token (``repo_tokens``), as the app and its sibling repositories do with a token per scope;
every request records which of the known tokens it presented (by name, never the value). It can also be told to
answer the next requests with an error status, or to stall, to exercise transient failures and timeouts.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HTTP_BACKEND = Path("/usr/lib/git-core/git-http-backend")


@dataclass(frozen=True)
class SeenRequest:
    """One request the server received (the Authorization value itself is never kept)."""

    method: str
    path: str
    authorized: bool
    status: int
    repository: str = ""
    presented: str | None = None  # the name of the known token the request carried, if any


@dataclass
class GitHttpServer:
    """A running server. Repositories are served from ``root`` as ``{url}/<owner>/<name>.git``."""

    root: Path
    token: str
    repo_tokens: dict[str, str] = field(default_factory=dict)  # "owner/name" -> the token it requires
    host: str = "127.0.0.1"
    port: int = 0
    requests: list[SeenRequest] = field(default_factory=list)
    fail_statuses: list[int] = field(default_factory=list)
    stall_seconds: float = 0.0
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url_template(self) -> str:
        """A ``PREVIEWS_GIT_URL_TEMPLATE`` pointing at this server."""
        return f"{self.url}/{{repository}}.git"

    def fail_next(self, status: int, count: int = 1) -> None:
        """Answer the next ``count`` requests with ``status`` (before authentication)."""
        with self.lock:
            self.fail_statuses.extend([status] * count)

    def expected_authorization(self, repository: str = "") -> str:
        return _basic(self.repo_tokens.get(repository, self.token))

    def presented_token(self, authorization: str) -> str | None:
        """Which known token an Authorization header carries: "default", a repository name, or None."""
        known = {"default": self.token, **self.repo_tokens}
        for name, token in known.items():
            if hmac.compare_digest(authorization.encode(), _basic(token).encode()):
                return name
        return None

    def seen_by_repository(self) -> dict[str, set[str | None]]:
        """Repository -> the names of the tokens its requests carried."""
        with self.lock:
            seen: dict[str, set[str | None]] = {}
            for request in self.requests:
                seen.setdefault(request.repository, set()).add(request.presented)
            return seen


def _basic(token: str) -> str:
    return "Basic " + base64.b64encode(f"x-access-token:{token}".encode()).decode()


def _repository_of(path: str) -> str:
    """``owner/name`` of a smart-HTTP request path ``/owner/name.git/...``."""
    parts = path.partition("?")[0].lstrip("/").split("/")
    return f"{parts[0]}/{parts[1].removesuffix('.git')}" if len(parts) >= 2 else ""


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks: list[bytes] = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                handler.rfile.readline()
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else b""


def _make_handler(server: GitHttpServer) -> type[BaseHTTPRequestHandler]:
    backend = str(HTTP_BACKEND if HTTP_BACKEND.exists() else shutil.which("git-http-backend"))

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            return

        def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _record(self, authorized: bool, status: int) -> None:
            presented = server.presented_token(self.headers.get("Authorization", ""))
            repository = _repository_of(self.path)
            with server.lock:
                server.requests.append(
                    SeenRequest(self.command, self.path, authorized, status, repository, presented)
                )

        def _handle(self) -> None:
            body = _read_body(self) if self.command == "POST" else b""
            if server.stall_seconds:
                server.release.wait(server.stall_seconds)
            with server.lock:
                failure = server.fail_statuses.pop(0) if server.fail_statuses else None
            got = self.headers.get("Authorization", "")
            expected = server.expected_authorization(_repository_of(self.path))
            authorized = hmac.compare_digest(got.encode(), expected.encode())
            if failure is not None:
                self._record(authorized, failure)
                self._answer(failure, {"Content-Type": "text/plain"}, b"injected failure\n")
                return
            if not authorized:
                self._record(False, 401)
                self._answer(
                    401, {"WWW-Authenticate": 'Basic realm="git"', "Content-Type": "text/plain"}, b"401\n"
                )
                return
            path, _, query = self.path.partition("?")
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "GIT_CONFIG_NOSYSTEM": "1",
                "HOME": str(server.root),
                "GIT_PROJECT_ROOT": str(server.root),
                "GIT_HTTP_EXPORT_ALL": "1",
                "GATEWAY_INTERFACE": "CGI/1.1",
                "REQUEST_METHOD": self.command,
                "PATH_INFO": path,
                "QUERY_STRING": query,
                "REMOTE_USER": "x-access-token",
                "REMOTE_ADDR": self.client_address[0],
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(len(body)),
            }
            if self.headers.get("Git-Protocol"):
                env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
            if self.headers.get("Content-Encoding"):
                env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
            proc = subprocess.run(
                [backend], input=body, env=env, capture_output=True, timeout=60, check=False
            )
            raw = proc.stdout
            sep = b"\r\n\r\n" if b"\r\n\r\n" in raw else b"\n\n"
            head, _, payload = raw.partition(sep)
            status = 200
            headers: dict[str, str] = {}
            for line in head.decode("latin-1").splitlines():
                key, _, value = line.partition(":")
                if key.lower() == "status":
                    status = int(value.strip().split()[0])
                elif key:
                    headers[key.strip()] = value.strip()
            self._record(True, status)
            self._answer(status, headers, payload)

        def _serve(self) -> None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # git was killed mid-request
                self._handle()

        def do_GET(self) -> None:
            self._serve()

        def do_POST(self) -> None:
            self._serve()

    return Handler


@contextmanager
def run_git_http(
    root: Path, token: str, *, repo_tokens: dict[str, str] | None = None
) -> Iterator[GitHttpServer]:
    """Serve the bare repositories under ``root`` on 127.0.0.1 (a free port), requiring ``token`` (or, for a
    repository named in ``repo_tokens``, that repository's token)."""
    server = GitHttpServer(root=root, token=token, repo_tokens=dict(repo_tokens or {}))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(server))
    httpd.daemon_threads = True
    server.port = int(httpd.server_address[1])
    thread = threading.Thread(target=httpd.serve_forever, name="git-http", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)
