"""The receiver's answers: every refusal has its status, a one-line JSON reason, and leaves the outbox empty."""

from __future__ import annotations

import json
import logging
import socket
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from previews.core.events import event_id, parse_received
from previews.errors import ValidationError
from previews.ingress.outbox import Outbox
from previews.settings import Settings
from previews.wiring import Wiring
from tests.support.webhooks import (
    SECRET,
    WEBHOOKS,
    Receiver,
    headers,
    run_receiver,
    synchronize_payload,
)

DEAD_API = "http://127.0.0.1:9/api"


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "webhook_secret": SecretStr(SECRET),
        "outbox_path": tmp_path / "outbox.sqlite3",
        "prefect_api_url": DEAD_API,
        "allowed_repositories": "",
        **overrides,
    }
    return Settings(**values)


class Client(httpx.Client):
    """An HTTP client for one running receiver, which knows that receiver's outbox."""

    def __init__(self, receiver: Receiver) -> None:
        super().__init__(base_url=receiver.url, timeout=30)
        self.outbox = receiver.outbox


@contextmanager
def serve(settings: Settings) -> Iterator[Client]:
    with run_receiver(settings, forwarder_enabled=False) as receiver, Client(receiver) as http:
        yield http


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    with serve(make_settings(tmp_path, max_body_bytes=64 * 1024)) as http:
        yield http


def outbox_of(client: Client) -> Outbox:
    return client.outbox


