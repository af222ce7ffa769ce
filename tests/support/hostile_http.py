"""Real HTTP servers on 127.0.0.1 for the credential cases: a hostile origin and the foreign one it points at.

A :class:`ScriptedServer` answers every request with what its ``respond`` function returns (status, headers,
body) and records each request with the ``Authorization`` header it carried. Two of them on different ports
are two origins: the client is configured for the hostile one, whose answers carry ``Link``, ``Location``,
redirects or a token ``realm`` naming the foreign one, and the foreign one's record shows which credentials
(if any) reached it. No mocks: the clients under test speak real HTTP to both.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

import pytest

from previews.errors import CrossOriginError
from tests.support.http_server import BackgroundHTTPServer


@dataclass(frozen=True)
class Seen:
    """One request as the server received it."""

    method: str
    path: str
    authorization: str | None


@dataclass(frozen=True)
class Reply:
    """What a server answers: a status, headers and a body (JSON-encoded unless bytes)."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: object = None

    def raw(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        return b"" if self.body is None else json.dumps(self.body).encode()


Respond = Callable[[str, str, dict[str, str]], Reply]


def _not_found(method: str, path: str, headers: dict[str, str]) -> Reply:
    return Reply(404, body={"message": "Not Found"})


class ScriptedServer(BackgroundHTTPServer):
    """A threaded HTTP server answering with ``respond(method, path, headers)``; ``seen`` records requests."""

    def __init__(self, respond: Respond = _not_found) -> None:
        self.respond = respond
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        super().__init__(self._handler())

    @property
    def origin(self) -> str:
        """The origin as :func:`previews.http.origin` writes it (the URL with its port)."""
        return self.url

    def authorizations(self) -> list[str]:
        """Every ``Authorization`` header that reached this server."""
        with self._lock:
            return [s.authorization for s in self.seen if s.authorization]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                with server._lock:
                    server.seen.append(Seen(method, self.path, headers.get("authorization")))
                reply = server.respond(method, self.path, headers)
                raw = reply.raw()
                self.send_response(reply.status)
                merged = {"Content-Type": "application/json", **reply.headers}
                for key, value in merged.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                if method != "HEAD":
                    self.wfile.write(raw)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_HEAD(self) -> None:
                self._handle("HEAD")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_PUT(self) -> None:
                self._handle("PUT")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

        return Handler


def assert_refused(
    info: pytest.ExceptionInfo[CrossOriginError], foreign: ScriptedServer, secret: str
) -> None:
    """The error names the foreign origin, shows no secret, and the foreign origin received nothing."""
    assert info.value.origin == foreign.origin
    assert foreign.origin in str(info.value)
    assert secret not in str(info.value)
    assert foreign.seen == []
