"""The pipeline measured beside the same work done by hand, and the running stack's latency and memory.

Used by ``bench/run.py`` (the one command). Three copies of one fixture repository (a busybox-based Dockerfile
with a 16 MiB layer, a COPY of the sources and a RUN over them) are built and pushed to the same local
registry, each cold (a salt in its Dockerfile defeats the layer cache) and then warm (a one-line change):

- by hand: ``git init`` + ``git fetch --depth 1 origin <sha>`` + checkout, docker-py build, docker-py push;
- ``previews build`` (the CLI, one process, the flow in-process against the bench's Prefect server);
- the running stack (receiver + Prefect server + served deployments with the real trigger): from the
  receiver's 202 until the tag answers in the registry.
"""

from __future__ import annotations

import copy
import json
import os
import re
import resource
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import docker
import httpx

from previews.signature import sign

BASE_IMAGE = "previews-test/busybox:1"
BENCH_DOCKERFILE = """\
FROM {base}
RUN mkdir -p /opt && echo {salt} > /opt/salt && dd if=/dev/urandom of=/opt/blob bs=1M count=16 2>/dev/null
COPY src/ /opt/src/
RUN cat /opt/src/* /opt/salt > /opt/all.txt && sha256sum /opt/blob > /opt/blob.sha256
"""
SECRET = "bench-webhook-secret"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@previews.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@previews.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(*args: str, cwd: Path | None = None) -> str:
    """Run git (no shell) and return its stdout."""
    out = subprocess.run(
        ["git", *args], cwd=cwd, env={**os.environ, **GIT_ENV}, check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


@dataclass
class Project:
    """A bare remote standing in for github.com/<repository>, with a work tree to make PR commits."""

    repository: str
    root: Path
    pr: int
    base_sha: str
    head_sha: str

    @property
    def bare(self) -> Path:
        return self.root / f"{self.repository}.git"

    @property
    def work(self) -> Path:
        return self.root / "_work" / self.repository

    @property
    def git_url_template(self) -> str:
        return f"file://{self.root}/{{repository}}.git"

    @property
    def image(self) -> str:
        return self.repository.lower()

    def one_line_change(self) -> str:
        """Commit a one-line source change as the PR's new head; return its SHA."""
        (self.work / "src" / "main.txt").write_text(f"main v2 {uuid.uuid4()}\n")
        git("commit", "-q", "-am", "one-line change", cwd=self.work)
        self.head_sha = git("rev-parse", "HEAD", cwd=self.work)
        git("push", "-q", "-f", "origin", f"{self.head_sha}:refs/pull/{self.pr}/head", cwd=self.work)
        return self.head_sha


def make_project(root: Path, repository: str, pr: int) -> Project:
    """A repository whose PR head changes code on top of a base commit; a fresh salt makes it cache-cold."""
    bare = root / f"{repository}.git"
    bare.parent.mkdir(parents=True, exist_ok=True)
    git("init", "-q", "--bare", "-b", "main", str(bare))
    git("config", "uploadpack.allowAnySHA1InWant", "true", cwd=bare)
    work = root / "_work" / repository
    work.mkdir(parents=True)
    git("init", "-q", "-b", "main", str(work))
    git("remote", "add", "origin", str(bare), cwd=work)
    (work / "Dockerfile").write_text(BENCH_DOCKERFILE.format(base=BASE_IMAGE, salt=uuid.uuid4().hex))
    (work / "src").mkdir()
    (work / "src" / "main.txt").write_text("main v1\n")
    (work / "src" / "lib.txt").write_text("lib v1\n" * 100)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "base", cwd=work)
    base = git("rev-parse", "HEAD", cwd=work)
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    project = Project(repository, root, pr, base, base)
    project.one_line_change()
    return project


@dataclass(frozen=True)
class RegistryAccess:
    """Where to push and with which credentials."""

    host: str
    username: str
    password: str

    def has_tag(self, image: str, tag: str) -> bool:
        resp = httpx.head(
            f"http://{self.host}/v2/{image}/manifests/{tag}",
            auth=(self.username, self.password),
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
            timeout=5,
        )
        return resp.status_code == 200


