"""Production path end to end: the runner image, `prefect deploy --all` from prefect.yaml, a real Docker worker.

A real signed ``pull_request`` delivery through the receiver (outbox -> POST /api/events) fires the deployment trigger; the worker
starts a flow-run container from the runner image; the flow checks out the PR over git smart-HTTP, builds the
PR image on the host engine through the mounted socket and pushes ``pr-<N>-<sha>`` to the registry.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.states import Cancelling
from pydantic import SecretStr

from blocks import PreviewsConfig, PreviewsCredentials
from previews.settings import Settings
from tests.support.git_http import GitHttpServer, run_git_http
from tests.support.sample import make_sample
from tests.support.services import BASE_IMAGE, Registry, stop
from tests.support.webhooks import SECRET, headers, run_receiver, synchronize_payload

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("base_image")]

ROOT = Path(__file__).resolve().parents[2]
POOL = "previews"  # the pool prefect.yaml names
GIT_TOKEN = "ghp_e2e-git-token-must-not-leak-0123456789"
PREFECT = str(Path(sys.executable).with_name("prefect"))


def prefect_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    """Run the prefect CLI from the repository root; return stdout, fail with its output otherwise."""
    done = subprocess.run(
        [PREFECT, "--no-prompt", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, (
        f"prefect {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done.stdout


@pytest.fixture(scope="module")
def runner_image(docker_client: docker.DockerClient) -> str:
    """Build (or reuse) the runner image with scripts/runner-image; print its size."""
    started = time.monotonic()
    done = subprocess.run(
        [str(ROOT / "scripts" / "runner-image")],
        cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    ref = done.stdout.strip().splitlines()[-1]
    size = docker_client.images.get(ref).attrs["Size"]
    print(f"\nrunner image {ref}: {size / 1e6:.0f} MB, ready in {time.monotonic() - started:.1f} s")
    return ref


@pytest.fixture(scope="module")
def git_server(remotes_root: Path) -> Iterator[GitHttpServer]:
    with run_git_http(remotes_root, GIT_TOKEN) as server:
        yield server


@dataclass
class Worker:
    """A running `prefect worker start --type docker` and its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def submitted(self) -> set[str]:
        """Ids of the flow runs this worker started, from its log.

        Workers race for a scheduled run; the server lets one move it to Pending and aborts the others.
        """
        text = self.log.read_text()
        tried = set(re.findall(r"submitting flow run '([0-9a-f-]{36})'", text))
        aborted = set(re.findall(r"Aborted submission of flow run '([0-9a-f-]{36})'", text))
        return tried - aborted


