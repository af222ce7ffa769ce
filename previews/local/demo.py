"""The pieces of ``previews up --demo``: a throwaway registry, a sample repository, one signed delivery."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
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

import bcrypt
import git
import httpx

from previews.errors import PreviewsError

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


@contextmanager
def run_registry(workdir: Path) -> Iterator[DemoRegistry]:
    """Start Debian's ``docker-registry`` on 127.0.0.1 with a generated password; stop it by PID after."""
    binary = shutil.which("docker-registry") or (
        "/usr/bin/docker-registry" if Path("/usr/bin/docker-registry").exists() else None
    )
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
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
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
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def make_project(root: Path) -> DemoProject:
    """Create the demo repository (a bare remote) with a base commit and a PR head commit."""
    if root.exists():
        shutil.rmtree(root)
    bare = root / f"{DEMO_REPOSITORY}.git"
    bare.parent.mkdir(parents=True)
    git.Repo.init(bare, bare=True, initial_branch="main")
    work = git.Repo.init(root / "_work", initial_branch="main")
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
    """Send one signed delivery, wait for ``pr-<N>-<sha>`` in the registry, and describe what happened."""
    body = delivery_body(project)
    delivery = str(uuid.uuid4())
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
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
    auth = (registry.username, registry.password)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resp = httpx.head(
            f"http://{registry.host}/v2/{image}/manifests/{tag}",
            auth=auth,
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
            timeout=5,
        )
        if resp.status_code == 200:
            run = _flow_run(api_url, f"pr-{DEMO_PR}-{project.head_sha[:7]}")
            result = {
                "image": f"{registry.host}/{image}:{tag}",
                "digest": resp.headers.get("Docker-Content-Digest", "?"),
                "delivery": delivery,
                "flow run": f"{ui_url}/runs/flow-run/{run['id']}" if run else "(not found)",
            }
            if run and run.get("start_time"):
                started = _timestamp(run["start_time"])
                result["accepted->running"] = f"{started - accepted_at:.2f}s"
            return result
        time.sleep(0.5)
    raise DemoError(f"no image {image}:{tag} after {timeout:.0f}s; see the flow run in the Prefect UI")


def _flow_run(api_url: str, name: str) -> dict[str, str] | None:
    resp = httpx.post(
        f"{api_url}/flow_runs/filter", json={"flow_runs": {"name": {"any_": [name]}}, "limit": 1}, timeout=10
    )
    runs = resp.json() if resp.status_code == 200 else []
    return runs[0] if runs else None


def _timestamp(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
