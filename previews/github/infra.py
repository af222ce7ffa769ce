"""notify-infra: tell the infra repository to create or tear down a PR's preview environment.

Two targets: a GitHub ``repository_dispatch`` on the infra repository (``preview-create`` /
``preview-teardown``), or a generic HTTP webhook for infra that is not on GitHub, signed like GitHub signs
its own webhooks: ``X-Previews-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>`` (a receiver checks
it with :func:`previews.signature.verify_signature`).

``preview-create`` is only sent while the built SHA is still the PR's head, so a late run for an older commit
cannot roll the preview back. Every function returns a :class:`NotifyResult` saying what happened and why.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from pydantic import SecretStr

from previews.core.names import parse_pr_number, parse_repository, parse_sha
from previews.core.outcome import NotifyResult
from previews.errors import InfraNotifyError, TransientInfraNotifyError, ValidationError
from previews.github.client import GitHubClient, validate_dispatch
from previews.http import is_transient, retry_after
from previews.redact import redact_url
from previews.settings import Settings
from previews.signature import sign

log = logging.getLogger("previews.github.infra")

CREATE_EVENT = "preview-create"
TEARDOWN_EVENT = "preview-teardown"
SIGNATURE_HEADER = "X-Previews-Signature-256"
EVENT_HEADER = "X-Previews-Event"
NO_TARGET_REASON = "no infra target configured; nobody was notified"


class InfraTarget(Protocol):
    """Where notifications go. ``send`` raises a ``TransientError`` subclass when retrying may help."""

    @property
    def name(self) -> str:
        """A description safe for logs (no secrets, no query string)."""
        ...

    def send(self, event_type: str, client_payload: Mapping[str, Any]) -> None:
        """Deliver one event."""
        ...


@dataclass(frozen=True, slots=True)
class NoTarget:
    """No usable target; ``reason`` says what is missing."""

    reason: str = NO_TARGET_REASON


class GitHubDispatchTarget:
    """``POST /repos/{repository}/dispatches`` on the infra repository."""

    def __init__(self, client: GitHubClient, repository: str) -> None:
        self.client = client
        self.repository = parse_repository(repository, field="PREVIEWS_INFRA_REPOSITORY")

    @property
    def name(self) -> str:
        """``repository_dispatch to owner/infra``."""
        return f"repository_dispatch to {self.repository}"

    def send(self, event_type: str, client_payload: Mapping[str, Any]) -> None:
        """Send the dispatch (limits checked before sending)."""
        self.client.dispatch(self.repository, event_type, client_payload)


class WebhookTarget:
    """POST ``{"event_type": ..., "client_payload": {...}}`` as JSON to ``url``, HMAC-signed with ``secret``.

    2xx is delivered; 408, 429, 5xx, timeouts and connection errors raise :class:`TransientInfraNotifyError`
    (with ``retry_after`` when the target said how long to wait); other answers, redirects included (the
    signed body goes only to ``url``), raise :class:`InfraNotifyError`.
    """

    def __init__(
        self,
        url: str,
        secret: SecretStr,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValidationError("PREVIEWS_INFRA_WEBHOOK_URL", "must be an http(s) URL")
        if parsed.userinfo:
            raise ValidationError("PREVIEWS_INFRA_WEBHOOK_URL", "must not carry credentials; use the secret")
        if not secret.get_secret_value():
            raise ValidationError("PREVIEWS_INFRA_WEBHOOK_SECRET", "must not be empty")
        self.url = url
        self._secret = secret
        self._timeout = timeout
        self._transport = transport
        self._public = redact_url(url)

    @property
    def name(self) -> str:
        """``webhook <url without query>``."""
        return f"webhook {self._public}"

    def __repr__(self) -> str:
        return f"WebhookTarget({self._public!r})"

    def body(self, event_type: str, client_payload: Mapping[str, Any]) -> bytes:
        """The exact bytes sent (and signed)."""
        validate_dispatch(event_type, client_payload)
        return json.dumps(
            {"event_type": event_type, "client_payload": dict(client_payload)}, separators=(",", ":")
        ).encode()

    def send(self, event_type: str, client_payload: Mapping[str, Any]) -> None:
        """Sign and POST one event."""
        body = self.body(event_type, client_payload)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "previews-infra-notify",
            EVENT_HEADER: event_type,
            SIGNATURE_HEADER: sign(body, self._secret),
        }
        try:
            with httpx.Client(timeout=self._timeout, transport=self._transport) as http:
                response = http.post(self.url, content=body, headers=headers)
        except httpx.TransportError as exc:
            raise TransientInfraNotifyError(f"{self.name}: {type(exc).__name__}") from exc
        if response.is_success:
            return
        status = response.status_code
        text = f"{self.name}: {status} {response.reason_phrase}"
        if is_transient(status):
            wait = retry_after(response.headers, now=time.time())
            raise TransientInfraNotifyError(text, status=status, retry_after=wait)
        raise InfraNotifyError(text, status=status)


def target_from_settings(settings: Settings, client: GitHubClient | None) -> InfraTarget | NoTarget:
    """The configured target: the infra repository (needs GitHub credentials), else the webhook, else none."""
    if settings.infra_repository:
        if client is None:
            return NoTarget(
                "no GitHub credentials for the infra repository (set PREVIEWS_GITHUB_TOKEN or a GitHub App); "
                "nobody was notified"
            )
        return GitHubDispatchTarget(client, settings.infra_repository)
    if settings.infra_webhook_url:
        if settings.infra_webhook_secret is None or not settings.infra_webhook_secret.get_secret_value():
            return NoTarget("PREVIEWS_INFRA_WEBHOOK_SECRET is not set; nobody was notified")
        return WebhookTarget(settings.infra_webhook_url, settings.infra_webhook_secret)
    return NoTarget()


def build_create_payload(
    *,
    image: str,
    digest: str,
    tag: str,
    repository: str,
    pr_number: int,
    sha: str,
    delivery: str | None = None,
) -> dict[str, Any]:
    """The ``preview-create`` client payload: the image pinned by digest, and where it came from (7 keys)."""
    if not digest.startswith("sha256:") or len(digest) != 71:
        raise ValidationError("digest", "must be sha256:<64 hex>")
    if "@" in image or not image:
        raise ValidationError("image", "must be a repository reference without a digest")
    payload: dict[str, Any] = {
        "image": f"{image.rsplit(':', 1)[0] if _has_tag(image) else image}@{digest}",
        "digest": digest,
        "tag": tag,
        "repository": parse_repository(repository),
        "pr": parse_pr_number(pr_number),
        "sha": parse_sha(sha, field="sha"),
        "delivery": delivery,
    }
    validate_dispatch(CREATE_EVENT, payload)
    return payload


def build_teardown_payload(*, repository: str, pr_number: int, delivery: str | None = None) -> dict[str, Any]:
    """The ``preview-teardown`` client payload."""
    payload: dict[str, Any] = {
        "repository": parse_repository(repository),
        "pr": parse_pr_number(pr_number),
        "delivery": delivery,
    }
    validate_dispatch(TEARDOWN_EVENT, payload)
    return payload


def _has_tag(image: str) -> bool:
    """True when the last path component carries ``:tag`` (a registry ``host:port`` is not a tag)."""
    return ":" in image.rsplit("/", 1)[-1]


def notify_create(
    target: InfraTarget | NoTarget | None,
    *,
    client: GitHubClient | None,
    repository: str,
    pr_number: int,
    sha: str,
    image: str,
    digest: str,
    tag: str,
    delivery: str | None = None,
) -> NotifyResult:
    """Send ``preview-create`` unless there is no target or ``sha`` is no longer the open PR's head.

    With ``client`` the PR is read from GitHub first (``GET /repos/{repository}/pulls/{n}``); without one the
    head cannot be checked and the result says so. Errors of the target or of GitHub propagate (transient
    ones are worth the caller's retry).
    """
    payload = build_create_payload(
        image=image,
        digest=digest,
        tag=tag,
        repository=repository,
        pr_number=pr_number,
        sha=sha,
        delivery=delivery,
    )
    if target is None or isinstance(target, NoTarget):
        reason = target.reason if isinstance(target, NoTarget) else NO_TARGET_REASON
        log.warning("%s", reason)
        return NotifyResult(sent=False, target=None, reason=reason)
    checked = ""
    if client is None:
        checked = " (head SHA not checked: no GitHub credentials)"
    else:
        pull = client.get_pull(payload["repository"], payload["pr"])
        if pull.state != "open":
            reason = (
                f"skipped: PR #{pull.number} is {'merged' if pull.merged else 'closed'}; no preview created"
            )
            log.warning("%s", reason)
            return NotifyResult(sent=False, target=target.name, reason=reason)
        if not pull.head_sha.startswith(payload["sha"]):
            reason = f"skipped: {payload['sha'][:12]} is no longer the PR head (head is {pull.head_sha[:12]})"
            log.warning("%s", reason)
            return NotifyResult(sent=False, target=target.name, reason=reason)
    target.send(CREATE_EVENT, payload)
    reason = f"sent {CREATE_EVENT} for {payload['image']} via {target.name}{checked}"
    log.info("%s", reason)
    return NotifyResult(sent=True, target=target.name, reason=reason)


def notify_teardown(
    target: InfraTarget | NoTarget | None,
    *,
    repository: str,
    pr_number: int,
    delivery: str | None = None,
) -> NotifyResult:
    """Send ``preview-teardown`` for a closed PR, or say why nothing was sent."""
    payload = build_teardown_payload(repository=repository, pr_number=pr_number, delivery=delivery)
    if target is None or isinstance(target, NoTarget):
        reason = target.reason if isinstance(target, NoTarget) else NO_TARGET_REASON
        log.warning("%s", reason)
        return NotifyResult(sent=False, target=None, reason=reason)
    target.send(TEARDOWN_EVENT, payload)
    reason = f"sent {TEARDOWN_EVENT} for {payload['repository']}#{payload['pr']} via {target.name}"
    log.info("%s", reason)
    return NotifyResult(sent=True, target=target.name, reason=reason)
