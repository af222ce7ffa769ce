"""Signed GitHub deliveries from the real fixtures, a receiver under uvicorn, and Prefect event queries."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette

from previews.ingress.outbox import Outbox
from previews.settings import Settings
from previews.signature import sign
from previews.wiring import Wiring
from tests.support.console import PREVIEWS
from tests.support.fixtures import FIXTURES
from tests.support.services import free_port, stop, wait_http

WEBHOOKS = FIXTURES / "github" / "webhooks"
SECRET = "test-webhook-secret"


def load_payload(path: Path) -> dict[str, Any]:
    """A webhook payload; taskcluster captures wrap it as ``{"headers": ..., "body": ...}``."""
    data: dict[str, Any] = json.loads(path.read_text())
    if set(data) == {"headers", "body"}:
        body: dict[str, Any] = data["body"]
        return body
    return data


PULL_REQUEST_FIXTURES = sorted(
    p
    for p in WEBHOOKS.rglob("*.json")
    if "payload-schemas" not in p.parts
    and "signature" not in p.parts
    and p.name != "delivery-headers.json"
    and "pull_request" in load_payload(p)
)


def synchronize_payload(*, repository: str = "Codertocat/Hello-World", number: int = 2) -> dict[str, Any]:
    """The octokit ``synchronize`` payload, optionally moved to another repository or PR number."""
    payload = load_payload(WEBHOOKS / "octokit-webhooks" / "pull_request" / "synchronize.payload.json")
    owner, name = repository.split("/")
    payload["number"] = number
    payload["pull_request"]["number"] = number
    for repo in (
        payload["repository"],
        payload["pull_request"]["head"]["repo"],
        payload["pull_request"]["base"]["repo"],
    ):
        repo["full_name"] = repository
        repo["name"] = name
        repo["owner"]["login"] = owner
    return payload


def headers(
    body: bytes,
    *,
    event: str = "pull_request",
    delivery: str | None = None,
    secret: str | None = SECRET,
    content_type: str = "application/json",
) -> dict[str, str]:
    """GitHub's delivery headers for ``body``, signed with ``secret`` (none when ``secret`` is None)."""
    result = {
        "Content-Type": content_type,
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "User-Agent": "GitHub-Hookshot/test",
    }
    if secret is not None:
        result["X-Hub-Signature-256"] = sign(body, secret)
    return result


@dataclass
class Receiver:
    """A receiver running under uvicorn: its base URL and the Starlette app (``app.state.outbox``)."""

    url: str
    app: Starlette

    @property
    def outbox(self) -> Outbox:
        outbox: Outbox = self.app.state.outbox
        return outbox

    @property
    def webhook_url(self) -> str:
        return f"{self.url}/webhooks/github"


@contextmanager
def run_receiver(
    settings: Settings, *, forwarder_enabled: bool = True, allow_unsigned: bool = False
) -> Iterator[Receiver]:
    """The real receiver under uvicorn in a thread on a free port."""
    port = free_port()
    app = Wiring(settings).receiver_app(forwarder_enabled=forwarder_enabled, allow_unsigned=allow_unsigned)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the receiver did not start")
        time.sleep(0.02)
    try:
        yield Receiver(f"http://127.0.0.1:{port}", app)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def prefect_events(api_url: str, ids: list[str]) -> list[dict[str, Any]]:
    """Events stored by the Prefect server with these ids."""
    resp = httpx.post(
        f"{api_url}/events/filter", json={"filter": {"id": {"id": ids}}, "limit": 50}, timeout=10
    )
    resp.raise_for_status()
    page = resp.json()
    events: list[dict[str, Any]] = page["events"]
    while page.get("next_page"):
        resp = httpx.get(page["next_page"], timeout=10)
        resp.raise_for_status()
        page = resp.json()
        events.extend(page["events"])
    return events


def wait_for_events(api_url: str, ids: list[str], *, timeout: float = 30) -> list[dict[str, Any]]:
    """Poll until Prefect has stored every one of ``ids`` (its persister writes in batches)."""
    deadline = time.monotonic() + timeout
    while True:
        found = prefect_events(api_url, ids)
        if {e["id"] for e in found} >= set(ids) or time.monotonic() > deadline:
            return found
        time.sleep(0.25)


@dataclass
class ReceiverProcess:
    """``previews serve`` running as its own process: its PID, base URL and log file."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    @property
    def webhook_url(self) -> str:
        return f"{self.url}/webhooks/github"

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def serve_process(
    tmp_path: Path, *, env: dict[str, str | None] | None = None, args: tuple[str, ...] = ()
) -> Iterator[ReceiverProcess]:
    """``previews serve`` on a free port with a fresh outbox; ``env`` values of None unset a variable."""
    port = free_port()
    merged: dict[str, str | None] = {
        **os.environ,
        "PREVIEWS_WEBHOOK_SECRET": SECRET,
        "PREVIEWS_OUTBOX_PATH": str(tmp_path / f"outbox-{port}.sqlite3"),
        "PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api",
        **(env or {}),
    }
    log = tmp_path / f"serve-{port}.log"
    argv = [PREVIEWS, "serve", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*argv, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in merged.items() if v is not None},
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60, proc=proc, log=log)
        yield ReceiverProcess(proc, f"http://127.0.0.1:{port}", log)
    finally:
        stop(proc)
