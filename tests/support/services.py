"""Real services for tests: a Docker engine, an htpasswd-protected registry, a Prefect server, git remotes.

Each is started as a real process on 127.0.0.1 and stopped by its PID.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import docker
import httpx

BUSYBOX = Path("/bin/busybox")
BASE_IMAGE = "previews-test/busybox:1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(
    url: str, *, timeout: float, proc: subprocess.Popen[bytes] | None = None, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            text = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"process for {url} exited with {proc.returncode}:\n{text}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def stop(proc: subprocess.Popen[bytes], *, timeout: float = 15) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def docker_client() -> docker.DockerClient:
    client = docker.from_env(timeout=300)
    try:
        client.ping()
    except Exception as exc:  # pragma: no cover - environment problem, reported clearly
        raise RuntimeError(
            "no Docker engine answers at DOCKER_HOST or /var/run/docker.sock; start dockerd"
        ) from exc
    return client


def ensure_base_image(client: docker.DockerClient) -> str:
    """A tiny local base image: FROM scratch + a static busybox. No registry needed."""
    try:
        client.images.get(BASE_IMAGE)
        return BASE_IMAGE
    except docker.errors.ImageNotFound:
        pass
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(str(BUSYBOX), arcname="busybox")
        dockerfile = (
            b"FROM scratch\nCOPY busybox /bin/busybox\n"
            b'RUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
            b'ENV PATH=/bin\nCMD ["/bin/sh"]\n'
        )
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    buf.seek(0)
    client.images.build(fileobj=buf, custom_context=True, tag=BASE_IMAGE, rm=True, pull=False)
    return BASE_IMAGE


@dataclass
class Registry:
    """A running docker-registry with htpasswd auth and delete enabled."""

    host: str
    username: str
    password: str
    root: Path
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, auth=(self.username, self.password), timeout=30)

    def tags(self, repository: str) -> list[str]:
        with self.http() as client:
            resp = client.get(f"/v2/{repository}/tags/list")
            if resp.status_code == 404:
                return []
            resp.raise_for_status()
            return sorted(resp.json().get("tags") or [])

    def manifest(self, repository: str, reference: str) -> tuple[str, dict[str, object]]:
        """Return (digest, manifest) for a tag or digest."""
        accept = ", ".join(
            [
                "application/vnd.docker.distribution.manifest.v2+json",
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.oci.image.index.v1+json",
                "application/vnd.docker.distribution.manifest.list.v2+json",
            ]
        )
        with self.http() as client:
            resp = client.get(f"/v2/{repository}/manifests/{reference}", headers={"Accept": accept})
            resp.raise_for_status()
            return resp.headers["Docker-Content-Digest"], resp.json()

    def image_config(self, repository: str, reference: str) -> dict[str, object]:
        """The image config blob (labels are under ``config.Labels``)."""
        _, manifest = self.manifest(repository, reference)
        config = manifest["config"]
        assert isinstance(config, dict)
        with self.http() as client:
            resp = client.get(f"/v2/{repository}/blobs/{config['digest']}")
            resp.raise_for_status()
            data: dict[str, object] = resp.json()
            return data


@contextmanager
def run_registry(
    workdir: Path, *, username: str = "previews", password: str = "s3cret-registry-pw"
) -> Iterator[Registry]:
    binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    workdir.mkdir(parents=True, exist_ok=True)
    htpasswd = workdir / "htpasswd"
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
    htpasswd.write_text(f"{username}:{hashed}\n")
    port = free_port()
    config = workdir / "config.yml"
    config.write_text(
        f"""version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {workdir / "data"}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
auth:
  htpasswd:
    realm: basic-realm
    path: {htpasswd}
"""
    )
    log = workdir / "registry.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([binary, "serve", str(config)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/", timeout=20, proc=proc, log=log)
        yield Registry(f"127.0.0.1:{port}", username, password, workdir, proc)
    finally:
        stop(proc)


def prefect_env(home: Path, port: int) -> dict[str, str]:
    return {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_LOGGING_LEVEL": "INFO",
    }


@contextmanager
def run_prefect_server(home: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **prefect_env(home, port)}
    prefect = shutil.which("prefect") or "prefect"
    log = home / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/api/health", timeout=120, proc=proc, log=log)
        yield proc
    finally:
        stop(proc)


def git(*args: str, cwd: Path | None = None) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Test",
        "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "Test",
        "GIT_COMMITTER_EMAIL": "test@example.invalid",
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    out = subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True)
    return out.stdout.strip()


@dataclass
class Remote:
    """A bare repository standing in for github.com/<repository>, with a work tree to make commits."""

    repository: str
    bare: Path
    work: Path

    def commit(self, files: dict[str, str | None], message: str = "change") -> str:
        """Write (or delete, with None) files, commit, push to the bare remote's ``main``; return the SHA."""
        for rel, content in files.items():
            path = self.work / rel
            if content is None:
                git("rm", "-q", rel, cwd=self.work)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
            git("add", rel, cwd=self.work)
        git("commit", "-q", "--allow-empty", "-m", message, cwd=self.work)
        git("push", "-q", "origin", "HEAD:main", cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)

    def push_pr_ref(self, pr_number: int, sha: str) -> None:
        """Publish ``refs/pull/<N>/head`` as GitHub does."""
        git("push", "-q", "-f", "origin", f"{sha}:refs/pull/{pr_number}/head", cwd=self.work)


def make_remote(root: Path, repository: str) -> Remote:
    """Create ``root/<owner>/<name>.git`` (bare) and a work tree that pushes to it."""
    bare = root / f"{repository}.git"
    bare.parent.mkdir(parents=True, exist_ok=True)
    git("init", "-q", "--bare", "-b", "main", str(bare))
    git("config", "uploadpack.allowAnySHA1InWant", "true", cwd=bare)
    work = root / "_work" / repository
    work.parent.mkdir(parents=True, exist_ok=True)
    git("init", "-q", "-b", "main", str(work))
    git("remote", "add", "origin", str(bare), cwd=work)
    return Remote(repository, bare, work)