def body_of(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()


def post(client: Client, body: bytes, **kwargs: Any) -> httpx.Response:
    return client.post("/webhooks/github", content=body, headers=headers(body, **kwargs))


def assert_refused(resp: httpx.Response, status: int, client: Client, *, mentions: str = "") -> None:
    assert resp.status_code == status, resp.text
    assert "\n" not in resp.text
    assert set(resp.json()) == {"error"}
    assert mentions in resp.json()["error"]
    assert outbox_of(client).entries() == []


def test_accepted_delivery_is_in_the_outbox_before_the_answer(client: Client) -> None:
    body = body_of(synchronize_payload())
    resp = post(client, body, delivery="11111111-2222-3333-4444-555555555555")
    assert resp.status_code == 202
    assert resp.json() == {"status": "accepted", "delivery": "11111111-2222-3333-4444-555555555555"}
    entry = outbox_of(client).get("11111111-2222-3333-4444-555555555555")
    assert entry is not None
    assert (entry.state, entry.event, entry.repository, entry.number) == (
        "pending",
        "github.pull_request.synchronize",
        "Codertocat/Hello-World",
        2,
    )
    event = entry.prefect_event()
    assert event["id"] == str(event_id("11111111-2222-3333-4444-555555555555"))
    assert event["resource"]["prefect.resource.id"] == "github.pull-request.codertocat/hello-world#2"


def test_the_event_carries_when_it_was_accepted_and_a_replay_keeps_it(client: Client) -> None:
    """``payload.received`` orders the PR's runs; a replay re-stamps ``occurred`` but not ``received``."""
    before = datetime.now(UTC)
    assert post(client, body_of(synchronize_payload()), delivery="recv-1").status_code == 202
    entry = outbox_of(client).get("recv-1")
    assert entry is not None
    first = entry.prefect_event()
    received = first["payload"]["received"]
    assert received == first["occurred"]
    accepted = parse_received(received)
    assert accepted is not None
    assert before <= accepted <= datetime.now(UTC)
    outbox_of(client).mark_delivered(["recv-1"])
    replayed = outbox_of(client).replay("recv-1")
    assert replayed is not None
    again = replayed.prefect_event()
    assert again["occurred"] != first["occurred"]
    assert again["payload"] == first["payload"]
    assert again["payload"]["received"] == received


def test_redelivery_answers_duplicate_and_stores_nothing_new(client: Client) -> None:
    body = body_of(synchronize_payload())
    assert post(client, body, delivery="dup-1").json()["status"] == "accepted"
    again = post(client, body, delivery="dup-1")
    assert again.status_code == 202
    assert again.json() == {"status": "duplicate", "delivery": "dup-1"}
    assert len(outbox_of(client).entries()) == 1


def test_form_encoded_delivery_is_accepted(client: Client) -> None:
    payload = json.dumps(synchronize_payload())
    body = ("payload=" + urllib.parse.quote_plus(payload)).encode()
    resp = post(client, body, content_type="application/x-www-form-urlencoded", delivery="form-1")
    assert resp.status_code == 202, resp.text
    assert outbox_of(client).get("form-1") is not None


def test_ping_answers_200(client: Client) -> None:
    body = (WEBHOOKS / "octokit-webhooks" / "ping" / "payload.json").read_bytes()
    resp = post(client, body, event="ping")
    assert resp.status_code == 200
    assert resp.json()["status"] == "pong"
    assert outbox_of(client).entries() == []


def test_other_events_are_ignored_with_202(client: Client) -> None:
    body = (WEBHOOKS / "octokit-webhooks" / "push" / "payload.json").read_bytes()
    resp = post(client, body, event="push")
    assert resp.status_code == 202
    assert resp.json()["status"] == "ignored"
    assert outbox_of(client).entries() == []


def test_every_real_taskcluster_signed_pr_delivery_verifies_and_is_accepted(tmp_path: Path) -> None:
    raw = WEBHOOKS / "signature" / "taskcluster-derived-raw"
    index = json.loads((raw / "index.json").read_text())["vectors"]
    settings = make_settings(tmp_path, webhook_secret=SecretStr("abc123"))
    with serve(settings) as tc:
        for vector in index:
            sent = {**vector["headers"], "Content-Type": "application/json"}
            resp = tc.post("/webhooks/github", content=(raw / vector["body_file"]).read_bytes(), headers=sent)
            expected = {True: 202, False: 401, None: 401}[vector["x_hub_signature_256_matches"]]
            assert resp.status_code == expected, (vector["body_file"], resp.text)
        stored = [e.delivery for e in outbox_of(tc).entries()]
        assert stored == ["ebfa5590-4d78-11ee-9662-d5d5634b1601"]


HOSTILE: list[tuple[str, dict[str, Any], int, str]] = [
    ("no signature", {"secret": None}, 401, "missing"),
    ("wrong secret", {"secret": "not-the-secret"}, 401, "does not match"),
    ("no delivery id", {"delivery": ""}, 400, "X-GitHub-Delivery"),
    ("bad delivery id", {"delivery": "$(id)"}, 400, "X-GitHub-Delivery"),
    ("no event header", {"event": ""}, 400, "X-GitHub-Event"),
    ("unsupported content type", {"content_type": "text/plain"}, 400, "Content-Type"),
]


@pytest.mark.parametrize(("case", "kwargs", "status", "mentions"), HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_headers(
    client: Client, case: str, kwargs: dict[str, Any], status: int, mentions: str
) -> None:
    body = body_of(synchronize_payload())
    sent = headers(body, **{k: v for k, v in kwargs.items() if v != ""})
    for key, value in kwargs.items():
        if value == "":
            sent.pop({"delivery": "X-GitHub-Delivery", "event": "X-GitHub-Event"}[key])
    resp = client.post("/webhooks/github", content=body, headers=sent)
    assert_refused(resp, status, client, mentions=mentions)


def test_signature_is_checked_on_the_raw_bytes_before_parsing(client: Client) -> None:
    body = b"{definitely not json"
    assert_refused(post(client, body, secret="wrong"), 401, client)
    assert_refused(post(client, body), 400, client, mentions="JSON")


def test_signed_body_altered_in_transit_is_refused(client: Client) -> None:
    body = body_of(synchronize_payload())
    sent = headers(body)
    assert_refused(client.post("/webhooks/github", content=body + b" ", headers=sent), 401, client)


def test_body_over_the_limit_is_413(client: Client) -> None:
    payload = synchronize_payload()
    payload["pull_request"]["body"] = "x" * (70 * 1024)
    assert_refused(post(client, body_of(payload)), 413, client, mentions="larger than")


def test_streamed_body_over_the_limit_without_content_length_is_413(client: Client) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            yield b"x" * 1024

    sent = headers(b"", secret=None)
    resp = client.post("/webhooks/github", content=chunks(), headers=sent)
    assert_refused(resp, 413, client)


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("number", 0, "number"),
        ("head_sha", "ec26c3e; rm -rf /", "pull_request.head.sha"),
        ("full_name", "Codertocat/Hello-World\n", "repository.full_name"),
        ("pull_request", None, "pull_request"),
    ],
)
def test_invalid_payload_is_400_naming_the_field(client: Client, path: str, value: Any, field: str) -> None:
    payload = synchronize_payload()
    if path == "head_sha":
        payload["pull_request"]["head"]["sha"] = value
    elif path == "full_name":
        payload["repository"]["full_name"] = value
    else:
        payload[path] = value
    assert_refused(post(client, body_of(payload)), 400, client, mentions=field)


def test_repository_outside_the_allow_list_is_403(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, allowed_repositories=" acme/api , codertocat/hello-world")
    with serve(settings) as tc:
        assert post(tc, body_of(synchronize_payload())).status_code == 202
        other = body_of(synchronize_payload(repository="evil/api"))
        resp = post(tc, other)
        assert resp.status_code == 403
        assert "PREVIEWS_ALLOWED_REPOSITORIES" in resp.json()["error"]
        assert len(outbox_of(tc).entries()) == 1


