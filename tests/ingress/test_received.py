"""The trigger hands the delivery's acceptance time to the run as ``received``, and an event stored by an older
receiver (no ``received`` in its payload) still starts its run, with ``received`` None (a real Prefect server)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from previews.core.events import parse_pull_request_event, parse_received, prefect_event
from tests.support.served import serve_preview_image, wait_final
from tests.support.webhooks import synchronize_payload, wait_for_events

pytestmark = pytest.mark.slow


def _runs(api: str, deployment: str, deliveries: set[str], timeout: float = 30) -> dict[str, dict[str, Any]]:
    """The deployment's runs started by ``deliveries``, by delivery (waits until each has one)."""
    flow, name = deployment.split("/")
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=api, timeout=10) as client:
        dep = client.get(f"/deployments/name/{flow}/{name}").json()
        while True:
            found = client.post(
                "/flow_runs/filter", json={"deployments": {"id": {"any_": [dep["id"]]}}, "limit": 50}
            ).json()
            runs = {r["parameters"].get("delivery"): r for r in found}
            if deliveries <= runs.keys():
                return {d: runs[d] for d in deliveries}
            assert time.monotonic() < deadline, f"no run for {deliveries - runs.keys()}"
            time.sleep(0.25)


def test_received_reaches_the_run_and_an_event_without_it_still_starts_one(
    tmp_path: Path, prefect_server: str, session_dir: Path
) -> None:
    repository, number = f"acme/recv-{uuid.uuid4().hex[:6]}", 5
    new, old = str(uuid.uuid4()), str(uuid.uuid4())
    events = []
    for delivery in (new, old):
        event = parse_pull_request_event(
            synchronize_payload(repository=repository, number=number), delivery=delivery
        )
        events.append(prefect_event(event))
    del events[1]["payload"]["received"]  # as an older receiver stored it
    env = {"PREVIEWS_REGISTRY": "127.0.0.1:9", "PREVIEWS_WORKSPACE_ROOT": str(tmp_path)}
    with serve_preview_image(
        env, log=session_dir / f"served-received-{new[:8]}.log", triggers=True
    ) as deployment:
        with httpx.Client(timeout=10) as client:
            client.post(f"{prefect_server}/events", json=events).raise_for_status()
        wait_for_events(prefect_server, [e["id"] for e in events])
        runs = _runs(prefect_server, deployment, {new, old})
        finals = {d: wait_final(uuid.UUID(r["id"]), timeout=60) for d, r in runs.items()}
    assert runs[new]["parameters"]["received"] == events[0]["occurred"]
    assert parse_received(runs[new]["parameters"]["received"]) is not None
    assert runs[old]["parameters"]["received"] is None
    for delivery, final in finals.items():
        assert final.state is not None
        assert final.state.type.value == "COMPLETED", (delivery, final.state.message)
