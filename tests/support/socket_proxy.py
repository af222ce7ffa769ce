"""A Unix-socket proxy in front of the Docker engine that can be cut: the engine "goes away" for its clients.

    with EngineProxy(tmp_path / "engine.sock") as proxy:
        client = docker.DockerClient(base_url=proxy.host)
        ...
        proxy.cut()   # every open connection is closed and new ones are refused

Bytes are copied both ways unchanged, so the BuildKit session (an upgraded, hijacked HTTP connection) works
through it. The engine itself keeps running; it sees its clients disconnect.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

ENGINE_SOCKET = "/var/run/docker.sock"


@contextlib.contextmanager
def socket_dir() -> Iterator[Path]:
    """A short temporary directory for a socket (a Unix socket path must stay under 108 bytes); removed after."""
    path = Path(tempfile.mkdtemp(prefix="pv-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class EngineProxy:
    """Listens on ``path`` and forwards every connection to the engine's socket until :meth:`cut`."""

    def __init__(self, path: Path, *, upstream: str = ENGINE_SOCKET) -> None:
        self.path = path
        self.upstream = upstream
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._cut = threading.Event()
        self.connections = 0

    @property
    def host(self) -> str:
        return f"unix://{self.path}"

    def __enter__(self) -> EngineProxy:
        self._listener.bind(str(self.path))
        self._listener.listen(64)
        threading.Thread(target=self._accept, name="engine-proxy", daemon=True).start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cut()

    def _accept(self) -> None:
        while not self._cut.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._cut.is_set():
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
                self.connections += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._copy, args=(src, dst), daemon=True).start()

    def _copy(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        """Close the listener and every connection: the engine is gone as far as clients can tell."""
        self._cut.set()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        with contextlib.suppress(OSError):
            self._listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
