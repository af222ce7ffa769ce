"""Forward outbox entries to Prefect's ``POST /api/events`` until Prefect accepts them.

Prefect answers 204 once it has taken a batch; only then are the entries marked delivered. While Prefect is
unreachable (or answers 5xx, 429, 404 for a wrong URL, or refuses our credentials) the entries stay pending
and the forwarder backs off exponentially up to a cap. A batch refused with another 4xx is re-sent one event
at a time so a single bad event is set aside as ``rejected`` without holding up the others.
``prefect.events.emit_event`` is not used: it drops events silently when the server is down.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
import time
from typing import Any

import anyio.to_thread
import httpx
from pydantic import SecretStr

from previews.errors import AuthError, PreviewsError, TransientError
from previews.ingress.outbox import Outbox, OutboxEntry
from previews.redact import redact_url

log = logging.getLogger("previews.ingress.forwarder")

DEFAULT_API_URL = "http://127.0.0.1:4200/api"
_TRANSIENT_STATUS = {404, 408, 425, 429}


def prefect_headers(api_key: SecretStr | None, auth_string: SecretStr | None) -> dict[str, str]:
    """Authorization for Prefect Cloud (``PREFECT_API_KEY``) or a server with ``PREFECT_API_AUTH_STRING``."""
    if api_key is not None and api_key.get_secret_value():
        return {"Authorization": f"Bearer {api_key.get_secret_value()}"}
    if auth_string is not None and auth_string.get_secret_value():
        token = base64.b64encode(auth_string.get_secret_value().encode()).decode("ascii")
        return {"Authorization": f"Basic {token}"}
    return {}


class Forwarder:
    """Posts pending outbox entries to ``{api_url}/events``; ``forward_pending()`` is one pass."""

    def __init__(
        self,
        outbox: Outbox,
        *,
        api_url: str | None,
        api_key: SecretStr | None = None,
        auth_string: SecretStr | None = None,
        batch_size: int = 50,
        timeout: float = 10.0,
        poll_seconds: float = 1.0,
        max_backoff: float = 30.0,
        retention_seconds: float | None = None,
    ) -> None:
        self.outbox = outbox
        self.api_url = (api_url or DEFAULT_API_URL).rstrip("/")
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self.max_backoff = max_backoff
        self.retention_seconds = retention_seconds
        self._client = httpx.Client(
            headers={"Content-Type": "application/json", **prefect_headers(api_key, auth_string)},
            timeout=timeout,
            follow_redirects=False,
        )
        self._wake: asyncio.Event | None = None
        self.consecutive_failures = 0
        self.last_error: str | None = None
        self.last_success: float | None = None
        self.forwarded_total = 0

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()

    def wake(self) -> None:
        """Ask the running loop for a pass now (called from the event loop after an ``add``)."""
        if self._wake is not None:
            self._wake.set()

    def _post(self, entries: list[OutboxEntry]) -> httpx.Response:
        url = f"{self.api_url}/events"
        body = [entry.prefect_event() for entry in entries]
        try:
            return self._client.post(url, json=body)
        except httpx.TransportError as exc:
            raise TransientError(f"cannot reach Prefect at {redact_url(url)}: {type(exc).__name__}") from exc

    def _send(self, entries: list[OutboxEntry]) -> int:
        """Post ``entries``; mark them delivered on 2xx. Raises for failures that concern every entry."""
        deliveries = [entry.delivery for entry in entries]
        try:
            response = self._post(entries)
        except TransientError as exc:
            self.outbox.mark_failed(deliveries, str(exc))
            raise
        status = response.status_code
        if 200 <= status < 300:
            return self.outbox.mark_delivered(deliveries)
        reason = f"Prefect answered {status} to POST /events"
        if status in (401, 403):
            self.outbox.mark_failed(deliveries, reason)
            raise AuthError(f"{reason}: check PREFECT_API_KEY / PREFECT_API_AUTH_STRING", status=status)
        if status >= 500 or status in _TRANSIENT_STATUS:
            self.outbox.mark_failed(deliveries, reason)
            raise TransientError(reason, status=status)
        if len(entries) > 1:
            return sum(self._send([entry]) for entry in entries)
        detail = response.text.strip().replace("\n", " ")[:300]
        log.error("Prefect rejected the event of delivery %s: %s %s", deliveries[0], reason, detail)
        self.outbox.mark_failed(deliveries, f"{reason}: {detail}", rejected=True)
        return 0

    def forward_pending(self) -> int:
        """Send every pending entry, oldest first, in batches; return how many Prefect accepted.

        Raises :class:`TransientError` (or :class:`AuthError`) when Prefect cannot take events now; the
        entries not yet accepted stay pending with ``attempts`` and ``last_error`` updated.
        """
        total = 0
        seen: set[str] = set()
        while True:
            batch = [e for e in self.outbox.pending(self.batch_size) if e.delivery not in seen]
            if not batch:
                break
            seen.update(e.delivery for e in batch)
            total += self._send(batch)
        if total:
            self.forwarded_total += total
            log.info("forwarded %d event(s) to Prefect", total)
        return total

    def backoff(self) -> float:
        """Seconds to wait after ``consecutive_failures`` failures: 0.5 s doubling, capped, with jitter."""
        base = min(self.max_backoff, 0.5 * 2 ** max(0, self.consecutive_failures - 1))
        return float(base * random.uniform(0.8, 1.0))

    def purge(self) -> int:
        """Delete delivered entries older than the retention."""
        if self.retention_seconds is None:
            return 0
        return self.outbox.purge(older_than_seconds=self.retention_seconds)

    async def run(self) -> None:
        """Forward until cancelled: on every wake-up or poll tick, backing off while Prefect is down."""
        self._wake = asyncio.Event()
        next_purge = 0.0
        while True:
            self._wake.clear()
            try:
                await anyio.to_thread.run_sync(self.forward_pending)
                if time.monotonic() >= next_purge:
                    purged = await anyio.to_thread.run_sync(self.purge)
                    if purged:
                        log.info("purged %d delivered outbox entr(y/ies) past retention", purged)
                    next_purge = time.monotonic() + 600
            except Exception as exc:  # the loop must outlive any one failure; entries stay pending
                self.consecutive_failures += 1
                self.last_error = str(exc) if isinstance(exc, PreviewsError) else type(exc).__name__
                delay = self.backoff()
                log.warning(
                    "forwarding paused %.1fs after %d failure(s): %s",
                    delay,
                    self.consecutive_failures,
                    self.last_error,
                    exc_info=not isinstance(exc, PreviewsError),
                )
                await asyncio.sleep(delay)
                continue
            if self.consecutive_failures:
                log.info("Prefect accepts events again after %d failure(s)", self.consecutive_failures)
            self.consecutive_failures = 0
            self.last_error = None
            self.last_success = time.time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_seconds)

    def status(self) -> dict[str, Any]:
        """What ``/healthz`` shows about forwarding."""
        return {
            "consecutive_failures": self.consecutive_failures,
            "last_error": self.last_error,
            "forwarded": self.forwarded_total,
        }
