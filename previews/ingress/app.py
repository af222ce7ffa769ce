"""The webhook receiver: ``POST /webhooks/github`` -> verify -> durable outbox -> (forwarder) -> Prefect.

Order of checks on a delivery: body size (413, before the body is read in full), signature over the raw bytes
(401), headers and body (400), event type (``ping`` 200, anything but ``pull_request`` 202 ignored), allow-list
(403), payload validation (400 naming the field), then the outbox commit and 202. Every refusal is a one-line
JSON ``{"error": "..."}`` and leaves the outbox untouched. Payloads and secrets are never logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
import httpx
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from previews.core.events import parse_pull_request_event, prefect_event
from previews.core.names import parse_repository
from previews.errors import SignatureError, ValidationError
from previews.github.webhooks import SIGNATURE_HEADER, parse_delivery, verify_signature
from previews.ingress.forwarder import Forwarder, prefect_headers
from previews.ingress.outbox import Outbox, OutboxError
from previews.settings import Settings

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


def build_forwarder(settings: Settings, outbox: Outbox) -> Forwarder:
    """The forwarder configured from ``settings`` (``PREFECT_API_URL`` etc.)."""
    return Forwarder(
        outbox,
        api_url=settings.prefect_api_url,
        api_key=settings.prefect_api_key,
        auth_string=settings.prefect_api_auth_string,
        batch_size=settings.forwarder_batch_size,
        poll_seconds=settings.forwarder_poll_seconds,
        max_backoff=settings.forwarder_max_backoff,
        retention_seconds=settings.outbox_retention_hours * 3600,
    )


def create_app(settings: Settings, *, forwarder_enabled: bool = True) -> Starlette:
    """The receiver app. ``app.state.outbox`` and ``app.state.forwarder`` are exposed for tests and the CLI."""
    allowed = allowed_repositories(settings.allowed_repositories)
    secret = settings.webhook_secret
    limit = settings.max_body_bytes
    outbox = Outbox(settings.outbox_path)
    forwarder = build_forwarder(settings, outbox)
    health_headers = prefect_headers(settings.prefect_api_key, settings.prefect_api_auth_string)
    key = secret if secret is not None and secret.get_secret_value() else None
    if key is None:
        log.warning("PREVIEWS_WEBHOOK_SECRET is not set: deliveries are accepted without a signature check")

    async def webhook(request: Request) -> JSONResponse:
        try:
            body = await _read_body(request, limit)
        except _TooLarge:
            return _error(413, f"body larger than {limit} bytes")
        except ValidationError as exc:
            return _error(400, str(exc))
        try:
            if key is not None:
                verify_signature(body, request.headers.get(SIGNATURE_HEADER), key)
        except SignatureError as exc:
            log.warning("refused a delivery: %s", exc)
            return _error(401, str(exc))
        try:
            delivery = parse_delivery(request.headers, body)
        except ValidationError as exc:
            log.warning("refused a delivery: %s", exc)
            return _error(400, str(exc))
        if delivery.event == "ping":
            return JSONResponse({"status": "pong", "delivery": delivery.delivery})
        if delivery.event != "pull_request":
            return JSONResponse(
                {"status": "ignored", "event": delivery.event, "delivery": delivery.delivery}, status_code=202
            )
        repo = delivery.payload.get("repository")
        full_name = repo.get("full_name") if isinstance(repo, dict) else None
        if allowed and (not isinstance(full_name, str) or full_name.lower() not in allowed):
            log.warning("refused delivery %s: repository not allowed", delivery.delivery)
            return _error(403, "repository is not in PREVIEWS_ALLOWED_REPOSITORIES")
        try:
            event = parse_pull_request_event(delivery.payload, delivery=delivery.delivery)
        except ValidationError as exc:
            log.warning("refused delivery %s: %s", delivery.delivery, exc)
            return _error(400, str(exc))
        item = prefect_event(event)
        try:
            added = await run_in_threadpool(
                outbox.add,
                delivery=event.delivery,
                event=item,
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
            forwarder.wake()
        return JSONResponse({"status": status, "delivery": event.delivery}, status_code=202)

    async def healthz(request: Request) -> JSONResponse:
        stats = await run_in_threadpool(outbox.stats)
        reachable = False
        with suppress(httpx.HTTPError):
            async with httpx.AsyncClient(timeout=2.0, headers=health_headers) as client:
                reachable = (await client.get(f"{forwarder.api_url}/health")).status_code == 200
        body: dict[str, Any] = {
            "status": "ok",
            "outbox": {
                "pending": stats.pending,
                "delivered": stats.delivered,
                "rejected": stats.rejected,
                "oldest_pending_age_seconds": None
                if stats.oldest_pending_age is None
                else round(stats.oldest_pending_age, 3),
            },
            "prefect": {"reachable": reachable},
            "forwarder": {"enabled": forwarder_enabled, **forwarder.status()},
            "time": time.time(),
        }
        return JSONResponse(body)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with anyio.create_task_group() as group:
            if forwarder_enabled:
                group.start_soon(forwarder.run)
            try:
                yield
            finally:
                group.cancel_scope.cancel()
        forwarder.close()
        outbox.close()

    app = Starlette(
        routes=[
            Route("/webhooks/github", webhook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.outbox = outbox
    app.state.forwarder = forwarder
    return app
