"""Reconcile recovers the runs a dead worker stranded: a real Prefect server, runs put in Pending the way a worker
claims them (a proposed, not forced, Pending) with no container ever created, as when the worker is SIGKILLed
right after. The preview-image deployment is registered but not served (a rescheduled run stays Scheduled);
the preview-teardown deployment is served by a real runner subprocess (a rescheduled run runs to the end)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.states import Cancelled, Pending, Scheduled
from prefect_docker.worker import DockerWorker
from pydantic import SecretStr

from flows.preview_image import preview_image
from flows.preview_reconcile import ReconcileReport, preview_reconcile
from previews.settings import Settings
from previews.wiring import Wiring
from previews_cli.app import main
from tests.conftest import INFRA
from tests.support.fake_github import FakeGitHub
from tests.support.served import serve_preview_image, states_of, wait_final
from tests.support.services import stop

pytestmark = pytest.mark.usefixtures("prefect_server")
THRESHOLD = 1.0  # seconds; production's default is 300
MESSAGE = "with no container: its worker died before starting it; rescheduled by reconcile"


@pytest.fixture(scope="module")
def image_deployment(prefect_server: str) -> Iterator[str]:
    """preview-image registered under a fresh name, not served; it and its runs are deleted afterwards."""
    name = f"stranded-{uuid.uuid4().hex[:8]}"
    deployment_id = preview_image.to_deployment(name=name).apply()
    yield f"preview-image/{name}"
    with get_client(sync_client=True) as client:
        client.delete_deployment(deployment_id)


def strand(deployment: str, parameters: dict[str, Any], *, container: str | None = None) -> uuid.UUID:
    """A run of ``deployment`` claimed the way a worker claims it (Pending proposed, not forced); with
    ``container``, recorded as a worker does once the container started. Queued an hour ahead, so no runner
    takes it before the claim."""
    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(deployment)
        later = Scheduled(scheduled_time=datetime.now(UTC) + timedelta(hours=1))
        run = client.create_flow_run_from_deployment(dep.id, parameters=parameters, state=later)
        assert client.set_flow_run_state(run.id, Pending()).status.value == "ACCEPT"
        if container is not None:
            client.update_flow_run(run.id, infrastructure_pid=container)
    return run.id


def read(run_id: uuid.UUID) -> FlowRun:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)


def reconcile(values: Settings, *, dry_run: bool) -> tuple[bool, ReconcileReport]:
    state = preview_reconcile.over(lambda: Wiring(values))(dry_run=dry_run, return_state=True)
    report = state.result(raise_on_failure=False)
    assert isinstance(report, ReconcileReport), report
    assert state.message == report.summary
    return state.is_completed(), report


def rows(report: ReconcileReport, *run_ids: uuid.UUID) -> list[dict[str, Any]]:
    """The report's stranded rows for ``run_ids`` (the session's server may hold other tests' runs)."""
    wanted = {str(r) for r in run_ids}
    return [s for s in report.stranded if s["run_id"] in wanted]


def image_params() -> dict[str, Any]:
    return {"repository": f"acme/stranded-{uuid.uuid4().hex[:6]}", "pr_number": 3, "head_sha": "c" * 40}


