"""``previews up --production`` end to end: PostgreSQL, Redis, two API servers behind HAProxy, Docker workers.

The stack is the real command, started once for the module as a subprocess. A burst of signed
``pull_request`` deliveries over many PRs (1-6 pushes each, shuffled across PRs, within seconds) must end with
one image per PR at its final head, every superseded run Cancelled, one flow run per delivery and the outbox
fully delivered; the same holds when one API server process and one worker are killed with SIGKILL mid-burst.
The last test sends SIGTERM and checks that nothing of the stack is left.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from previews.ingress.outbox import Outbox
from previews.local import processes
from tests.support.burst import (
    FINAL,
    Push,
    failed_actions,
    finals,
    peak_overlap,
    plan_burst,
    running_intervals,
    runs_of,
    save_blocks,
    send,
    states_of,
    wait_all_final,
)
from tests.support.git_http import GitHttpServer, run_git_http
from tests.support.sample import SampleProject, make_sample
from tests.support.services import BASE_IMAGE, Registry, free_port
from tests.support.webhooks import SECRET

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("base_image")]

ROOT = Path(__file__).resolve().parents[2]
GIT_TOKEN = "ghp_production-git-token-must-not-leak-0123"
PRS, DELIVERIES, POOL_LIMIT = 30, 100, 4


@dataclass
class Production:
    """The running ``previews up --production`` process and where its parts are."""

    proc: subprocess.Popen[str]
    state: Path
    api: str
    receiver: str
    servers: tuple[int, ...]
    output: list[str]

    @property
    def outbox(self) -> Path:
        return self.state / "production" / "outbox.sqlite3"

    def pid_of(self, *needles: str) -> int:
        """The PID of the stack's process whose command line contains every needle (found in its tree)."""
        for pid in processes.descendants(self.proc.pid):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
            except OSError:
                continue
            # Match each needle within one argument, paths by their last part: a checkout whose path holds
            # "previews" (e.g. /tmp/x/previews/.venv/bin/python) must not make every process match.
            words = [arg.rsplit("/", 1)[-1] for arg in argv if arg]
            if all(any(needle in word for word in words) for needle in needles):
                return pid
        raise AssertionError(f"no process of the stack runs {needles}")


def _read_until_ready(proc: subprocess.Popen[str], timeout: float) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line:
            lines.append(line.rstrip())
            if line.startswith("Press Ctrl-C"):
                return lines
            continue
        assert proc.poll() is None, "previews up --production exited:\n" + "\n".join(lines)
        time.sleep(0.2)
    raise AssertionError("previews up --production was not ready in time:\n" + "\n".join(lines))


@pytest.fixture(scope="module")
def production() -> Iterator[Production]:
    """``previews up --production`` on free ports, in a state directory PostgreSQL's user can reach."""
    state = Path(tempfile.mkdtemp(prefix="previews-production-"))
    state.chmod(0o755)
    api_port, receiver_port = free_port(), free_port()
    env = {**os.environ, "PREVIEWS_WEBHOOK_SECRET": SECRET}
    argv = [str(Path(sys.executable).with_name("previews")), "up", "--production", "--state-dir", str(state)]
    argv += ["--prefect-port", str(api_port), "--port", str(receiver_port), "--pool-limit", str(POOL_LIMIT)]
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        lines = _read_until_ready(proc, timeout=1500)
        servers = re.search(r"HAProxy over ports (\d+), (\d+)", "\n".join(lines))
        assert servers is not None, lines
        yield Production(
            proc=proc,
            state=state,
            api=f"http://127.0.0.1:{api_port}/api",
            receiver=f"http://127.0.0.1:{receiver_port}/webhooks/github",
            servers=(int(servers[1]), int(servers[2])),
            output=lines,
        )
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                processes.signal_tree([proc.pid, *processes.descendants(proc.pid)], signal.SIGKILL)
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        subprocess.run(["rm", "-rf", str(state)], check=False)


@pytest.fixture(scope="module", autouse=True)
def pushed_images(registry: Registry, docker_client: docker.DockerClient) -> Iterator[None]:
    """The flows build on the host engine: remove the images this module's runs left there."""
    yield
    for image in docker_client.images.list():
        for ref in image.tags:
            if ref.startswith(f"{registry.host}/") and ref.split("/")[1].startswith(("burst-", "crash-")):
                with contextlib.suppress(docker.errors.APIError):
                    docker_client.images.remove(ref, force=True)


@pytest.fixture(scope="module")
def git_server(remotes_root: Path) -> Iterator[GitHttpServer]:
    with run_git_http(remotes_root, GIT_TOKEN) as server:
        yield server


