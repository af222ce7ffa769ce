"""A private, empty Docker engine for tests and benchmarks that need a cold engine (no layers, no BuildKit cache).

The shared engine's BuildKit keeps its build cache when images are removed, so "remove the images" does not
make it cold; a second ``dockerd`` with its own data root does. It runs beside the shared engine on the same
host, so it must not touch the shared engine's networking:

- its own bridge (created here, a 10.213.x.0/24 subnet) instead of ``docker0``. Never start it with
  ``--bridge none`` in the host's network namespace: dockerd then DELETES the ``docker0`` interface at start
  (``removeDefaultBridgeInterface``), which breaks every container and ``RUN`` step of the shared engine;
- no iptables, masquerading or ip_forward changes (``--iptables=false --ip-masq=false --ip-forward=false``);
- its own data root, exec root, pid file and socket under a temporary directory.

Needs root. Stopped by its PID; the bridge and the directory are removed afterwards.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import docker

DOCKERD = shutil.which("dockerd") or "/usr/bin/dockerd"
DOCKER_CLI = "/usr/bin/docker"


@dataclass
class PrivateEngine:
    """A running private engine: ``host`` is its ``DOCKER_HOST``."""

    root: Path
    host: str
    proc: subprocess.Popen[bytes]

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.host, timeout=300)

    def load(self, image: str, *, source_host: str = "unix:///var/run/docker.sock") -> None:
        """Copy a local image of the shared engine into this one (``docker save | docker load``)."""
        saver = subprocess.Popen(
            [DOCKER_CLI, "save", image],
            stdout=subprocess.PIPE,
            env={**os.environ, "DOCKER_HOST": source_host},
        )
        subprocess.run(
            [DOCKER_CLI, "load", "-q"],
            stdin=saver.stdout,
            env={**os.environ, "DOCKER_HOST": self.host},
            check=True,
            capture_output=True,
        )
        if saver.stdout is not None:
            saver.stdout.close()
        if saver.wait(timeout=120) != 0:
            raise RuntimeError(f"docker save {image} failed")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextmanager
def private_engine(*, timeout: float = 60.0) -> Iterator[PrivateEngine]:
    """Start an empty engine; yield it; stop it and remove everything it made."""
    if os.geteuid() != 0:
        raise RuntimeError("a private Docker engine needs root (dockerd)")
    root = Path(tempfile.mkdtemp(prefix="previews-engine-", dir="/tmp"))
    bridge = f"pvbk{secrets.token_hex(3)}"
    subnet = f"10.213.{secrets.randbelow(250) + 1}"
    _ip("link", "add", bridge, "type", "bridge")
    proc: subprocess.Popen[bytes] | None = None
    try:
        _ip("addr", "add", f"{subnet}.1/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        host = f"unix://{root}/docker.sock"
        log = (root / "dockerd.log").open("wb")
        proc = subprocess.Popen(
            [
                DOCKERD,
                "--host",
                host,
                "--data-root",
                str(root / "data"),
                "--exec-root",
                str(root / "exec"),
                "--pidfile",
                str(root / "docker.pid"),
                "--bridge",
                bridge,
                "--iptables=false",
                "--ip-masq=false",
                "--ip6tables=false",
                "--ip-forward=false",
                "--userland-proxy=false",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        engine = PrivateEngine(root, host, proc)
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"dockerd exited {proc.returncode}: {(root / 'dockerd.log').read_text()[-2000:]}"
                )
            with suppress(Exception):
                if engine.client().ping():
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the private dockerd did not answer")
            time.sleep(0.2)
        yield engine
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        with suppress(subprocess.CalledProcessError):
            _ip("link", "delete", bridge)
        # dockerd unmounts its layers on a clean stop; anything still mounted keeps the directory
        subprocess.run(["umount", "-R", str(root / "data")], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)