def test_a_run_its_worker_left_pending_is_rescheduled_and_a_slow_start_is_not(
    github: FakeGitHub, image_deployment: str
) -> None:
    repository = f"Acme-{uuid.uuid4().hex[:6]}/app"
    github.add_repo(repository)  # no open PR: the GitHub part decides nothing
    values = Settings(
        github_api_url=github.url,
        github_token=SecretStr(github.token),
        reconcile_repositories=repository,
        reconcile_image_deployment=image_deployment,
        stranded_pending_seconds=THRESHOLD,
    )
    stranded = strand(image_deployment, image_params())
    slow = strand(image_deployment, image_params(), container="host:0123abcd")
    fresh_values = values.model_copy(update={"stranded_pending_seconds": 3600})
    ok, young = reconcile(fresh_values, dry_run=False)  # not Pending long enough yet
    assert ok
    assert rows(young, stranded, slow) == []
    time.sleep(THRESHOLD + 0.5)
    before = read(stranded)
    pending_state = before.state
    assert pending_state is not None

    ok, dry = reconcile(values, dry_run=True)
    assert ok, dry.reason
    (row,) = rows(dry, stranded, slow)
    assert (row["run_id"], row["flow"], row["rescheduled"], row["answer"]) == (
        str(stranded),
        "preview-image",
        False,
        "dry run",
    )
    assert read(stranded).state == pending_state  # a dry run changes nothing
    assert "would reschedule" in dry.summary

    ok, applied = reconcile(values, dry_run=False)
    assert ok, applied.reason
    (row,) = rows(applied, stranded, slow)
    assert (row["run_id"], row["rescheduled"]) == (str(stranded), True)
    assert row["message"].endswith(MESSAGE)
    after = read(stranded)
    assert after.state is not None
    assert (after.state.type, after.state.name) == (StateType.SCHEDULED, "AwaitingRetry")
    assert after.state.message is not None
    assert after.state.message.startswith("Pending for ")
    assert after.state.message.endswith(MESSAGE)
    assert after.created == before.created  # supersede orders runs by creation time
    assert after.parameters["head_sha"] == "c" * 40
    slow_state = read(slow).state
    assert slow_state is not None
    assert slow_state.type == StateType.PENDING

    ok, again = reconcile(values, dry_run=False)
    assert ok
    assert rows(again, stranded, slow) == []  # Scheduled again: nothing left to recover


