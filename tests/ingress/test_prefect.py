"""Deliveries become Prefect events on a real Prefect server: exactly once, through outages and restarts."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from previews.core.events import event_id
from previews.errors import TransientError
from previews.ingress.forwarder import Forwarder, prefect_headers
from previews.ingress.outbox import Outbox
from previews.redact import redact_url
from previews.settings import Settings
from tests.support.console import PREVIEWS
from tests.support.services import free_port, stop, wait_http
from tests.support.webhooks import (
    SECRET,
    WEBHOOKS,
    headers,
    load_payload,
    prefect_events,
    run_receiver,
    synchronize_payload,
    wait_for_events,
)

pytestmark = pytest.mark.slow


def dead_api() -> str:
    return f"http://127.0.0.1:{free_port()}/api"


def settings_for(tmp_path: Path, api_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "webhook_secret": SecretStr(SECRET),
        "outbox_path": tmp_path / "outbox.sqlite3",
        "prefect_api_url": api_url,
        "forwarder_poll_seconds": 0.2,
        "forwarder_max_backoff": 1.0,
        **overrides,
    }
    return Settings(**values)


def send(url: str, payload: dict[str, Any], delivery: str) -> httpx.Response:
    body = json.dumps(payload).encode()
    return httpx.post(url, content=body, headers=headers(body, delivery=delivery), timeout=30)


def unique(prefix: str) -> str:
    return f"{prefix}-{time.time_ns()}"


def test_accepted_delivery_becomes_a_prefect_event(tmp_path: Path, prefect_server: str) -> None:
    raw = load_payload(WEBHOOKS / "real-reallyfastci" / "webhook-pr-from-fork.json")
    delivery = unique("fork")
    with run_receiver(settings_for(tmp_path, prefect_server)) as receiver:
        resp = send(receiver.webhook_url, raw, delivery)
        assert resp.json() == {"status": "accepted", "delivery": delivery}
        events = wait_for_events(prefect_server, [str(event_id(delivery))])
        deadline = time.monotonic() + 10
        while receiver.outbox.stats().pending and time.monotonic() < deadline:
            time.sleep(0.05)
        entry = receiver.outbox.get(delivery)
        assert entry is not None
        assert entry.state == "delivered"
    assert len(events) == 1
    event = events[0]
    assert event["event"] == "github.pull_request.synchronize"
    assert event["resource"] == {
        "prefect.resource.id": "github.pull-request.ailisp/gcbapp-buildconfig-example#2",
        "github.repository": "ailisp/gcbapp-buildconfig-example",
        "github.pull-request.number": "2",
        "github.sha": raw["pull_request"]["head"]["sha"],
    }
    payload = event["payload"]
    assert payload["number"] == 2
    assert payload["head_sha"] == raw["pull_request"]["head"]["sha"]
    assert payload["base_sha"] == raw["pull_request"]["base"]["sha"]
    assert payload["head_repository"] == "byao1276/gcbapp-buildconfig-example"
    assert payload["fork"] is True
    assert payload["delivery"] == delivery
    assert "title" not in payload
    assert "pull_request" not in payload


def test_outage_keeps_entries_pending_then_delivers_each_exactly_once(
    tmp_path: Path, prefect_server: str
) -> None:
    deliveries = [unique(f"outage-{i}") for i in range(20)]
    with run_receiver(settings_for(tmp_path, dead_api()), forwarder_enabled=True) as receiver:
        for i, delivery in enumerate(deliveries):
            resp = send(receiver.webhook_url, synchronize_payload(number=100 + i), delivery)
            assert resp.status_code == 202
        time.sleep(1.5)
        health = httpx.get(f"{receiver.url}/healthz", timeout=10).json()
        assert health["outbox"]["pending"] == 20
        assert health["prefect"]["reachable"] is False
        assert health["forwarder"]["consecutive_failures"] >= 1
        assert "cannot reach Prefect" in health["forwarder"]["last_error"]
        first = receiver.outbox.get(deliveries[0])
        assert first is not None
        assert first.state == "pending"
        assert first.attempts >= 1
        assert "cannot reach Prefect" in (first.last_error or "")
    ids = [str(event_id(d)) for d in deliveries]
    assert prefect_events(prefect_server, ids) == []

    with Outbox(tmp_path / "outbox.sqlite3") as outbox:
        forwarder = Forwarder(outbox, api_url=prefect_server, batch_size=7)
        try:
            assert forwarder.forward_pending() == 20
            assert forwarder.forward_pending() == 0
        finally:
            forwarder.close()
        assert outbox.stats().pending == 0
        assert outbox.stats().delivered == 20
    events = wait_for_events(prefect_server, ids)
    assert sorted(e["id"] for e in events) == sorted(ids)
    numbers = sorted(e["payload"]["number"] for e in events)
    assert numbers == list(range(100, 120))


def test_forward_pending_raises_transient_while_prefect_is_down(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as outbox:
        outbox.add(delivery="d", event={"event": "github.pull_request.opened"}, repository="o/r", number=1)
        forwarder = Forwarder(outbox, api_url=dead_api(), timeout=2)
        try:
            with pytest.raises(TransientError, match="cannot reach Prefect"):
                forwarder.forward_pending()
        finally:
            forwarder.close()
        entry = outbox.get("d")
        assert entry is not None
        assert (entry.state, entry.attempts) == ("pending", 1)


def test_redelivery_creates_one_event_and_replay_sends_a_new_one(tmp_path: Path, prefect_server: str) -> None:
    delivery = unique("redeliver")
    with run_receiver(settings_for(tmp_path, prefect_server)) as receiver:
        assert send(receiver.webhook_url, synchronize_payload(), delivery).json()["status"] == "accepted"
        first_id = str(event_id(delivery))
        assert len(wait_for_events(prefect_server, [first_id])) == 1
        for _ in range(3):
            assert send(receiver.webhook_url, synchronize_payload(), delivery).json()["status"] == "duplicate"
        entry = receiver.outbox.get(delivery)
        assert entry is not None
        assert (entry.state, entry.attempts) == ("delivered", 1)

        replayed = receiver.outbox.replay(delivery)
        assert replayed is not None
        replay_id = str(event_id(delivery, replay=1))
        events = wait_for_events(prefect_server, [first_id, replay_id])
    assert sorted(e["id"] for e in events) == sorted([first_id, replay_id])
    assert {e["payload"]["delivery"] for e in events} == {delivery}
    time.sleep(1.0)
    assert len(prefect_events(prefect_server, [first_id, replay_id])) == 2


def test_an_event_prefect_refuses_is_set_aside_without_blocking_others(
    tmp_path: Path, prefect_server: str
) -> None:
    good = [unique("good-a"), unique("good-b")]
    bad = unique("bad")
    with Outbox(tmp_path / "o.db") as outbox:
        outbox.add(
            delivery=good[0],
            event={
                "id": str(event_id(good[0])),
                "occurred": "2026-11-28T12:00:00Z",
                "event": "github.pull_request.opened",
                "resource": {"prefect.resource.id": "github.pull-request.o/r#1"},
                "payload": {},
            },
            repository="o/r",
            number=1,
        )
        outbox.add(
            delivery=bad,
            event={
                "id": str(event_id(bad)),
                "event": "github.pull_request.opened",
                "resource": {"prefect.resource.id": "x"},
            },
            repository="o/r",
            number=1,
        )
        outbox.add(
            delivery=good[1],
            event={
                "id": str(event_id(good[1])),
                "occurred": "2026-11-28T12:00:00Z",
                "event": "github.pull_request.opened",
                "resource": {"prefect.resource.id": "github.pull-request.o/r#1"},
                "payload": {},
            },
            repository="o/r",
            number=1,
        )
        forwarder = Forwarder(outbox, api_url=prefect_server)
        try:
            assert forwarder.forward_pending() == 2
        finally:
            forwarder.close()
        rejected = outbox.get(bad)
        assert rejected is not None
        assert rejected.state == "rejected"
        assert "422" in (rejected.last_error or "")
        assert outbox.stats().delivered == 2


@contextmanager
def serve_subprocess(tmp_path: Path, api_url: str, port: int) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "PREVIEWS_WEBHOOK_SECRET": SECRET,
        "PREVIEWS_OUTBOX_PATH": str(tmp_path / "outbox.sqlite3"),
        "PREVIEWS_FORWARDER_MAX_BACKOFF": "1",
        "PREFECT_API_URL": api_url,
    }
    log = tmp_path / f"serve-{port}-{time.time_ns()}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [PREVIEWS, "serve", "--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60, proc=proc, log=log)
        yield proc
    finally:
        stop(proc)
    assert SECRET not in log.read_text()


def test_pending_entries_are_forwarded_after_a_receiver_restart(tmp_path: Path, prefect_server: str) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/webhooks/github"
    deliveries = [unique(f"restart-{i}") for i in range(3)]
    with serve_subprocess(tmp_path, dead_api(), port):
        for i, delivery in enumerate(deliveries):
            assert send(url, synchronize_payload(number=200 + i), delivery).status_code == 202
    with Outbox(tmp_path / "outbox.sqlite3") as outbox:
        assert [e.state for e in outbox.entries()] == ["pending"] * 3
    ids = [str(event_id(d)) for d in deliveries]
    assert prefect_events(prefect_server, ids) == []
    with serve_subprocess(tmp_path, prefect_server, port):
        events = wait_for_events(prefect_server, ids)
        health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).json()
        assert health["prefect"]["reachable"] is True
    assert sorted(e["id"] for e in events) == sorted(ids)
    with Outbox(tmp_path / "outbox.sqlite3") as outbox:
        assert [e.state for e in outbox.entries()] == ["delivered"] * 3


def test_prefect_authorization_headers() -> None:
    assert prefect_headers(None, None) == {}
    assert prefect_headers(SecretStr("pnu_key"), None) == {"Authorization": "Bearer pnu_key"}
    # the same header curl -u admin:pw sends, which Prefect's PREFECT_SERVER_API_AUTH_STRING checks
    assert prefect_headers(None, SecretStr("admin:pw")) == {"Authorization": "Basic YWRtaW46cHc="}


def test_urls_in_messages_lose_their_credentials() -> None:
    assert redact_url("https://user:tok@example.com:8443/api?x=1") == "https://example.com:8443/api"


def test_backoff_doubles_up_to_the_cap(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as outbox:
        forwarder = Forwarder(outbox, api_url=dead_api(), max_backoff=5.0)
        for failures, base in ((1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 5.0), (9, 5.0)):
            forwarder.consecutive_failures = failures
            assert base * 0.8 <= forwarder.backoff() <= base
        forwarder.close()