@pytest.fixture
def start_worker(prefect_server: str, session_dir: Path) -> Iterator[Callable[..., Worker]]:
    """Start real Docker workers polling every second; each is stopped by its PID after the test."""
    started: list[Worker] = []

    def start(limit: int | None = None) -> Worker:
        home = session_dir / f"worker-{uuid.uuid4().hex[:8]}"
        home.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREVIEWS_")}
        env.update(
            PREFECT_HOME=str(home),
            PREFECT_API_URL=prefect_server,
            PREFECT_WORKER_QUERY_SECONDS="1",
            PREFECT_WORKER_HEARTBEAT_SECONDS="5",
        )
        log = home / "worker.log"
        with log.open("wb") as out:
            # SIGINT must not be ignored, or the worker's first SIGTERM (turned into SIGINT) does nothing.
            proc = subprocess.Popen(
                [
                    *(PREFECT, "worker", "start", "--pool", POOL, "--type", "docker", "--name", home.name),
                    *("--install-policy", "never", "--no-create-pool-if-not-found"),
                    *(("--limit", str(limit)) if limit else ()),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        started.append(Worker(home.name, proc, log))
        return started[-1]

    try:
        yield start
    finally:
        for worker in started:
            stop(worker.proc, timeout=20)
            print(f"\n{worker.name} log tail:\n{worker.log.read_text()[-1500:]}")


@pytest.fixture(scope="module")
def deployed(
    prefect_server: str, runner_image: str, registry: Registry, git_server: GitHttpServer
) -> Iterator[dict[str, Any]]:
    """The pool, the blocks and `prefect deploy --all`; the deployments and their automations are removed after."""
    prefect_cli("work-pool", "create", POOL, "--type", "docker", "--overwrite")
    prefect_cli("block", "register", "-m", "blocks")
    PreviewsCredentials(
        registry_username=registry.username,
        registry_token=SecretStr(registry.password),
        git_token=SecretStr(GIT_TOKEN),
    ).save("previews", overwrite=True)
    started = time.monotonic()
    output = prefect_cli("deploy", "--all")
    print(f"\nprefect deploy --all took {time.monotonic() - started:.1f} s")
    inspected = "".join(prefect_cli("deployment", "inspect", name) for name in _deployment_names())
    deployment = asyncio.run(_read_deployment("preview-image/preview-image"))
    try:
        yield {"inspect": inspected + output, "deployment": deployment}
    finally:
        asyncio.run(_delete_deployments(prefect_server))


async def _read_deployment(name: str) -> Any:
    async with get_client() as client:
        return await client.read_deployment_by_name(name)


def _deployment_names() -> list[str]:
    """``<flow>/<deployment>`` of every deployment in prefect.yaml (flow names are the functions' names)."""
    specs = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    return [f"{s['entrypoint'].rsplit(':', 1)[1].replace('_', '-')}/{s['name']}" for s in specs]


async def _delete_deployments(api: str) -> None:
    async with get_client() as client:
        for name in _deployment_names():
            deployment = await client.read_deployment_by_name(name)
            await client.delete_deployment(deployment.id)
            # A deleted deployment leaves its trigger automation behind (measured on 3.9.1).
            httpx.delete(f"{api}/automations/owned-by/prefect.deployment.{deployment.id}", timeout=10)


def emit_pull_request(api: str, repository: str, number: int, head: str, base: str) -> float:
    """Send a signed real ``synchronize`` delivery through the receiver; return the wall time before sending.

    Returns once the receiver's forwarder has handed the event to Prefect (its outbox has nothing pending).
    """
    payload = synchronize_payload(repository=repository, number=number)
    payload["pull_request"]["head"]["sha"] = head
    payload["pull_request"]["base"]["sha"] = base
    body = json.dumps(payload).encode()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            webhook_secret=SecretStr(SECRET),
            outbox_path=Path(tmp) / "outbox.sqlite3",
            prefect_api_url=api,
            allowed_repositories=repository,
        )
        with run_receiver(settings) as receiver:
            sent = time.time()
            resp = httpx.post(receiver.webhook_url, content=body, headers=headers(body), timeout=10)
            assert resp.status_code == 202, resp.text
            assert resp.json()["status"] == "accepted"
            deadline = time.monotonic() + 30
            while receiver.outbox.stats().pending:
                assert time.monotonic() < deadline, "the receiver did not forward the delivery to Prefect"
                time.sleep(0.05)
    return sent


async def _runs_of(deployment_id: uuid.UUID) -> list[FlowRun]:
    async with get_client() as client:
        return await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        )


async def _running_at(flow_run_id: uuid.UUID) -> float | None:
    async with get_client() as client:
        states = await client.read_flow_run_states(flow_run_id)
    running = [s.timestamp for s in states if s.type is StateType.RUNNING]
    return running[0].timestamp() if running else None


def runs_for(deployment_id: uuid.UUID, repository: str) -> list[FlowRun]:
    return [r for r in asyncio.run(_runs_of(deployment_id)) if r.parameters.get("repository") == repository]


def wait_for_runs(
    deployment_id: uuid.UUID, repository: str, *, count: int, timeout: float, final: bool = True
) -> list[FlowRun]:
    """Wait until ``count`` runs for ``repository`` exist (and, with ``final``, all ended)."""
    deadline = time.monotonic() + timeout
    runs: list[FlowRun] = []
    while time.monotonic() < deadline:
        runs = runs_for(deployment_id, repository)
        states = [r.state for r in runs]
        if len(runs) >= count and (not final or all(s is not None and s.is_final() for s in states)):
            assert len(runs) == count, [(r.name, r.state_name) for r in runs]
            return runs
        time.sleep(1)
    raise AssertionError(
        f"no {count} final flow runs within {timeout}s: {[(r.name, r.state_name) for r in runs]}\n"
        f"{diagnostics()}"
    )


