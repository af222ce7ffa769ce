"""The webhook receiver: ``POST /webhooks/github`` -> verify -> durable outbox -> (forwarder) -> Prefect.

Order of checks on a delivery: a free slot (at most ``PREVIEWS_MAX_CONCURRENT_DELIVERIES`` are read and
processed at once; as many more may wait for one, and the rest, or one that waited past the deadline, get 503
with ``Retry-After``), body size (413, before the body is read in full), slot and whole body within
``PREVIEWS_BODY_READ_TIMEOUT`` seconds of the request (408), signature over the raw bytes (401), headers
and body (400), event type (``ping`` 200, anything but ``pull_request`` 202 ignored), allow-list (403),
payload validation (400 naming the field), then the outbox commit and 202: ``accepted``, or ``duplicate``
when the delivery id or the signed body is already in the outbox (a redelivery, or a captured body replayed
under a new id), which starts nothing. Every refusal is a one-line JSON ``{"error": "..."}`` and leaves the
outbox untouched; one that leaves the body unread also closes the connection. A client that goes away
mid-body costs one INFO line. Payloads and secrets are never logged.

Memory is bounded by the limits, whoever sends the requests, signed or not: at most
``PREVIEWS_MAX_CONCURRENT_DELIVERIES`` bodies of at most ``PREVIEWS_MAX_BODY_BYTES`` are held at once; a
waiting delivery's body stays in the kernel and uvicorn's read buffer (64 KiB, then reading pauses).

Without ``PREVIEWS_WEBHOOK_SECRET`` there is no receiver (:func:`require_secret`), unless the caller asks
for an insecure one (``previews serve --insecure-no-signature``): it then accepts unsigned deliveries, warns
loudly, and still refuses any delivery that carries a signature, since none can be checked.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
import httpx
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from previews.core.events import PullRequestEvent, parse_pull_request_event, prefect_event
from previews.core.names import parse_repository
from previews.errors import SignatureError, ValidationError
from previews.github.webhooks import SIGNATURE_HEADER, parse_delivery, verify_signature
from previews.ingress.forwarder import Forwarder, prefect_headers
from previews.ingress.outbox import GroupCommit, NewEntry, Outbox, OutboxError
from previews.settings import Settings

log = logging.getLogger("previews.ingress")

INSECURE_WARNING = (
    "INSECURE: started with --insecure-no-signature and no PREVIEWS_WEBHOOK_SECRET: unsigned deliveries are "
    "accepted, so anyone who can reach this port can start builds. For local experiments only."
)


class _TooLarge(Exception):
    pass


def allowed_repositories(value: str) -> frozenset[str]:
    """Parse ``PREVIEWS_ALLOWED_REPOSITORIES`` (comma-separated ``owner/name``) into lower-cased names."""
    names = (item.strip() for item in value.split(","))
    return frozenset(
        parse_repository(name, field="PREVIEWS_ALLOWED_REPOSITORIES").lower() for name in names if name
    )


def require_secret(settings: Settings, *, allow_unsigned: bool = False) -> SecretStr | None:
    """The webhook secret; without one, None if ``allow_unsigned`` (with a loud warning), else refuse.

    Raises :class:`ValidationError` naming ``PREVIEWS_WEBHOOK_SECRET`` when it is unset or empty and
    unsigned deliveries were not explicitly allowed.
    """
    secret = settings.webhook_secret
    if secret is not None and secret.get_secret_value():
        return secret
    if not allow_unsigned:
        raise ValidationError(
            "PREVIEWS_WEBHOOK_SECRET",
            "not set; the receiver checks every delivery's X-Hub-Signature-256 and does not start without "
            "it (set it to the GitHub webhook's secret, or pass --insecure-no-signature for a local experiment)",
        )
    log.warning(INSECURE_WARNING)
    return None


def _error(status: int, message: str, *, close: bool = False, retry_after: int | None = None) -> JSONResponse:
    headers = {"Connection": "close"} if close else {}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return JSONResponse({"error": message.replace("\n", " ")}, status_code=status, headers=headers)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ValidationError("Content-Length", "is not a number")
        if int(declared) > limit:
            raise _TooLarge
    body = bytearray()
    async for chunk in request.stream():
        if len(body) + len(chunk) > limit:
            raise _TooLarge
        body += chunk
    return bytes(body)


def _client(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "unknown client"


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


def create_app(
    settings: Settings, *, forwarder_enabled: bool = True, allow_unsigned: bool = False
) -> Starlette:
    """The receiver app. ``app.state.outbox`` and ``app.state.forwarder`` are exposed for tests and the CLI.

    Raises :class:`ValidationError` when ``PREVIEWS_WEBHOOK_SECRET`` is unset and ``allow_unsigned`` is
    false (see :func:`require_secret`).
    """
    secret = require_secret(settings, allow_unsigned=allow_unsigned)
    allowed = allowed_repositories(settings.allowed_repositories)
    limit = settings.max_body_bytes
    read_timeout = settings.body_read_timeout
    max_in_flight = settings.max_concurrent_deliveries
    outbox = Outbox(settings.outbox_path)
    committer = GroupCommit(outbox)
    forwarder = build_forwarder(settings, outbox)
    health_headers = prefect_headers(settings.prefect_api_key, settings.prefect_api_auth_string)
    slots = asyncio.Semaphore(max_in_flight)
    load = {"in_flight": 0, "waiting": 0}

    async def webhook(request: Request) -> Response:
        deadline = asyncio.get_running_loop().time() + read_timeout  # for a slot and the whole body
        if slots.locked():
            if load["waiting"] >= max_in_flight:
                return refuse_busy(request)
            load["waiting"] += 1
            try:
                async with asyncio.timeout_at(deadline):
                    await slots.acquire()
            except TimeoutError:
                return refuse_busy(request)
            finally:
                load["waiting"] -= 1
        else:
            await slots.acquire()
        load["in_flight"] += 1
        try:
            received = await receive(request, deadline)
        finally:  # the body is dropped here: a delivery waiting for its commit holds only its small event
            load["in_flight"] -= 1
            slots.release()
        if isinstance(received, Response):
            return received
        return await store(*received)

    def refuse_busy(request: Request) -> Response:
        log.warning(
            "refused a delivery from %s: %d deliveries in flight and %d waiting "
            "(PREVIEWS_MAX_CONCURRENT_DELIVERIES=%d)",
            _client(request),
            load["in_flight"],
            load["waiting"],
            max_in_flight,
        )
        return _error(503, "too many deliveries in flight; retry later", close=True, retry_after=1)

    async def receive(request: Request, deadline: float) -> Response | tuple[NewEntry, PullRequestEvent]:
        """Read, verify and validate one delivery: a refusal or answer, or the entry to store."""
        try:
            async with asyncio.timeout_at(deadline):
                body = await _read_body(request, limit)
        except _TooLarge:
            log.warning("refused a delivery from %s: body larger than %d bytes", _client(request), limit)
            return _error(413, f"body larger than {limit} bytes", close=True)
        except TimeoutError:
            log.warning(
                "refused a delivery from %s: body not received within %g s", _client(request), read_timeout
            )
            return _error(408, f"body not received within {read_timeout:g} s", close=True)
        except ClientDisconnect:
            log.info("client %s went away before sending the whole body; nothing stored", _client(request))
            return Response(status_code=400)  # nobody is left to read it
        except ValidationError as exc:
            return _error(400, str(exc), close=True)
        header = request.headers.get(SIGNATURE_HEADER)
        try:
            if secret is not None:
                verify_signature(body, header, secret)
            elif header is not None:
                raise SignatureError(
                    f"{SIGNATURE_HEADER} cannot be checked: PREVIEWS_WEBHOOK_SECRET is not set on this receiver"
                )
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
        entry = NewEntry(
            delivery=event.delivery,
            event=prefect_event(event),
            repository=event.repository,
            number=event.number,
            body_sha256=hashlib.sha256(body).hexdigest(),
        )
        return entry, event

    async def store(entry: NewEntry, event: PullRequestEvent) -> Response:
        """Commit ``entry`` (shared with concurrent deliveries) and answer 202 once it is on disk."""
        try:
            added = await committer.add(entry)
        except OutboxError as exc:
            log.error("could not store delivery %s: %s", event.delivery, exc)
            return _error(503, "the outbox is unavailable; retry the delivery")
        if added.stored:
            status = "accepted"
            forwarder.wake()
        else:
            status = "duplicate"
        same = (
            ""
            if added.duplicate_of in (None, event.delivery)
            else f" (same signed body as {added.duplicate_of})"
        )
        log.info(
            "delivery %s %s%s: %s %s#%d%s",
            event.delivery,
            status,
            same,
            event.event_name,
            event.repository,
            event.number,
            "" if secret is not None else " WITHOUT a signature check",
        )
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
            "signatures": "required" if secret is not None else "not checked (--insecure-no-signature)",
            "deliveries": {**load, "limit": max_in_flight},
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
