"""The "Re-run" button end to end: a signed ``check_run.rerequested`` delivery through the real receiver
becomes one Prefect event, which the deployment's trigger turns into exactly one preview-image run; a
redelivery starts none, and a check with no pull request starts nothing and says so."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from previews.core.events import event_id, parse_received
from previews.settings import Settings
from tests.support.fake_github import FakeGitHub
from tests.support.rerequests import rerequested
from tests.support.served import serve_preview_image, wait_final
from tests.support.webhooks import SECRET, headers, run_receiver, wait_for_events

APP_ID = 12345
INSTALLATION = 67890
DEAD_API = "http://127.0.0.1:9/api"


def receiver_settings(tmp_path: Path, api: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "webhook_secret": SecretStr(SECRET),
        "outbox_path": tmp_path / "outbox.sqlite3",
        "prefect_api_url": api,
        "forwarder_poll_seconds": 0.2,
        "forwarder_max_backoff": 1.0,
        "github_app_id": APP_ID,
        **overrides,
    }
    return Settings(**values)


def deliver(url: str, kind: str, payload: dict[str, Any], guid: str) -> httpx.Response:
    body = json.dumps(payload).encode()
    return httpx.post(url, content=body, headers=headers(body, event=kind, delivery=guid), timeout=30)


def runs_with_delivery(api: str, deployment: str, delivery: str) -> list[dict[str, Any]]:
    with httpx.Client(base_url=api, timeout=10) as client:
        flow, name = deployment.split("/")
        dep = client.get(f"/deployments/name/{flow}/{name}").json()
        found = client.post(
            "/flow_runs/filter", json={"deployments": {"id": {"any_": [dep["id"]]}}, "limit": 50}
        )
        found.raise_for_status()
        return [r for r in found.json() if r["parameters"].get("delivery") == delivery]


@pytest.mark.parametrize("kind", ["check_run", "check_suite"])
def test_a_rerequest_is_stored_once_with_the_rerun_event(tmp_path: Path, kind: str) -> None:
    repo, sha, guid = "acme/app", "a" * 40, str(uuid.uuid4())
    payload = rerequested(kind, repository=repo, head_sha=sha, app_id=APP_ID, numbers=(7,))
    with run_receiver(receiver_settings(tmp_path, DEAD_API), forwarder_enabled=False) as receiver:
        first = deliver(receiver.webhook_url, kind, payload, guid)
        again = deliver(receiver.webhook_url, kind, payload, guid)
        entry = receiver.outbox.get(guid)
    assert (first.status_code, first.json()) == (202, {"status": "accepted", "delivery": guid})
    assert again.json()["status"] == "duplicate"
    assert entry is not None
    event = entry.prefect_event()
    assert event["event"] == f"github.{kind}.rerequested"
    assert event["id"] == str(event_id(guid))
    assert event["resource"]["prefect.resource.id"] == "github.pull-request.acme/app#7"
    assert event["payload"]["delivery"] == f"rerequest:{guid}"
    assert event["payload"]["force_rebuild"] is True


def test_a_check_without_a_pull_request_starts_nothing_and_says_why(tmp_path: Path) -> None:
    guid = str(uuid.uuid4())
    payload = rerequested("check_run", repository="acme/app", head_sha="a" * 40, app_id=APP_ID, numbers=())
    with run_receiver(receiver_settings(tmp_path, DEAD_API), forwarder_enabled=False) as receiver:
        answer = deliver(receiver.webhook_url, "check_run", payload, guid)
        stored = receiver.outbox.get(guid)
    assert answer.status_code == 202
    assert answer.json()["status"] == "ignored"
    assert "pull_requests is empty" in answer.json()["reason"]
    assert stored is None


def test_an_unsigned_or_foreign_rerequest_is_refused(tmp_path: Path) -> None:
    payload = rerequested("check_run", repository="acme/app", head_sha="a" * 40, app_id=APP_ID)
    body = json.dumps(payload).encode()
    settings = receiver_settings(tmp_path, DEAD_API, allowed_repositories="acme/other")
    with run_receiver(settings, forwarder_enabled=False) as receiver:
        forged = headers(body, event="check_run", secret="not-the-secret")
        assert httpx.post(receiver.webhook_url, content=body, headers=forged).status_code == 401
        signed = headers(body, event="check_run")
        assert httpx.post(receiver.webhook_url, content=body, headers=signed).status_code == 403
        assert receiver.outbox.stats().pending == 0


@pytest.mark.slow
def test_a_signed_rerequest_starts_exactly_one_run_through_the_deployment(
    tmp_path: Path, prefect_server: str, session_dir: Path
) -> None:
    """No push credentials here, so the run ends at the plan's skip: the check goes queued -> neutral."""
    repo, sha, guid = "acme/rerun", uuid.uuid4().hex + "0" * 8, str(uuid.uuid4())
    with FakeGitHub() as gh:
        key = gh.enable_app(app_id=APP_ID, installation_id=INSTALLATION)
        gh.add_pull(repo, 7, head_sha=sha)
        env = {
            "PREVIEWS_GITHUB_API_URL": gh.url,
            "PREVIEWS_GITHUB_APP_ID": str(APP_ID),
            "PREVIEWS_GITHUB_APP_PRIVATE_KEY": key,
            "PREVIEWS_GITHUB_APP_INSTALLATION_ID": str(INSTALLATION),
            "PREVIEWS_REGISTRY": "127.0.0.1:9",
            "PREVIEWS_WORKSPACE_ROOT": str(tmp_path),
        }
        log = session_dir / f"served-rerun-{guid[:8]}.log"
        with serve_preview_image(env, log=log, triggers=True) as deployment:
            payload = rerequested("check_run", repository=repo, head_sha=sha, app_id=APP_ID, numbers=(7,))
            with run_receiver(receiver_settings(tmp_path, prefect_server)) as receiver:
                assert (
                    deliver(receiver.webhook_url, "check_run", payload, guid).json()["status"] == "accepted"
                )
                wait_for_events(prefect_server, [str(event_id(guid))])
                runs = _wait_for_runs(prefect_server, deployment, f"rerequest:{guid}")
                final = wait_final(uuid.UUID(runs[0]["id"]))
                assert (
                    deliver(receiver.webhook_url, "check_run", payload, guid).json()["status"] == "duplicate"
                )
                time.sleep(3)  # what a second run would need to appear (event -> run took 0.2-0.4 s)
                again = runs_with_delivery(prefect_server, deployment, f"rerequest:{guid}")
        checks = gh.check_runs(repo, sha)
    (run,) = again
    received = parse_received(run["parameters"].pop("received"))  # when the receiver accepted it
    assert received is not None
    assert abs(received - datetime.now(UTC)) < timedelta(minutes=5)
    assert run["parameters"] == {
        "repository": repo,
        "pr_number": 7,
        "head_sha": sha,
        "delivery": f"rerequest:{guid}",
        "force_rebuild": True,
    }
    assert final.state is not None
    assert final.state.type.value == "COMPLETED", log.read_text()[-3000:]
    (check,) = checks
    assert (check["name"], check["status"], check["conclusion"]) == ("preview-image", "completed", "neutral")
    assert "no push credentials" in check["output"]["title"]
    assert check["external_id"] == run["id"]


def _wait_for_runs(api: str, deployment: str, delivery: str, timeout: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while not (runs := runs_with_delivery(api, deployment, delivery)):
        assert time.monotonic() < deadline, f"no run with delivery {delivery}"
        time.sleep(0.25)
    return runs
