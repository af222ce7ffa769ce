"""A Prefect server that is down under a burst of deliveries: zero lost, zero doubled, counted as flow runs.

A separate Prefect server (its own home and port, not the session's) holds a deployment with the real
preview-image trigger. The server is stopped, N signed deliveries are answered 202 by the receiver (the
outbox keeps them), the server is started again on the same database: exactly N flow runs follow, one per
delivery. tests/ingress/test_prefect.py counts events; this counts the runs the trigger creates.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.utilities.callables import parameter_schema
from pydantic import SecretStr

from flows.preview_image import preview_image
from flows.triggers import image_trigger
from previews.settings import Settings
from tests.support.services import free_port, run_prefect_server
from tests.support.webhooks import SECRET, headers, run_receiver, synchronize_payload

pytestmark = pytest.mark.slow
BURST = 50  # the issue asks for 50 deliveries during the outage


def post(client: httpx.Client, path: str, body: dict[str, Any]) -> httpx.Response:
    """POST, retrying the 503 a freshly started SQLite server answers while it is busy (database locked)."""
    deadline = time.monotonic() + 30
    while True:
        resp = client.post(path, json=body)
        if resp.status_code != 503 or time.monotonic() > deadline:
            resp.raise_for_status()
            return resp
        time.sleep(0.5)


def create_triggered_deployment(api: str) -> str:
    """A deployment with the preview-image schema (enforced) and the real trigger's automation; its id."""
    with httpx.Client(base_url=api, timeout=30) as client:
        flow = post(client, "/flows/", {"name": f"outage-{uuid.uuid4().hex[:8]}"})
        dep = post(
            client,
            "/deployments/",
            {
                "name": "outage",
                "flow_id": flow.json()["id"],
                "parameter_openapi_schema": parameter_schema(preview_image.fn).model_dump_for_openapi(),
                "enforce_parameter_schema": True,
            },
        )
        deployment_id: str = dep.json()["id"]
        trigger = image_trigger()
        trigger.set_deployment_id(uuid.UUID(deployment_id))
        post(client, "/automations/", trigger.as_automation().model_dump(mode="json"))
    return deployment_id


def runs_by_delivery(api: str, deployment_id: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    offset = 0
    while True:
        resp = httpx.post(
            f"{api}/flow_runs/filter",
            json={"deployments": {"id": {"any_": [deployment_id]}}, "limit": 200, "offset": offset},
            timeout=20,
        )
        resp.raise_for_status()
        page: list[dict[str, Any]] = resp.json()
        for run in page:
            delivery = str(run["parameters"].get("delivery"))
            counts[delivery] = counts.get(delivery, 0) + 1
        if len(page) < 200:
            return counts
        offset += 200


def test_deliveries_during_an_outage_each_start_exactly_one_run(tmp_path: Path) -> None:
    home, port = tmp_path / "prefect-home", free_port()
    api = f"http://127.0.0.1:{port}/api"
    with run_prefect_server(home, port):
        dep = create_triggered_deployment(api)
    deliveries = [f"outage-{uuid.uuid4()}" for _ in range(BURST)]
    settings = Settings(
        webhook_secret=SecretStr(SECRET),
        outbox_path=tmp_path / "outbox.sqlite3",
        prefect_api_url=api,
        forwarder_max_backoff=2,
        forwarder_poll_seconds=0.5,
    )
    with run_receiver(settings) as receiver:
        for i, delivery in enumerate(deliveries):
            body = httpx.Request("POST", "/", json=synchronize_payload(number=200 + i)).content
            resp = httpx.post(receiver.webhook_url, content=body, headers=headers(body, delivery=delivery))
            assert resp.status_code == 202, resp.text
        assert receiver.outbox.stats().pending == BURST
        with run_prefect_server(home, port):
            deadline = time.monotonic() + 90
            counts: dict[str, int] = {}
            while time.monotonic() < deadline:
                counts = runs_by_delivery(api, dep)
                if set(deliveries) <= set(counts):
                    break
                time.sleep(0.5)
            time.sleep(3)  # anything doubled would show up by now
            counts = runs_by_delivery(api, dep)
            assert receiver.outbox.stats().pending == 0
    assert {d: counts.get(d, 0) for d in deliveries} == dict.fromkeys(deliveries, 1)
    assert sum(counts.values()) == BURST