def by_hand(project: Project, registry: RegistryAccess, workdir: Path) -> float:
    """The plain script: git fetch at the SHA, docker build, docker push. Returns wall seconds."""
    client = docker.from_env(timeout=600)
    tag = f"pr-{project.pr}-{project.head_sha}"
    ref = f"{registry.host}/{project.image}"
    checkout = workdir / f"hand-{uuid.uuid4().hex[:8]}"
    start = time.perf_counter()
    checkout.mkdir(parents=True)
    git("init", "-q", cwd=checkout)
    git("fetch", "-q", "--depth", "1", str(project.bare), project.head_sha, cwd=checkout)
    git("checkout", "-q", "FETCH_HEAD", cwd=checkout)
    for chunk in client.api.build(path=str(checkout), tag=f"{ref}:{tag}", rm=True, decode=True):
        if "error" in chunk:
            raise RuntimeError(f"build failed: {chunk['error']}")
    auth = {"username": registry.username, "password": registry.password}
    for chunk in client.api.push(ref, tag=tag, auth_config=auth, stream=True, decode=True):
        if "error" in chunk:
            raise RuntimeError(f"push failed: {chunk['error']}")
    elapsed = time.perf_counter() - start
    client.close()
    return elapsed


def push_base_layer(client: docker.DockerClient, registry: RegistryAccess) -> None:
    """Push the shared base image once, so no measured run pays for uploading the base layer first."""
    ref = f"{registry.host}/bench/base"
    client.images.get(BASE_IMAGE).tag(ref, tag="warmup")
    auth = {"username": registry.username, "password": registry.password}
    for chunk in client.api.push(ref, tag="warmup", auth_config=auth, stream=True, decode=True):
        if "error" in chunk:
            raise RuntimeError(f"push failed: {chunk['error']}")


def pipeline_env(project: Project, registry: RegistryAccess, api_url: str, home: Path) -> dict[str, str]:
    """The environment of ``previews build`` and of the stack's processes."""
    return {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREVIEWS_REGISTRY": registry.host,
        "PREVIEWS_REGISTRY_USERNAME": registry.username,
        "PREVIEWS_REGISTRY_TOKEN": registry.password,
        "PREVIEWS_GIT_URL_TEMPLATE": project.git_url_template,
        "PREVIEWS_RETRY_DELAY": "1",
    }


@dataclass(frozen=True)
class CliRun:
    """One ``previews build`` process: wall seconds and its peak resident memory."""

    seconds: float
    peak_rss_mib: float


def previews_build(project: Project, env: Mapping[str, str], workdir: Path) -> CliRun:
    """Run ``previews build --json`` as its own process; its peak RSS comes from ``wait4``."""
    argv = [str(Path(sys.executable).parent / "previews"), "build", "--repository", project.repository]
    argv += ["--pr", str(project.pr), "--sha", project.head_sha, "--json"]
    out_path, err_path = workdir / "build.out", workdir / "build.err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, env=dict(env), stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = out_path.read_text()
    if proc.returncode != 0 or json.loads(text or "{}").get("status") != "pushed":
        raise RuntimeError(
            f"previews build failed ({proc.returncode}): {text[-500:]} {err_path.read_text()[-1500:]}"
        )
    return CliRun(elapsed, usage.ru_maxrss / 1024)


def delivery(project: Project) -> tuple[bytes, dict[str, str], str]:
    """A signed ``synchronize`` delivery (a real GitHub payload) for the project's current head."""
    raw = resources.files("previews.local.demo_data").joinpath("synchronize.payload.json").read_text()
    payload: dict[str, Any] = copy.deepcopy(json.loads(raw))
    owner, name = project.repository.split("/")
    payload["number"] = project.pr
    payload["pull_request"]["number"] = project.pr
    for repo in (
        payload["repository"],
        payload["pull_request"]["head"]["repo"],
        payload["pull_request"]["base"]["repo"],
    ):
        repo.update(full_name=project.repository, name=name)
        repo["owner"]["login"] = owner
        repo["clone_url"] = project.git_url_template.format(repository=project.repository)
    payload["pull_request"]["head"]["sha"] = project.head_sha
    payload["pull_request"]["base"]["sha"] = project.base_sha
    # Every real event carries its own time; without it a second delivery at the same head would be the same
    # signed body, which the receiver answers "duplicate" (a replay) and does not build.
    payload["pull_request"]["updated_at"] = datetime.now(UTC).isoformat(timespec="microseconds")
    body = json.dumps(payload).encode()
    delivery_id = str(uuid.uuid4())
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "pull_request",
        "X-GitHub-Delivery": delivery_id,
        "X-Hub-Signature-256": sign(body, SECRET),
    }
    return body, headers, delivery_id