def test_bad_allow_list_is_refused_at_startup(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="PREVIEWS_ALLOWED_REPOSITORIES"):
        Wiring(make_settings(tmp_path, allowed_repositories="acme/api,not a repo")).receiver_app()


@pytest.mark.parametrize("secret", [None, SecretStr("")], ids=["unset", "empty"])
def test_without_a_secret_there_is_no_receiver(tmp_path: Path, secret: SecretStr | None) -> None:
    with pytest.raises(ValidationError, match="PREVIEWS_WEBHOOK_SECRET: not set") as refused:
        Wiring(make_settings(tmp_path, webhook_secret=secret)).receiver_app()
    assert "--insecure-no-signature" in str(refused.value)
    assert not (tmp_path / "outbox.sqlite3").exists()


def test_insecure_receiver_takes_unsigned_deliveries_but_never_a_signed_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    settings = make_settings(tmp_path, webhook_secret=None)
    with (
        run_receiver(settings, forwarder_enabled=False, allow_unsigned=True) as receiver,
        Client(receiver) as tc,
    ):
        assert "INSECURE" in caplog.text
        unsigned = post(tc, body_of(synchronize_payload()), secret=None, delivery="unsigned-1")
        assert unsigned.status_code == 202
        assert unsigned.json()["status"] == "accepted"
        for secret in (SECRET, "any-other-secret"):
            signed = post(tc, body_of(synchronize_payload(number=3)), secret=secret)
            assert signed.status_code == 401
            assert "PREVIEWS_WEBHOOK_SECRET is not set" in signed.json()["error"]
        assert [e.delivery for e in outbox_of(tc).entries()] == ["unsigned-1"]
        assert tc.get("/healthz").json()["signatures"] == "not checked (--insecure-no-signature)"
    assert "unsigned-1 accepted" in caplog.text
    assert "WITHOUT a signature check" in caplog.text


def test_a_secret_makes_the_insecure_flag_moot(tmp_path: Path) -> None:
    with (
        run_receiver(make_settings(tmp_path), forwarder_enabled=False, allow_unsigned=True) as receiver,
        Client(receiver) as tc,
    ):
        assert_refused(post(tc, body_of(synchronize_payload()), secret=None), 401, tc, mentions="missing")
        assert tc.get("/healthz").json()["signatures"] == "required"


def test_captured_body_replayed_under_a_new_delivery_id_is_a_duplicate(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    body = body_of(synchronize_payload())
    assert post(client, body, delivery="original-1").json()["status"] == "accepted"
    replayed = post(client, body, delivery="replayed-1")
    assert replayed.status_code == 202
    assert replayed.json() == {"status": "duplicate", "delivery": "replayed-1"}
    assert [e.delivery for e in outbox_of(client).entries()] == ["original-1"]
    assert "replayed-1 duplicate (same signed body as original-1)" in caplog.text
    other = post(client, body_of(synchronize_payload(number=3)), delivery="other-1")
    assert other.json()["status"] == "accepted"
    assert [e.delivery for e in outbox_of(client).entries()] == ["original-1", "other-1"]


def test_logs_hold_neither_the_secret_nor_the_payload(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    payload = synchronize_payload()
    payload["pull_request"]["title"] = "TITLE-MARKER"
    post(client, body_of(payload), delivery="log-1")
    post(client, body_of(payload), secret="wrong-secret-marker")
    payload["number"] = -5
    post(client, body_of(payload))
    text = caplog.text
    assert "log-1" in text
    for secret_or_payload in (
        SECRET,
        "wrong-secret-marker",
        "TITLE-MARKER",
        payload["pull_request"]["head"]["sha"],
    ):
        assert secret_or_payload not in text


def test_healthz_reports_depth_age_and_prefect(client: Client) -> None:
    post(client, body_of(synchronize_payload()))
    health = client.get("/healthz").json()
    assert health["outbox"]["pending"] == 1
    assert health["outbox"]["oldest_pending_age_seconds"] >= 0
    assert health["prefect"]["reachable"] is False


def test_declared_content_length_over_the_limit_is_refused_before_the_body_is_sent(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_body_bytes=1024)
    with run_receiver(settings, forwarder_enabled=False) as receiver:
        port = int(receiver.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                b"POST /webhooks/github HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"X-GitHub-Event: pull_request\r\nContent-Length: 26214400\r\n\r\n"
            )
            answer = sock.recv(4096).decode()
        assert answer.startswith("HTTP/1.1 413")
        with Outbox(settings.outbox_path) as outbox:
            assert outbox.entries() == []