def _post(api: str, path: str, body: dict[str, Any]) -> Any:
    response = httpx.post(f"{api}{path}", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def configure(
    production: Production, registry: Registry, git_server: GitHttpServer, sample: SampleProject
) -> None:
    """The ``previews`` blocks on the production stack's API."""
    save_blocks(production.api, registry, git_server.url_template(), GIT_TOKEN, sample)


def check_burst(
    production: Production,
    registry: Registry,
    sample: SampleProject,
    pushes: list[Push],
    runs: list[dict[str, Any]],
) -> None:
    """The burst's promises: one run per delivery, finals built and pushed, the rest Cancelled, nothing lost."""
    final = finals(pushes)
    by_delivery = {r["parameters"]["delivery"]: r for r in runs}
    assert sorted(by_delivery) == sorted(p.delivery for p in pushes), (
        f"a delivery has no run, or several; failed automation actions: {failed_actions(production.api)}"
    )
    assert len(runs) == len(pushes)
    wrong = [
        (
            p.pr,
            p.sha[:7],
            by_delivery[p.delivery]["state"]["name"],
            by_delivery[p.delivery]["state"]["message"],
        )
        for p in pushes
        if by_delivery[p.delivery]["state"]["type"] != ("COMPLETED" if final[p.pr] == p.sha else "CANCELLED")
    ]
    assert not wrong, f"runs in the wrong final state (final heads Completed, the rest Cancelled): {wrong}"
    image = sample.app.repository.lower()
    assert sorted(registry.tags(image)) == sorted(f"pr-{pr}-{sha}" for pr, sha in final.items())

    with Outbox(production.outbox) as outbox:
        entries = [e for e in outbox.entries() if e.delivery in by_delivery]
    assert len(entries) == len(pushes)
    assert {e.state for e in entries} == {"delivered"}, [(e.delivery, e.state, e.last_error) for e in entries]
    # The pool's polled limit alone let two workers polling together start 5 runs with a limit of 4; the
    # stack's shared deployment limit (a slot taken atomically on the way to Pending) makes it a hard cap.
    peak = peak_overlap(running_intervals(production.api, runs))
    assert 1 <= peak <= POOL_LIMIT, f"{peak} runs were Running at once with a pool limit of {POOL_LIMIT}"
    print(
        f"\nat most {peak} runs Running at once; retried after a crash: {sum(r['run_count'] > 1 for r in runs)}"
    )


def test_stack_runs_prefect_on_postgresql_and_redis_behind_haproxy(production: Production) -> None:
    for port in production.servers:
        assert httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=10).json() is True
    # The deployments live in the stack's PostgreSQL; no server made a SQLite database.
    password = (production.state / "production" / "postgres-password").read_text().strip()
    port = re.search(r"PostgreSQL on 127.0.0.1:(\d+)", "\n".join(production.output))
    assert port is not None
    rows = subprocess.run(
        [
            "/usr/lib/postgresql/15/bin/psql",
            "-h",
            "127.0.0.1",
            "-p",
            port[1],
            "-U",
            "prefect",
            "-d",
            "prefect",
            "-tAc",
            "SELECT name FROM deployment ORDER BY name",
        ],
        env={**os.environ, "PGPASSWORD": password},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert {"preview-image", "preview-teardown", "preview-cleanup"} <= set(rows)
    assert not list((production.state / "production").rglob("*.db"))
    pool = httpx.get(f"{production.api}/work_pools/previews", timeout=10).json()
    assert pool["type"] == "docker"
    assert pool["concurrency_limit"] == POOL_LIMIT
    # The hard cap: one global concurrency limit of POOL_LIMIT slots shared by the event-driven deployments.
    cap = httpx.get(f"{production.api}/v2/concurrency_limits/previews-pool", timeout=10).json()
    assert (cap["limit"], cap["active"]) == (POOL_LIMIT, True)
    for name in ("preview-image/preview-image", "preview-teardown/preview-teardown"):
        deployment = httpx.get(f"{production.api}/deployments/name/{name}", timeout=10).json()
        assert deployment["global_concurrency_limit"]["id"] == cap["id"], name
    workers = _post(production.api, "/work_pools/previews/workers/filter", {})
    assert len([w for w in workers if w["status"] == "ONLINE"]) >= 2
    automations = _post(production.api, "/automations/filter", {})
    assert "previews-retry-crashed-once" in {a["name"] for a in automations}
    # One services process; the API servers run none (`--no-services`).
    production.pid_of("server", "services", "start")
    for port in production.servers:
        production.pid_of("server", "start", "--port", str(port), "--no-services")
    # The passwords stay in the server processes and their 0600 files: the workers copy their settings into
    # every flow-run container, and the receiver has no business with them.
    for name in ("--pool previews", "previews serve"):
        environ = Path(f"/proc/{production.pid_of(*name.split())}/environ").read_bytes()
        assert password.encode() not in environ
    assert oct((production.state / "production" / "postgres-password").stat().st_mode & 0o777) == "0o600"
    assert all(password not in line for line in production.output)


def kill_one_server_and_one_worker(production: Production, repository: str) -> None:
    """Once runs are being started and run, SIGKILL one API server process and one worker (and their trees)."""
    deadline = time.monotonic() + 180
    while not any(r["state"]["type"] in ("PENDING", "RUNNING") for r in runs_of(production.api, repository)):
        assert time.monotonic() < deadline, "no run was started within 180 s"
        time.sleep(0.5)
    for pid in (
        production.pid_of("server", "start", "--port", str(production.servers[0])),
        production.pid_of("worker", "start", "-worker-1"),
    ):
        processes.signal_tree([pid, *processes.descendants(pid)], signal.SIGKILL)


def _burst(
    production: Production,
    registry: Registry,
    git_server: GitHttpServer,
    remotes_root: Path,
    *,
    seed: int,
    kill_midway: bool,
) -> None:
    sample = make_sample(remotes_root, f"Burst-{uuid.uuid4().hex[:8]}")
    base = sample.head_sha
    configure(production, registry, git_server, sample)
    pushes = plan_burst(sample, prs=PRS, deliveries=DELIVERIES, seed=seed)
    rng = random.Random(seed)
    started = time.monotonic()
    for index, push in enumerate(pushes):
        send(production.receiver, SECRET, sample.app.repository, push, base)
        time.sleep(rng.uniform(0.0, 0.25))
        if kill_midway and index == len(pushes) // 2:
            kill_one_server_and_one_worker(production, sample.app.repository)
    print(f"\n{len(pushes)} deliveries over {PRS} PRs sent in {time.monotonic() - started:.1f} s")
    runs = wait_all_final(production.api, sample.app.repository, len(pushes), timeout=1800, settle=300)
    print(f"all {len(runs)} runs final {time.monotonic() - started:.1f} s after the first delivery")
    check_burst(production, registry, sample, pushes, runs)


def test_a_burst_of_pushes_builds_each_final_head_once(
    production: Production, registry: Registry, git_server: GitHttpServer, remotes_root: Path
) -> None:
    _burst(production, registry, git_server, remotes_root, seed=16, kill_midway=False)


def test_killing_an_api_server_and_a_worker_mid_burst_loses_nothing(
    production: Production, registry: Registry, git_server: GitHttpServer, remotes_root: Path
) -> None:
    _burst(production, registry, git_server, remotes_root, seed=61, kill_midway=True)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{production.servers[0]}/api/health", timeout=5)


def test_a_run_whose_container_dies_is_retried_once_by_the_automation(
    production: Production,
    registry: Registry,
    git_server: GitHttpServer,
    remotes_root: Path,
    docker_client: docker.DockerClient,
) -> None:
    sample = make_sample(remotes_root, f"Crash-{uuid.uuid4().hex[:8]}")
    slow = f"FROM {BASE_IMAGE}\nRUN echo {uuid.uuid4().hex} && sleep 12\n"  # never a cached layer
    head = sample.app.commit({"Dockerfile": slow}, "a slow build")
    configure(production, registry, git_server, sample)
    send(
        production.receiver,
        SECRET,
        sample.app.repository,
        Push(300, head, str(uuid.uuid4())),
        sample.head_sha,
    )
    deadline = time.monotonic() + 300
    run: dict[str, Any] = {}
    while not (run.get("infrastructure_pid") and run["state"]["type"] == "RUNNING"):
        assert time.monotonic() < deadline, f"the run did not start: {run.get('state')}"
        time.sleep(0.5)
        run = next(iter(runs_of(production.api, sample.app.repository)), {})
    time.sleep(3)  # inside the flow now
    docker_client.containers.get(run["infrastructure_pid"].rsplit(":", 1)[1]).kill()

    # Crashed is final too: wait for the retry's end (the automation re-schedules the run within seconds).
    deadline = time.monotonic() + 400
    (ended,) = runs_of(production.api, sample.app.repository)
    while ended["run_count"] < 2 or ended["state"]["type"] not in FINAL:
        names = [s["name"] for s in states_of(production.api, ended["id"])]
        assert time.monotonic() < deadline, f"the crashed run was not retried to its end: {names}"
        time.sleep(1)
        (ended,) = runs_of(production.api, sample.app.repository)
    names = [s["name"] for s in states_of(production.api, ended["id"])]
    assert ended["state"]["type"] == "COMPLETED", names
    assert ended["run_count"] == 2
    assert (
        names.index("Crashed") < names.index("AwaitingRetry") < len(names) - 1 - names[::-1].index("Running")
    )
    assert registry.tags(sample.app.repository.lower()) == [f"pr-300-{head}"]


def test_sigterm_stops_every_part_of_the_stack(production: Production) -> None:
    tree = [production.proc.pid, *processes.descendants(production.proc.pid)]
    assert len(tree) >= 8
    started = time.monotonic()
    production.proc.send_signal(signal.SIGTERM)
    assert production.proc.wait(timeout=90) == 0
    print(f"\nstopped in {time.monotonic() - started:.1f} s")
    assert not [pid for pid in tree if processes.running(pid)]
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{production.api}/health", timeout=5)