def _timestamp(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def find_run(api_url: str, delivery_id: str) -> dict[str, Any] | None:
    """The flow run whose ``delivery`` parameter is ``delivery_id`` (newest 50 runs searched)."""
    resp = httpx.post(
        f"{api_url}/flow_runs/filter", json={"sort": "EXPECTED_START_TIME_DESC", "limit": 50}, timeout=10
    )
    resp.raise_for_status()
    for run in resp.json():
        if run["parameters"].get("delivery") == delivery_id:
            found: dict[str, Any] = run
            return found
    return None


@dataclass(frozen=True)
class StackRun:
    """One delivery through the stack: 202 -> Running, and 202 -> tag in the registry (when awaited)."""

    to_running: float
    to_pushed: float | None
    final_state: str


def through_stack(
    project: Project,
    registry: RegistryAccess,
    *,
    receiver_url: str,
    api_url: str,
    wait_for_tag: bool,
    timeout: float = 300,
) -> StackRun:
    """Send one delivery and time it until the run is Running and (optionally) the tag is pushed."""
    body, headers, delivery_id = delivery(project)
    resp = httpx.post(receiver_url, content=body, headers=headers, timeout=30)
    accepted = time.time()
    if resp.status_code != 202:
        raise RuntimeError(f"the receiver answered {resp.status_code}: {resp.text}")
    tag = f"pr-{project.pr}-{project.head_sha}"
    deadline = time.monotonic() + timeout
    to_running: float | None = None
    to_pushed: float | None = None
    state = "?"
    while time.monotonic() < deadline:
        run = find_run(api_url, delivery_id)
        if run is not None:
            state = run["state_type"]
            if to_running is None and run.get("start_time"):
                to_running = _timestamp(run["start_time"]) - accepted
            if wait_for_tag and to_pushed is None and registry.has_tag(project.image, tag):
                to_pushed = time.time() - accepted
            if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                if to_running is None and run.get("start_time"):
                    to_running = _timestamp(run["start_time"]) - accepted
                break
        time.sleep(0.1)
    if to_running is None:
        raise RuntimeError(f"delivery {delivery_id} did not start a run within {timeout:.0f}s ({state})")
    if wait_for_tag and to_pushed is None:
        raise RuntimeError(f"no {project.image}:{tag} after {timeout:.0f}s (run state {state})")
    return StackRun(to_running, to_pushed, state)


@dataclass
class MemorySampler:
    """Samples the resident memory of named processes and of their descendants (flow-run subprocesses)."""

    interval: float = 0.2
    peaks_mib: dict[str, float] = field(default_factory=dict)
    _pids: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def watch(self, role: str, pid: int) -> None:
        self._pids[role] = pid

    @staticmethod
    def _rss_mib(pid: int) -> float:
        try:
            text = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return 0.0
        match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
        return int(match.group(1)) / 1024 if match else 0.0

    @staticmethod
    def _children(pid: int) -> list[int]:
        found: list[int] = []
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            return found
        for task in tasks:
            try:
                found += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
        return found

    def _sample(self) -> None:
        for role, pid in list(self._pids.items()):
            self.peaks_mib[role] = max(self.peaks_mib.get(role, 0.0), self._rss_mib(pid))
            stack = self._children(pid)
            while stack:
                child = stack.pop()
                key = f"{role}: child process"
                self.peaks_mib[key] = max(self.peaks_mib.get(key, 0.0), self._rss_mib(child))
                stack += self._children(child)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    @contextmanager
    def running(self) -> Iterator[MemorySampler]:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=5)


def self_peak_rss_mib() -> float:
    """This process's own peak RSS."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