def diagnostics() -> str:
    """The automations and the recent events' names and payloads, to tell why a trigger did not fire."""
    api = os.environ["PREFECT_API_URL"]
    automations = httpx.post(f"{api}/automations/filter", json={}, timeout=10).json()
    events = httpx.post(f"{api}/events/filter", json={"limit": 30}, timeout=10).json()
    names = [a["name"] for a in automations]
    recent = [
        (e["event"], e.get("payload"))
        for e in events.get("events", [])
        if e["event"].startswith(("github.", "prefect.automation.action"))
    ]
    return f"automations: {names}\nrecent events: {recent}"


def wait_until_removed(client: docker.DockerClient, container_id: str, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client.containers.get(container_id)
        except docker.errors.NotFound:
            return
        time.sleep(0.5)
    raise AssertionError(f"container {container_id[:12]} still exists after {timeout}s")


def test_pull_request_event_runs_in_a_container_and_pushes_the_pr_tag(
    deployed: dict[str, Any],
    start_worker: Callable[..., Worker],
    runner_image: str,
    registry: Registry,
    git_server: GitHttpServer,
    remotes_root: Path,
    prefect_server: str,
    docker_client: docker.DockerClient,
) -> None:
    sample = make_sample(remotes_root, f"E2E-{uuid.uuid4().hex[:8]}")
    base = sample.head_sha
    head = sample.app.commit({"src/main.txt": "app main v2\n"}, "app v2")
    PreviewsConfig(
        registry=registry.host,
        git_url_template=git_server.url_template(),
        siblings=sample.siblings,
        build_context="..",
        dockerfile="Dockerfile",
    ).save("previews", overwrite=True)

    # Nothing secret was stored in the deployment, nor printed by the deploy.
    deployment = deployed["deployment"]
    assert registry.password not in deployed["inspect"]
    assert GIT_TOKEN not in deployed["inspect"]
    # The deploy's build step ran scripts/runner-image again: same repository, tag of the current sources.
    image_ref = deployment.job_variables["image"]
    assert image_ref.rsplit(":", 1)[0] == runner_image.rsplit(":", 1)[0]
    assert deployment.job_variables["volumes"] == ["/var/run/docker.sock:/var/run/docker.sock"]

    worker = start_worker()
    started_at = time.time()
    sent = emit_pull_request(prefect_server, sample.app.repository, 12, head, base)
    (run,) = wait_for_runs(deployment.id, sample.app.repository, count=1, timeout=180)
    assert run.state is not None
    assert run.state.is_completed(), f"{run.state_name}: {run.state.message}"
    running = asyncio.run(_running_at(run.id))
    assert running is not None
    print(f"\nevent -> flow run Running on the Docker pool: {running - sent:.2f} s")

    image = sample.app.repository.lower()
    tag = f"pr-12-{head}"
    assert registry.tags(image) == [tag]
    labels = registry.image_config(image, tag)["config"]["Labels"]  # type: ignore[index]
    assert labels["org.opencontainers.image.revision"] == head
    docker_client.images.remove(f"{registry.host}/{image}:{tag}", force=True)

    # The run executed in a container of the runner image, which is gone afterwards (auto_remove).
    assert run.infrastructure_pid is not None
    container_id = run.infrastructure_pid.rsplit(":", 1)[1]
    wait_until_removed(docker_client, container_id, timeout=60)
    events = docker_client.events(
        since=int(started_at) - 1,
        until=int(time.time()) + 1,
        filters={"type": "container", "label": f"io.prefect.flow-run-id={run.id}"},
        decode=True,
    )
    seen = [(e["Action"], e["id"], e["Actor"]["Attributes"]["image"]) for e in events]
    assert ("start", container_id, image_ref) in seen, seen
    assert any(action == "destroy" for action, _, _ in seen), seen
    assert worker.submitted() == {str(run.id)}
    worker_log = worker.log.read_text()  # the container's output is streamed into it
    assert "Pushed" in worker_log
    assert registry.password not in worker_log
    assert GIT_TOKEN not in worker_log
    assert git_server.requests, "the flow did not fetch over git HTTP"
    assert all(r.authorized for r in git_server.requests if r.status == 200)


def configure(registry: Registry, git_server: GitHttpServer, siblings: str) -> None:
    PreviewsConfig(
        registry=registry.host,
        git_url_template=git_server.url_template(),
        siblings=siblings,
        build_context="..",
        dockerfile="Dockerfile",
    ).save("previews", overwrite=True)


def test_cancelling_a_run_removes_its_container(
    deployed: dict[str, Any],
    start_worker: Callable[..., Worker],
    registry: Registry,
    git_server: GitHttpServer,
    remotes_root: Path,
    prefect_server: str,
    docker_client: docker.DockerClient,
) -> None:
    sample = make_sample(remotes_root, f"E2E-{uuid.uuid4().hex[:8]}")
    slow = f"FROM {BASE_IMAGE}\nRUN sleep 25\n"
    head = sample.app.commit({"Dockerfile": slow, "src/main.txt": "slow\n"}, "slow build")
    configure(registry, git_server, sample.siblings)
    deployment = deployed["deployment"]
    start_worker()
    emit_pull_request(prefect_server, sample.app.repository, 13, head, sample.head_sha)

    deadline = time.monotonic() + 120
    run: FlowRun | None = None
    while time.monotonic() < deadline:
        runs = runs_for(deployment.id, sample.app.repository)
        if runs and runs[0].state is not None and runs[0].state.is_running() and runs[0].infrastructure_pid:
            run = runs[0]
            break
        time.sleep(0.5)
    assert run is not None, diagnostics()
    assert run.infrastructure_pid is not None
    container_id = run.infrastructure_pid.rsplit(":", 1)[1]
    time.sleep(3)  # inside the build now
    asyncio.run(_cancel(run.id))

    (ended,) = wait_for_runs(deployment.id, sample.app.repository, count=1, timeout=90)
    assert ended.state is not None
    assert ended.state.is_cancelled(), ended.state_name
    wait_until_removed(docker_client, container_id, timeout=60)
    assert registry.tags(sample.app.repository.lower()) == []


async def _cancel(flow_run_id: uuid.UUID) -> None:
    async with get_client() as client:
        await client.set_flow_run_state(flow_run_id, Cancelling(message="cancelled by the e2e test"))


def test_two_workers_share_runs_without_running_one_twice(
    deployed: dict[str, Any],
    start_worker: Callable[..., Worker],
    registry: Registry,
    git_server: GitHttpServer,
    remotes_root: Path,
    prefect_server: str,
    docker_client: docker.DockerClient,
) -> None:
    sample = make_sample(remotes_root, f"E2E-{uuid.uuid4().hex[:8]}")
    configure(registry, git_server, sample.siblings)
    deployment = deployed["deployment"]
    workers = [start_worker(limit=2), start_worker(limit=2)]  # 4 runs: neither can take them all
    time.sleep(3)  # both polling
    prs = range(21, 25)
    started_at = time.time()
    for pr in prs:
        emit_pull_request(prefect_server, sample.app.repository, pr, sample.head_sha, sample.head_sha)

    runs = wait_for_runs(deployment.id, sample.app.repository, count=len(prs), timeout=300)
    assert all(r.state is not None and r.state.is_completed() for r in runs), [r.state_name for r in runs]
    image = sample.app.repository.lower()
    assert registry.tags(image) == sorted(f"pr-{pr}-{sample.head_sha}" for pr in prs)

    assert all(r.run_count == 1 for r in runs), [(r.name, r.run_count) for r in runs]
    events = docker_client.events(
        since=int(started_at) - 1,
        until=int(time.time()) + 1,
        filters={"type": "container", "event": "create", "label": "io.prefect.flow-run-id"},
        decode=True,
    )
    ours = {str(r.id) for r in runs}  # the engine may be shared: other flow runs' containers are not ours
    created = [e["Actor"]["Attributes"]["io.prefect.flow-run-id"] for e in events]
    assert sorted(c for c in created if c in ours) == sorted(ours)  # one container per run, none twice

    first, second = (w.submitted() for w in workers)
    assert first.isdisjoint(second)
    assert first, "the first worker ran nothing"
    assert second, "the second worker ran nothing"
    assert first | second == {str(r.id) for r in runs}
    print(f"\nruns per worker: {len(first)} and {len(second)}")
    for pr in prs:
        docker_client.images.remove(f"{registry.host}/{image}:pr-{pr}-{sample.head_sha}", force=True)
