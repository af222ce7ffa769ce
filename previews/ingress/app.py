"""The webhook receiver: ``POST /webhooks/github`` -> verify -> durable outbox -> (forwarder) -> Prefect.

Order of checks on a delivery: body size (413, before the body is read in full), signature over the raw bytes
(401), headers and body (400), event type (``ping`` 200, anything but ``pull_request`` 202 ignored), allow-list
(403), payload validation (400 naming the field), then the outbox commit and 202. Every refusal is a one-line
JSON ``{"error": "..."}`` and leaves the outbox untouched. Payloads and secrets are never logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from previews.core.events import PullRequestEvent, parse_pull_request_event, prefect_event
from previews.core.names import parse_repository
from previews.errors import SignatureError, ValidationError
from previews.github.webhooks import SIGNATURE_HEADER, parse_delivery, verify_signature
from previews.ingress.forwarder import Forwarder
from previews.ingress.outbox import Outbox, OutboxError

log = logging.getLogger("previews.ingress")


class _TooLarge(Exception):
    pass


def allowed_repositories(value: str) -> frozenset[str]:
    """Parse ``PREVIEWS_ALLOWED_REPOSITORIES`` (comma-separated ``owner/name``) into lower-cased names."""
    names = (item.strip() for item in value.split(","))
    return frozenset(
        parse_repository(name, field="PREVIEWS_ALLOWED_REPOSITORIES").lower() for name in names if name
    )


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message.replace("\n", " ")}, status_code=status)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ValidationError("Content-Length", "is not a number")
        if int(declared) > limit:
            raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass(frozen=True, slots=True)
class ReceiverConfig:
    """What the receiver checks: the webhook secret, the allowed repositories (empty: any), the body limit."""

    webhook_secret: SecretStr | None
    allowed_repositories: frozenset[str]
    max_body_bytes: int
    health_headers: Mapping[str, str] = field(default_factory=dict)


class _Receiver:
    """The receiver's handlers over one outbox and forwarder."""

    def __init__(
        self, config: ReceiverConfig, outbox: Outbox, forwarder: Forwarder, forwarder_enabled: bool
    ) -> None:
        self.config, self.outbox, self.forwarder = config, outbox, forwarder
        self.forwarder_enabled = forwarder_enabled
        secret = config.webhook_secret
        self.key = secret if secret is not None and secret.get_secret_value() else None
        if self.key is None:
            log.warning(
                "PREVIEWS_WEBHOOK_SECRET is not set: deliveries are accepted without a signature check"
            )

    async def webhook(self, request: Request) -> JSONResponse:
        """``POST /webhooks/github``: verify, validate, store, answer 202 (or say why not)."""
        checked = await self._check(request)
        if isinstance(checked, JSONResponse):
            return checked
        return await self._store(checked)

    async def _check(self, request: Request) -> JSONResponse | PullRequestEvent:
        """Size, signature, headers, event type, allow-list and payload, in that order."""
        limit = self.config.max_body_bytes
        try:
            body = await _read_body(request, limit)
        except _TooLarge:
            return _error(413, f"body larger than {limit} bytes")
        except ValidationError as exc:
            return _error(400, str(exc))
        try:
            if self.key is not None:
                verify_signature(body, request.headers.get(SIGNATURE_HEADER), self.key)
            delivery = parse_delivery(request.headers, body)
        except SignatureError as exc:
            log.warning("refused a delivery: %s", exc)
            return _error(401, str(exc))
        except ValidationError as exc:
            log.warning("refused a delivery: %s", exc)
            return _error(400, str(exc))
        if delivery.event == "ping":
            return JSONResponse({"status": "pong", "delivery": delivery.delivery})
        if delivery.event != "pull_request":
            answer = {"status": "ignored", "event": delivery.event, "delivery": delivery.delivery}
            return JSONResponse(answer, status_code=202)
        return self._event(delivery.payload, delivery.delivery)

    def _event(self, payload: dict[str, Any], delivery: str) -> JSONResponse | PullRequestEvent:
        """The validated event of an allowed repository, else the refusal."""
        allowed = self.config.allowed_repositories
        repo = payload.get("repository")
        full_name = repo.get("full_name") if isinstance(repo, dict) else None
        if allowed and (not isinstance(full_name, str) or full_name.lower() not in allowed):
            log.warning("refused delivery %s: repository not allowed", delivery)
            return _error(403, "repository is not in PREVIEWS_ALLOWED_REPOSITORIES")
        try:
            return parse_pull_request_event(payload, delivery=delivery)
        except ValidationError as exc:
            log.warning("refused delivery %s: %s", delivery, exc)
            return _error(400, str(exc))

    async def _store(self, event: PullRequestEvent) -> JSONResponse:
        """Commit the event to the outbox before answering; wake the forwarder for a new one."""
        try:
            added = await run_in_threadpool(
                self.outbox.add,
                delivery=event.delivery,
                event=prefect_event(event),
                repository=event.repository,
                number=event.number,
            )
        except OutboxError as exc:
            log.error("could not store delivery %s: %s", event.delivery, exc)
            return _error(503, "the outbox is unavailable; retry the delivery")
        status = "accepted" if added else "duplicate"
        log.info(
            "delivery %s %s: %s %s#%d",
            event.delivery,
            status,
            event.event_name,
            event.repository,
            event.number,
        )
        if added:
            self.forwarder.wake()
        return JSONResponse({"status": status, "delivery": event.delivery}, status_code=202)

    async def healthz(self, request: Request) -> JSONResponse:
        """``GET /healthz``: the outbox's depth, whether Prefect answers, the forwarder's state."""
        stats = await run_in_threadpool(self.outbox.stats)
        reachable = False
        with suppress(httpx.HTTPError):
            async with httpx.AsyncClient(timeout=2.0, headers=dict(self.config.health_headers)) as client:
                reachable = (await client.get(f"{self.forwarder.api_url}/health")).status_code == 200
        oldest = stats.oldest_pending_age
        body: dict[str, Any] = {
            "status": "ok",
            "outbox": {
                "pending": stats.pending,
                "delivered": stats.delivered,
                "rejected": stats.rejected,
                "oldest_pending_age_seconds": None if oldest is None else round(oldest, 3),
            },
            "prefect": {"reachable": reachable},
            "forwarder": {"enabled": self.forwarder_enabled, **self.forwarder.status()},
            "time": time.time(),
        }
        return JSONResponse(body)

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """Run the forwarder beside the app; close the forwarder and the outbox at shutdown."""
        async with anyio.create_task_group() as group:
            if self.forwarder_enabled:
                group.start_soon(self.forwarder.run)
            try:
                yield
            finally:
                group.cancel_scope.cancel()
        self.forwarder.close()
        self.outbox.close()


def create_app(
    config: ReceiverConfig, *, outbox: Outbox, forwarder: Forwarder, forwarder_enabled: bool = True
) -> Starlette:
    """The receiver app. ``app.state.outbox`` and ``app.state.forwarder`` are exposed for tests and the CLI."""
    receiver = _Receiver(config, outbox, forwarder, forwarder_enabled)
    app = Starlette(
        routes=[
            Route("/webhooks/github", receiver.webhook, methods=["POST"]),
            Route("/healthz", receiver.healthz, methods=["GET"]),
        ],
        lifespan=receiver.lifespan,
    )
    app.state.outbox = outbox
    app.state.forwarder = forwarder
    return app
