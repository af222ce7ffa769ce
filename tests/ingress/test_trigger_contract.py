"""The receiver's events fire the deployments' real triggers with correctly typed parameters.

A deployment with the preview-image flow's parameter schema (enforced) and the automation built from
``flows.triggers`` is created on the session's Prefect server; a signed delivery through the receiver must
create exactly one flow run with plain, typed parameters. No worker runs: the run stays Scheduled.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.events import DeploymentEventTrigger
from prefect.utilities.callables import parameter_schema
from pydantic import SecretStr

from flows.preview_image import preview_image
from flows.preview_teardown import preview_teardown
from flows.triggers import image_trigger, teardown_trigger
from previews.core.events import parse_received
from previews.settings import Settings
from tests.support.webhooks import SECRET, WEBHOOKS, headers, load_payload, run_receiver

pytestmark = pytest.mark.slow


@contextmanager
def deployment_with_trigger(api: str, fn: Any, trigger: DeploymentEventTrigger) -> Iterator[str]:
    """A throwaway deployment (schema enforced) plus its trigger automation; both deleted afterwards."""
    with httpx.Client(base_url=api, timeout=30) as client:
        flow = client.post("/flows/", json={"name": f"contract-{uuid.uuid4().hex[:8]}"})
        flow.raise_for_status()
        schema = parameter_schema(fn).model_dump_for_openapi()
        dep = client.post(
            "/deployments/",
            json={
                "name": "contract",
                "flow_id": flow.json()["id"],
                "parameter_openapi_schema": schema,
                "enforce_parameter_schema": True,
            },
        )
        dep.raise_for_status()
        deployment_id = dep.json()["id"]
        trigger.set_deployment_id(uuid.UUID(deployment_id))
        automation = client.post("/automations/", json=trigger.as_automation().model_dump(mode="json"))
        automation.raise_for_status()
        time.sleep(1.0)  # the triggers service loads new automations asynchronously
        try:
            yield deployment_id
        finally:
            client.delete(f"/automations/{automation.json()['id']}")
            client.delete(f"/deployments/{deployment_id}")


def runs_for(api: str, deployment_id: str, delivery: str, *, timeout: float = 20) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        resp = httpx.post(
            f"{api}/flow_runs/filter",
            json={"deployments": {"id": {"any_": [deployment_id]}}, "limit": 50},
            timeout=10,
        )
        resp.raise_for_status()
        runs = [r for r in resp.json() if r["parameters"].get("delivery") == delivery]
        if runs or time.monotonic() > deadline:
            return runs
        time.sleep(0.25)


def test_a_synchronize_delivery_creates_one_typed_preview_image_run(
    tmp_path: Path, prefect_server: str
) -> None:
    raw = load_payload(WEBHOOKS / "real-drone-go-scm" / "pr_sync.json")
    body = json.dumps(raw).encode()
    delivery = f"contract-{uuid.uuid4()}"
    settings = Settings(
        webhook_secret=SecretStr(SECRET), outbox_path=tmp_path / "o.db", prefect_api_url=prefect_server
    )
    with (
        deployment_with_trigger(prefect_server, preview_image.fn, image_trigger()) as deployment_id,
        run_receiver(settings) as receiver,
    ):
        for _ in range(2):  # the redelivery must not start a second run
            resp = httpx.post(receiver.webhook_url, content=body, headers=headers(body, delivery=delivery))
            assert resp.status_code == 202
        runs = runs_for(prefect_server, deployment_id, delivery)
        time.sleep(2.0)
        assert len(runs_for(prefect_server, deployment_id, delivery)) == 1
    assert len(runs) == 1
    received = parse_received(runs[0]["parameters"].pop("received"))  # when the receiver accepted it
    assert received is not None
    assert abs(received - datetime.now(UTC)) < timedelta(minutes=5)
    assert runs[0]["parameters"] == {
        "repository": "bradrydzewski/drone-test-go",
        "pr_number": 1,
        "head_sha": raw["pull_request"]["head"]["sha"],
        "base_sha": raw["pull_request"]["base"]["sha"],
        "fork": False,
        "labels": [],
        "delivery": delivery,
        "action": "synchronize",
    }


def test_a_closed_delivery_creates_a_teardown_run(tmp_path: Path, prefect_server: str) -> None:
    raw = load_payload(WEBHOOKS / "real-reallyfastci" / "webhook-pr-close.json")
    body = json.dumps(raw).encode()
    delivery = f"contract-{uuid.uuid4()}"
    settings = Settings(
        webhook_secret=SecretStr(SECRET), outbox_path=tmp_path / "o.db", prefect_api_url=prefect_server
    )
    with (
        deployment_with_trigger(prefect_server, preview_teardown.fn, teardown_trigger()) as deployment_id,
        run_receiver(settings) as receiver,
    ):
        resp = httpx.post(receiver.webhook_url, content=body, headers=headers(body, delivery=delivery))
        assert resp.status_code == 202
        runs = runs_for(prefect_server, deployment_id, delivery)
    assert [r["parameters"] for r in runs] == [
        {"repository": "ailisp/gcbapp-buildconfig-example", "pr_number": 3, "delivery": delivery}
    ]