def test_without_github_settings_stranded_runs_are_still_rescheduled(
    image_deployment: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    first = strand(image_deployment, image_params())
    time.sleep(THRESHOLD + 0.5)
    ok, report = reconcile(Settings(stranded_pending_seconds=THRESHOLD), dry_run=False)
    assert not ok  # as before: a reconcile without repositories or credentials is a configuration error
    assert report.stopped_by == "config"
    assert report.reason is not None
    assert report.reason.startswith("PREVIEWS_RECONCILE_REPOSITORIES: ")
    assert [r["rescheduled"] for r in rows(report, first)] == [True]
    state = read(first).state
    assert state is not None
    assert state.name == "AwaitingRetry"

    # `previews reconcile --apply` with no GitHub settings: the stranded run is rescheduled, exit 2 names why.
    second = strand(image_deployment, image_params())
    time.sleep(THRESHOLD + 0.5)
    monkeypatch.setenv("PREVIEWS_STRANDED_PENDING_SECONDS", str(THRESHOLD))
    monkeypatch.setenv("PREVIEWS_RECONCILE_REPOSITORIES", "acme/app")
    code = main(["reconcile", "--apply", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 2
    assert out["status"] == "stopped"
    assert out["reason"].startswith("PREVIEWS_GITHUB_TOKEN: ")
    assert [(r["run_id"], r["rescheduled"]) for r in out["stranded"] if r["run_id"] == str(second)] == [
        (str(second), True)
    ]
    state = read(second).state
    assert state is not None
    assert state.type == StateType.SCHEDULED


def test_a_stranded_run_gives_back_its_slot_of_a_hard_cap(prefect_server: str) -> None:
    """With a deployment concurrency limit (the production stack's hard cap), a stranded run holds a slot that
    Prefect frees only when its lease expires (5 min by default); rescheduling it frees the slot now."""
    name = f"stranded-capped-{uuid.uuid4().hex[:8]}"
    deployment_id = preview_image.to_deployment(name=name, concurrency_limit=1).apply()
    deployment = f"preview-image/{name}"
    try:
        stranded = strand(deployment, image_params())
        assert active_slots(deployment_id) == 1
        with get_client(sync_client=True) as client:
            later = Scheduled(scheduled_time=datetime.now(UTC) + timedelta(hours=1))
            waiting = client.create_flow_run_from_deployment(
                deployment_id, parameters=image_params(), state=later
            )
            refused = client.set_flow_run_state(waiting.id, Pending())
            assert refused.status.value == "REJECT"
            assert refused.state is not None
            assert refused.state.name == "AwaitingConcurrencySlot"
        time.sleep(THRESHOLD + 0.5)
        _ok, report = reconcile(Settings(stranded_pending_seconds=THRESHOLD), dry_run=False)
        assert [r["rescheduled"] for r in rows(report, stranded)] == [True]
        assert active_slots(deployment_id) == 0
        with get_client(sync_client=True) as client:
            assert client.set_flow_run_state(waiting.id, Pending()).status.value == "ACCEPT"
            client.set_flow_run_state(waiting.id, Cancelled(message="test over"), force=True)
            client.set_flow_run_state(stranded, Cancelled(message="test over"), force=True)
    finally:
        with get_client(sync_client=True) as client:
            client.delete_deployment(deployment_id)


def test_a_run_prefect_refuses_to_move_does_not_keep_the_others_pending(image_deployment: str) -> None:
    """A Pending run holding a slot of a deployment limit deleted since: Prefect answers 500 to any move of
    it. It is reported, and the other stranded run is still rescheduled."""
    name = f"stranded-gone-{uuid.uuid4().hex[:8]}"
    doomed = preview_image.to_deployment(name=name, concurrency_limit=1).apply()
    poisoned = strand(f"preview-image/{name}", image_params())
    with get_client(sync_client=True) as client:
        client.delete_deployment(doomed)
    other = strand(image_deployment, image_params())
    time.sleep(THRESHOLD + 0.5)
    try:
        ok, report = reconcile(Settings(stranded_pending_seconds=THRESHOLD), dry_run=False)
        found = {r["run_id"]: r for r in rows(report, poisoned, other)}
        assert found[str(other)]["rescheduled"] is True
        assert found[str(poisoned)]["rescheduled"] is False  # the run keeps the deleted deployment's id
        assert found[str(poisoned)]["answer"].startswith("not rescheduled: Prefect API ")
        assert found[str(poisoned)]["answer"].endswith(": 500")
        assert not ok  # no GitHub settings: the GitHub part stops (config), as before
        assert report.stopped_by == "config"
    finally:
        with get_client(sync_client=True) as client:
            client.delete_flow_run(poisoned)


def active_slots(deployment_id: uuid.UUID) -> int:
    with get_client(sync_client=True) as client:
        limit = client.read_deployment(deployment_id).global_concurrency_limit
    assert limit is not None
    return limit.active_slots


@pytest.mark.slow
def test_a_rescheduled_teardown_is_picked_up_and_runs_to_the_end(
    github: FakeGitHub, session_dir: Path
) -> None:
    """The served runner takes the rescheduled run like any Scheduled run: one teardown sent, run Completed."""
    env = {
        "PREVIEWS_GITHUB_API_URL": github.url,
        "PREVIEWS_GITHUB_TOKEN": github.token,
        "PREVIEWS_INFRA_REPOSITORY": INFRA,
        "PREVIEWS_RETRY_DELAY": "0.2",
    }
    name = f"stranded-{uuid.uuid4().hex[:8]}"
    repository = f"acme/torn-{uuid.uuid4().hex[:6]}"
    with serve_preview_image(env, log=session_dir / f"{name}.log", name=name, teardown=True):
        run_id = strand(f"preview-teardown/{name}", {"repository": repository, "pr_number": 12})
        time.sleep(THRESHOLD + 0.5)
        _ok, report = reconcile(Settings(stranded_pending_seconds=THRESHOLD), dry_run=False)
        assert [r["rescheduled"] for r in rows(report, run_id)] == [True]
        final = wait_final(run_id, timeout=90)
        history = states_of(run_id)  # before the runner stops: it cancels the runs it still tracks
    assert final.state is not None
    assert final.state.type == StateType.COMPLETED, final.state.message
    names = [s.name for s in history]
    assert names[:3] == ["Scheduled", "Pending", "AwaitingRetry"]
    assert names[-2:] == ["Running", "Completed"], [
        (s.name, s.message, s.timestamp.isoformat()) for s in history
    ]
    sent = [
        d
        for d in github.dispatches_to(INFRA)
        if d["event_type"] == "preview-teardown" and d["client_payload"]["repository"] == repository
    ]
    assert len(sent) == 1


@contextmanager
def silent_docker_host() -> Iterator[str]:
    """A TCP endpoint that accepts connections and never answers: a Docker engine that hangs. A worker given it
    as ``DOCKER_HOST`` claims a run (Pending) and then waits inside its first Docker call, before any
    container exists: the moment a SIGKILL strands the run. The shared engine is never touched."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stopping = threading.Event()

    def accept() -> None:
        while not stopping.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"tcp://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stopping.set()
        server.close()
        for conn in held:
            conn.close()
        thread.join(timeout=5)


def start_worker(pool: str, docker_host: str, home: Path) -> subprocess.Popen[bytes]:
    """A real Docker worker on ``pool`` polling every second (its log in ``home``)."""
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREVIEWS_")}
    env |= {"PREFECT_HOME": str(home), "PREFECT_WORKER_QUERY_SECONDS": "1", "DOCKER_HOST": docker_host}
    prefect = str(Path(sys.executable).with_name("prefect"))
    with (home / "worker.log").open("wb") as out:
        return subprocess.Popen(
            [prefect, "worker", "start", "--pool", pool, "--type", "docker", "--name", home.name],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def claimed_by_a_worker(run_id: uuid.UUID, *, after: int, timeout: float = 90) -> FlowRun:
    """Wait until the run has more than ``after`` states and is Pending (a worker claimed it)."""
    deadline = time.monotonic() + timeout
    while True:
        run = read(run_id)
        if run.state is not None and run.state.type == StateType.PENDING and len(states_of(run_id)) > after:
            return run
        assert time.monotonic() < deadline, f"no worker claimed the run ({run.state})"
        time.sleep(0.2)


@pytest.mark.slow
def test_a_real_worker_killed_after_claiming_a_run_strands_it_and_another_worker_takes_it_back(
    session_dir: Path,
) -> None:
    pool = f"stranded-pool-{uuid.uuid4().hex[:6]}"
    with get_client(sync_client=True) as client:
        template = DockerWorker.get_default_base_job_template()
        client.create_work_pool(WorkPoolCreate(name=pool, type="docker", base_job_template=template))
    deployment_id = preview_image.to_deployment(
        name=pool, work_pool_name=pool, job_variables={"image": "previews-stranded:never-pulled"}
    ).apply()
    run_id: uuid.UUID | None = None
    workers: list[subprocess.Popen[bytes]] = []
    try:
        with silent_docker_host() as docker_host:
            workers.append(start_worker(pool, docker_host, session_dir / f"{pool}-w1"))
            with get_client(sync_client=True) as client:
                run_id = client.create_flow_run_from_deployment(deployment_id, parameters=image_params()).id
            claimed = claimed_by_a_worker(run_id, after=1)
            workers[0].kill()  # SIGKILL: the worker dies between the Pending and the container
            workers[0].wait(timeout=10)
            time.sleep(THRESHOLD + 0.5)
            left = read(run_id)
            assert left.state is not None
            assert left.state.type == StateType.PENDING
            assert left.infrastructure_pid is None
            assert claimed.state is not None

            _ok, report = reconcile(Settings(stranded_pending_seconds=THRESHOLD), dry_run=False)
            (row,) = rows(report, run_id)
            assert row["rescheduled"], row
            assert row["pending_state"] in {"Pending", "Submitting"}
            back = read(run_id)
            assert back.state is not None
            assert (back.state.type, back.state.name) == (StateType.SCHEDULED, "AwaitingRetry")

            workers.append(start_worker(pool, docker_host, session_dir / f"{pool}-w2"))
            history = states_of(run_id)
            again = claimed_by_a_worker(run_id, after=len(history))
        assert again.id == run_id
        assert again.created == claimed.created
    finally:
        for worker in workers:
            stop(worker, timeout=20)
        with get_client(sync_client=True) as client:
            if run_id is not None:
                client.set_flow_run_state(run_id, Cancelled(message="test over"), force=True)
            client.delete_deployment(deployment_id)
            client.delete_work_pool(pool)
