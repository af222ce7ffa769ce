"""The webhook receiver: ``POST /webhooks/github`` -> verify -> durable outbox -> (forwarder) -> Prefect.

Order of checks on a delivery: a free slot (at most ``PREVIEWS_MAX_CONCURRENT_DELIVERIES`` are read and
processed at once; as many more may wait for one, and the rest, or one that waited past the deadline, get 503
with ``Retry-After``), body size (413, before the body is read in full), slot and whole body within
``PREVIEWS_BODY_READ_TIMEOUT`` seconds of the request (408), signature over the raw bytes (401), headers
and body (400), event type (``ping`` 200; ``check_run``/``check_suite`` are the Re-run button, see
:mod:`previews.core.rerequest`, answered 202 ``ignored`` with a reason when they start nothing; anything else
but ``pull_request`` 202 ignored), allow-list (403),
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
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
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
from previews.core.rerequest import (
    CHECK_EVENTS,
    Ignored,
    RerequestEvent,
    parse_rerequest,
    rerequest_prefect_event,
)
from previews.errors import SignatureError, ValidationError
from previews.github.webhooks import SIGNATURE_HEADER, parse_delivery, verify_signature
from previews.ingress.forwarder import Forwarder
from previews.ingress.outbox import GroupCommit, NewEntry, Outbox, OutboxError

log = logging.getLogger("previews.ingress")

INSECURE_WARNING = (
    "INSECURE: started with --insecure-no-signature and no PREVIEWS_WEBHOOK_SECRET: unsigned deliveries are "
    "accepted, so anyone who can reach this port can start builds. For local experiments only."
)


class _TooLarge(Exception):
    pass


Stored = PullRequestEvent | RerequestEvent  # what a stored delivery was


def allowed_repositories(value: str) -> frozenset[str]:
    """Parse ``PREVIEWS_ALLOWED_REPOSITORIES`` (comma-separated ``owner/name``) into lower-cased names."""
    names = (item.strip() for item in value.split(","))
    return frozenset(
        parse_repository(name, field="PREVIEWS_ALLOWED_REPOSITORIES").lower() for name in names if name
    )


def require_secret(secret: SecretStr | None, *, allow_unsigned: bool = False) -> SecretStr | None:
    """The webhook secret; without one, None if ``allow_unsigned`` (with a loud warning), else refuse.

    Raises :class:`ValidationError` naming ``PREVIEWS_WEBHOOK_SECRET`` when it is unset or empty and
    unsigned deliveries were not explicitly allowed.
    """
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


@dataclass(frozen=True, slots=True)
class ReceiverConfig:
    """What the receiver checks and how much it takes on (``PREVIEWS_*``; see :func:`require_secret`).

    ``webhook_secret`` None means unsigned deliveries are accepted (``--insecure-no-signature``).
    """

    webhook_secret: SecretStr | None
    allowed_repositories: frozenset[str] = frozenset()
    max_body_bytes: int = 1024 * 1024
    body_read_timeout: float = 10.0
    max_concurrent_deliveries: int = 64
    health_headers: Mapping[str, str] = field(default_factory=dict)
    # The "Re-run" button: rerequests of checks owned by this App and named so (core/rerequest.py).
    check_app_id: int | None = None
    check_name: str = "preview-image"


class _Receiver:
    """The receiver's handlers over one outbox, its group commit and the forwarder."""

    def __init__(
        self, config: ReceiverConfig, outbox: Outbox, forwarder: Forwarder, forwarder_enabled: bool
    ) -> None:
        self.config, self.outbox, self.forwarder = config, outbox, forwarder
        self.forwarder_enabled = forwarder_enabled
        self.secret = config.webhook_secret
        self.committer = GroupCommit(outbox)
        self.slots = asyncio.Semaphore(config.max_concurrent_deliveries)
        self.load = {"in_flight": 0, "waiting": 0}

    async def webhook(self, request: Request) -> Response:
        """``POST /webhooks/github``: a slot, then read, verify, validate, store and answer."""
        deadline = asyncio.get_running_loop().time() + self.config.body_read_timeout  # slot and whole body
        if self.slots.locked():
            if self.load["waiting"] >= self.config.max_concurrent_deliveries:
                return self._refuse_busy(request)
            self.load["waiting"] += 1
            try:
                async with asyncio.timeout_at(deadline):
                    await self.slots.acquire()
            except TimeoutError:
                return self._refuse_busy(request)
            finally:
                self.load["waiting"] -= 1
        else:
            await self.slots.acquire()
        self.load["in_flight"] += 1
        try:
            received = await self._receive(request, deadline)
        finally:  # the body is dropped here: a delivery waiting for its commit holds only its small event
            self.load["in_flight"] -= 1
            self.slots.release()
        if isinstance(received, Response):
            return received
        return await self._store(*received)

    def _refuse_busy(self, request: Request) -> Response:
        log.warning(
            "refused a delivery from %s: %d deliveries in flight and %d waiting "
            "(PREVIEWS_MAX_CONCURRENT_DELIVERIES=%d)",
            _client(request),
            self.load["in_flight"],
            self.load["waiting"],
            self.config.max_concurrent_deliveries,
        )
        return _error(503, "too many deliveries in flight; retry later", close=True, retry_after=1)

    async def _receive(self, request: Request, deadline: float) -> Response | tuple[NewEntry, Stored]:
        """Read, verify and validate one delivery: a refusal or answer, or the entry to store."""
        body = await self._read(request, deadline)
        if isinstance(body, Response):
            return body
        header = request.headers.get(SIGNATURE_HEADER)
        try:
            if self.secret is not None:
                verify_signature(body, header, self.secret)
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
        if delivery.event in CHECK_EVENTS:
            return self._rerequest(delivery.event, delivery.payload, delivery.delivery, body)
        if delivery.event != "pull_request":
            answer = {"status": "ignored", "event": delivery.event, "delivery": delivery.delivery}
            return JSONResponse(answer, status_code=202)
        return self._entry(delivery.payload, delivery.delivery, body)

    async def _read(self, request: Request, deadline: float) -> bytes | Response:
        """The whole body within the deadline and the size limit, else the refusal."""
        limit, read_timeout = self.config.max_body_bytes, self.config.body_read_timeout
        try:
            async with asyncio.timeout_at(deadline):
                return await _read_body(request, limit)
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

    def _refused_repository(self, payload: dict[str, Any], delivery: str) -> Response | None:
        """403 for a repository outside ``PREVIEWS_ALLOWED_REPOSITORIES`` (when set), else None."""
        allowed = self.config.allowed_repositories
        repo = payload.get("repository")
        full_name = repo.get("full_name") if isinstance(repo, dict) else None
        if allowed and (not isinstance(full_name, str) or full_name.lower() not in allowed):
            log.warning("refused delivery %s: repository not allowed", delivery)
            return _error(403, "repository is not in PREVIEWS_ALLOWED_REPOSITORIES")
        return None

    def _rerequest(
        self, kind: str, payload: dict[str, Any], delivery: str, body: bytes
    ) -> Response | tuple[NewEntry, Stored]:
        """A check's "Re-run": the entry that starts one run, an ``ignored`` answer saying why not, or 4xx."""
        refused = self._refused_repository(payload, delivery)
        if refused is not None:
            return refused
        try:
            event = parse_rerequest(
                kind,
                payload,
                delivery=delivery,
                check_name=self.config.check_name,
                app_id=self.config.check_app_id,
            )
        except ValidationError as exc:
            log.warning("refused delivery %s: %s", delivery, exc)
            return _error(400, str(exc))
        if isinstance(event, Ignored):
            log.info("delivery %s (%s) ignored: %s", delivery, kind, event.reason)
            answer = {"status": "ignored", "event": kind, "delivery": delivery, "reason": event.reason}
            return JSONResponse(answer, status_code=202)
        entry = NewEntry(
            delivery=event.delivery,
            event=rerequest_prefect_event(event),
            repository=event.repository,
            number=event.number,
            body_sha256=hashlib.sha256(body).hexdigest(),
        )
        return entry, event

    def _entry(
        self, payload: dict[str, Any], delivery: str, body: bytes
    ) -> Response | tuple[NewEntry, Stored]:
        """The outbox entry of a valid delivery from an allowed repository, else the refusal."""
        refused = self._refused_repository(payload, delivery)
        if refused is not None:
            return refused
        try:
            event = parse_pull_request_event(payload, delivery=delivery)
        except ValidationError as exc:
            log.warning("refused delivery %s: %s", delivery, exc)
            return _error(400, str(exc))
        entry = NewEntry(
            delivery=event.delivery,
            event=prefect_event(event),
            repository=event.repository,
            number=event.number,
            body_sha256=hashlib.sha256(body).hexdigest(),
        )
        return entry, event

    async def _store(self, entry: NewEntry, event: Stored) -> Response:
        """Commit ``entry`` (shared with concurrent deliveries) and answer 202 once it is on disk."""
        try:
            added = await self.committer.add(entry)
        except OutboxError as exc:
            log.error("could not store delivery %s: %s", event.delivery, exc)
            return _error(503, "the outbox is unavailable; retry the delivery")
        if added.stored:
            status = "accepted"
            self.forwarder.wake()
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
            "" if self.secret is not None else " WITHOUT a signature check",
        )
        return JSONResponse({"status": status, "delivery": event.delivery}, status_code=202)

    async def healthz(self, request: Request) -> JSONResponse:
        """``GET /healthz``: the outbox's depth, whether Prefect answers, the load, the forwarder's state."""
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
            "signatures": "required" if self.secret is not None else "not checked (--insecure-no-signature)",
            "deliveries": {**self.load, "limit": self.config.max_concurrent_deliveries},
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
    """The receiver app. ``app.state.outbox`` and ``app.state.forwarder`` are exposed for tests and the CLI.

    The secret was checked already (:func:`require_secret`): ``config.webhook_secret`` None means unsigned.
    """
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
