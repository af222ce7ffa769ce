"""Reconcile recovers the runs a dead worker stranded: a real Prefect server, runs put in Pending the way a worker
claims them (a proposed, not forced, Pending) with no container ever created, as when the worker is SIGKILLed
right after. The preview-image deployment is registered but not served (a rescheduled run stays Scheduled);
the preview-teardown deployment is served by a real runner subprocess (a rescheduled run runs to the end)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.states import Pending, Scheduled
from pydantic import SecretStr

from flows.preview_image import preview_image
from flows.preview_reconcile import ReconcileReport, preview_reconcile
from previews.settings import Settings
from previews.wiring import Wiring
from previews_cli.app import main
from tests.conftest import INFRA
from tests.support.fake_github import FakeGitHub
from tests.support.served import serve_preview_image, states_of, wait_final

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
    finally:
        with get_client(sync_client=True) as client:
            client.delete_deployment(deployment_id)


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
