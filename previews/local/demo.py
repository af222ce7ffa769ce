"""The pieces of ``previews up --demo``: a throwaway registry, a sample repository, one signed delivery."""

from __future__ import annotations

import copy
import json
import re
import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import bcrypt
import docker.errors
import git
import httpx
import requests

from previews.docker_engine import DockerEngine
from previews.errors import PreviewsError
from previews.signature import sign

DEMO_REPOSITORY = "demo-org/preview-demo"
DEMO_PR = 2
DEMO_DOCKERFILE = """\
# A preview image needs no base image: the demo works where no public registry can be reached.
FROM scratch
COPY site/ /site/
LABEL org.opencontainers.image.title="previews demo"
"""


class DemoError(PreviewsError):
    """The demo could not complete."""


class DemoFailedError(DemoError):
    """The demo's flow run failed, crashed, was cancelled, or completed without an image."""


_FAILED_STATES = {"FAILED", "CRASHED", "CANCELLED", "CANCELLING"}


@dataclass(frozen=True)
class DemoRegistry:
    """A local registry with htpasswd auth, as ``host:port``."""

    host: str
    username: str
    password: str


@dataclass(frozen=True)
class DemoProject:
    """The demo repository as a local bare remote."""

    repository: str
    bare: Path
    head_sha: str
    base_sha: str
    git_url_template: str


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def registry_binary() -> str | None:
    """Debian's ``docker-registry``, if installed."""
    found = shutil.which("docker-registry")
    return found or ("/usr/bin/docker-registry" if Path("/usr/bin/docker-registry").exists() else None)


@contextmanager
def run_registry(workdir: Path) -> Iterator[DemoRegistry]:
    """Start Debian's ``docker-registry`` on 127.0.0.1 with a generated password; stop it by PID after."""
    binary = registry_binary()
    if binary is None:
        raise DemoError("the demo needs Debian's docker-registry (apt-get install docker-registry)")
    workdir.mkdir(parents=True, exist_ok=True)
    username, password = "demo", secrets.token_urlsafe(18)
    htpasswd = workdir / "htpasswd"
    htpasswd.write_text(f"{username}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=6)).decode()}\n")
    port = _free_port()
    config = workdir / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {workdir / 'data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
        f"auth:\n  htpasswd:\n    realm: previews-demo\n    path: {htpasswd}\n"
    )
    log = (workdir / "registry.log").open("ab")
    proc = subprocess.Popen(
        [binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 401:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise DemoError(f"docker-registry did not start (log: {workdir / 'registry.log'})")
            time.sleep(0.2)
        yield DemoRegistry(f"127.0.0.1:{port}", username, password)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        _forget_local_images(f"127.0.0.1:{port}")


def _forget_local_images(host: str) -> None:
    """Remove the engine's references to images of the demo registry ``host``: its port is never used again."""
    try:
        engine = DockerEngine.from_env(timeout=10)
        listed = engine.client.api.images(name=f"{host}/{DEMO_REPOSITORY}")
    except (PreviewsError, docker.errors.DockerException, requests.RequestException):
        return  # best effort: a few kilobytes stay behind
    for image in listed:
        for ref in image.get("RepoTags") or []:
            if ref.startswith(f"{host}/"):
                engine.remove(ref)


def make_project(root: Path) -> DemoProject:
    """Create the demo repository (a bare remote) with a base commit and a PR head commit."""
    if root.exists():
        shutil.rmtree(root)
    bare = root / f"{DEMO_REPOSITORY}.git"
    bare.parent.mkdir(parents=True)
    git.Repo.init(bare, bare=True, initial_branch="main").close()
    # closed at the end: GitPython keeps `git cat-file` processes running for an open repository
    with git.Repo.init(root / "_work", initial_branch="main") as work:
        with work.config_writer() as cfg:
            cfg.set_value("user", "name", "previews demo")
            cfg.set_value("user", "email", "demo@previews.invalid")
        tree = Path(work.working_tree_dir or root / "_work")
        (tree / "site").mkdir()
        (tree / "Dockerfile").write_text(DEMO_DOCKERFILE)
        (tree / "site" / "index.html").write_text("<h1>preview demo</h1>\n")
        work.index.add(["Dockerfile", "site/index.html"])
        base = work.index.commit("demo: first version").hexsha
        (tree / "site" / "index.html").write_text(f"<h1>preview demo</h1>\n<p>change {uuid.uuid4()}</p>\n")
        work.index.add(["site/index.html"])
        head = work.index.commit("demo: a pull request change").hexsha
        work.create_remote("origin", str(bare))
        work.remote("origin").push(["main:main", f"{head}:refs/pull/{DEMO_PR}/head"])
    return DemoProject(DEMO_REPOSITORY, bare, head, base, f"file://{root}/{{repository}}.git")


def delivery_body(project: DemoProject) -> bytes:
    """A real ``synchronize`` payload from GitHub, rewritten to the demo repository and commits."""
    raw = resources.files("previews.local.demo_data").joinpath("synchronize.payload.json").read_text()
    payload = copy.deepcopy(json.loads(raw))
    owner, name = project.repository.split("/")
    payload["number"] = DEMO_PR
    for repo in (
        payload["repository"],
        payload["pull_request"]["head"]["repo"],
        payload["pull_request"]["base"]["repo"],
    ):
        repo["full_name"] = project.repository
        repo["name"] = name
        repo["owner"]["login"] = owner
        repo["clone_url"] = project.git_url_template.format(repository=project.repository)
    payload["pull_request"]["number"] = DEMO_PR
    payload["pull_request"]["head"]["sha"] = project.head_sha
    payload["pull_request"]["base"]["sha"] = project.base_sha
    return json.dumps(payload).encode()


def send_and_wait(
    project: DemoProject,
    *,
    receiver_url: str,
    api_url: str,
    ui_url: str,
    registry: DemoRegistry,
    secret: str,
    timeout: float,
) -> dict[str, str]:
    """Send one signed delivery and follow its flow run until ``pr-<N>-<sha>`` is in the registry.

    Raises :class:`DemoFailedError` as soon as the run fails, crashes or is cancelled (naming the failed task and
    its error), or completes without an image; :class:`DemoError` when nothing happens within ``timeout``.
    """
    body = delivery_body(project)
    delivery = str(uuid.uuid4())
    signature = sign(body, secret)
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "pull_request",
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": signature,
        "User-Agent": "GitHub-Hookshot/previews-demo",
    }
    answer = httpx.post(receiver_url, content=body, headers=headers, timeout=30)
    accepted_at = time.time()
    if answer.status_code != 202:
        raise DemoError(f"the receiver answered {answer.status_code}: {answer.text.strip()}")
    image = project.repository.lower()
    tag = f"pr-{DEMO_PR}-{project.head_sha}"
    deadline = time.monotonic() + timeout
    run: dict[str, Any] | None = None
    with httpx.Client(base_url=api_url, timeout=10) as api:
        while time.monotonic() < deadline:
            run = _flow_run_of(api, delivery) or run
            state = (run or {}).get("state") or {}
            url = f"{ui_url}/runs/flow-run/{run['id']}" if run else "(no flow run yet)"
            digest = _manifest_digest(registry, image, tag)
            if digest is not None:
                result = {
                    "image": f"{registry.host}/{image}:{tag}",
                    "digest": digest,
                    "delivery": delivery,
                    "flow run": url,
                }
                if run and run.get("start_time"):
                    started = _timestamp(run["start_time"])
                    result["accepted->running"] = f"{started - accepted_at:.2f}s"
                return result
            if run is not None and state.get("type") in _FAILED_STATES:
                raise DemoFailedError(_failure_report(api, run, url))
            if run is not None and state.get("type") == "COMPLETED":
                # the push comes before the run completes: a completed run without the image skipped it
                raise DemoFailedError(
                    f"the demo's flow run completed without pushing {image}:{tag}: "
                    f"{state.get('message') or 'no message'}\nflow run: {url}"
                )
            time.sleep(0.5)
    where = (
        f"flow run {run['name']} is {(run.get('state') or {}).get('name')}" if run else "no flow run started"
    )
    raise DemoError(f"no image {image}:{tag} after {timeout:.0f}s ({where}); see the Prefect UI at {ui_url}")


def _flow_run_of(api: httpx.Client, delivery: str) -> dict[str, Any] | None:
    """The newest ``preview-image`` flow run started for ``delivery`` (its ``delivery`` parameter)."""
    resp = api.post(
        "/flow_runs/filter",
        json={
            "deployments": {"name": {"any_": ["preview-image"]}},
            "sort": "EXPECTED_START_TIME_DESC",
            "limit": 20,
        },
    )
    if resp.status_code != 200:
        return None
    runs: list[dict[str, Any]] = resp.json()
    return next((r for r in runs if (r.get("parameters") or {}).get("delivery") == delivery), None)


def _failure_report(api: httpx.Client, run: dict[str, Any], url: str) -> str:
    """Which task failed and its error (else the run's own state message), with the run's URL."""
    state = run.get("state") or {}
    resp = api.post(
        "/task_runs/filter",
        json={
            "flow_runs": {"id": {"any_": [run["id"]]}},
            "task_runs": {"state": {"type": {"any_": ["FAILED", "CRASHED"]}}},
            "sort": "EXPECTED_START_TIME_DESC",
        },
    )
    failed: list[dict[str, Any]] = resp.json() if resp.status_code == 200 else []
    verb = str(state.get("name") or state.get("type") or "failed").lower()
    if failed:
        task_state = failed[0].get("state") or {}
        message = str(task_state.get("message") or "no message")
        message = message.removeprefix("Task run encountered an exception ")
        task = re.sub(r"-[0-9a-f]{3}$", "", str(failed[0]["name"]))  # task runs are named <task>-<3 hex>
        return f"the demo's flow run {verb} in task {task}: {message}\nflow run: {url}"
    message = str(state.get("message") or "no message")
    return f"the demo's flow run {verb}: {message}\nflow run: {url}"


def _manifest_digest(registry: DemoRegistry, image: str, tag: str) -> str | None:
    resp = httpx.head(
        f"http://{registry.host}/v2/{image}/manifests/{tag}",
        auth=(registry.username, registry.password),
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
        timeout=5,
    )
    return resp.headers.get("Docker-Content-Digest", "?") if resp.status_code == 200 else None


def _timestamp(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
