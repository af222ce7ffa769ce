"""The pull-request event model and the Prefect event built from it (DESIGN.md, "The event contract").

A GitHub ``pull_request`` payload is attacker-influenced. Only the fields the flows need are read, each
validated with the grammars in :mod:`previews.core.names`; everything else (title, body, branch names, commit
messages) is dropped and never reaches Prefect. A failure names the payload path that was wrong.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from previews.core.forks import is_fork
from previews.core.names import parse_pr_number, parse_repository, parse_sha
from previews.errors import ValidationError

# Fixed forever (= uuid5(NAMESPACE_URL, "previews:github-delivery")): event ids are uuid5(EVENT_NAMESPACE,
# delivery id), so a redelivery maps to the same event.
EVENT_NAMESPACE = uuid.UUID("2cc8f7da-04c9-50a9-8922-5ca285ce7583")
EVENT_PREFIX = "github.pull_request."
RESOURCE_PREFIX = "github.pull-request."
MAX_LABELS = 100

_DELIVERY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", re.ASCII)
_ACTION_RE = re.compile(r"[a-z_]{1,40}", re.ASCII)
_LOGIN_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})(?:\[bot\])?", re.ASCII)
# A clone URL as data: http(s) or file (tests, demo); printable ASCII; no '@', so no credentials inside.
_CLONE_URL_RE = re.compile(r"(?:https?|file)://[\x21-\x3f\x41-\x7e]{1,500}", re.ASCII)


def parse_delivery_id(value: object, *, field: str = "X-GitHub-Delivery") -> str:
    """A delivery id (GitHub's GUID): 1-100 of ``[A-Za-z0-9._-]``, not starting with a separator."""
    if value is None or value == "":
        raise ValidationError(field, "missing")
    if not isinstance(value, str) or _DELIVERY_RE.fullmatch(value) is None:
        shown = value[:40] if isinstance(value, str) else type(value).__name__
        raise ValidationError(field, f"{shown!r} is not a delivery id")
    return value


def _object(value: object, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        kind = "null" if value is None else type(value).__name__
        raise ValidationError(field, f"must be an object, got {kind}")
    return value


def _flag(value: object, field: str) -> bool:
    """A boolean; null or absent (older payloads have no ``draft``) is False."""
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ValidationError(field, f"must be true or false, got {type(value).__name__}")
    return value


def _match(pattern: re.Pattern[str], value: object, field: str, what: str) -> str:
    if not isinstance(value, str):
        kind = "null" if value is None else type(value).__name__
        raise ValidationError(field, f"must be a string, got {kind}")
    if pattern.fullmatch(value) is None:
        shown = value if len(value) <= 60 else value[:60] + "..."
        raise ValidationError(field, f"{shown!r} is not {what}")
    return value


def _label(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise ValidationError(field, f"must be a string, got {type(value).__name__}")
    if not 1 <= len(value) <= 100:
        raise ValidationError(field, "must be 1-100 characters")
    if any(unicodedata.category(ch).startswith("C") for ch in value):
        raise ValidationError(field, f"{value[:60]!r} contains control or format characters")
    return value


@dataclass(frozen=True, slots=True)
class PullRequestEvent:
    """The validated part of one ``pull_request`` delivery. ``repository`` is the base repository."""

    delivery: str
    action: str
    repository: str
    number: int
    head_sha: str
    base_sha: str
    head_repository: str | None
    clone_url: str | None
    draft: bool
    merged: bool
    state: Literal["open", "closed"]
    labels: tuple[str, ...]
    sender: str

    @property
    def fork(self) -> bool:
        """True when the head lives in another repository, or in a deleted fork (``head.repo`` null)."""
        return is_fork(self.head_repository, self.repository)

    @property
    def event_name(self) -> str:
        """``github.pull_request.<action>``."""
        return EVENT_PREFIX + self.action

    @property
    def resource_id(self) -> str:
        """``github.pull-request.<owner>/<repo>#<N>``, lower-cased."""
        return f"{RESOURCE_PREFIX}{self.repository.lower()}#{self.number}"

    def payload(self) -> dict[str, Any]:
        """The Prefect event payload: only validated fields, JSON types kept (``number`` is an int)."""
        return {
            "delivery": self.delivery,
            "action": self.action,
            "repository": self.repository,
            "number": self.number,
            "head_sha": self.head_sha,
            "base_sha": self.base_sha,
            "head_repository": self.head_repository,
            "base_repository": self.repository,
            "clone_url": self.clone_url,
            "fork": self.fork,
            "draft": self.draft,
            "merged": self.merged,
            "state": self.state,
            "labels": list(self.labels),
            "sender": self.sender,
        }


def _same_base_repository(base: Mapping[str, Any], repository: str) -> None:
    """The PR's base repository, when given, is the delivery's repository (case aside)."""
    base_repo = base.get("repo")
    if base_repo is None:
        return
    base_name = parse_repository(
        _object(base_repo, "pull_request.base.repo").get("full_name"),
        field="pull_request.base.repo.full_name",
    )
    if base_name.lower() != repository.lower():
        raise ValidationError(
            "pull_request.base.repo.full_name", f"{base_name!r} differs from repository {repository!r}"
        )


def _head_repository(head: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The head repository's name and clone URL; both None for a deleted fork (``head.repo`` null)."""
    head_repo = head.get("repo")
    if head_repo is None:
        return None, None
    head_obj = _object(head_repo, "pull_request.head.repo")
    name = parse_repository(head_obj.get("full_name"), field="pull_request.head.repo.full_name")
    if head_obj.get("clone_url") is None:
        return name, None
    field = "pull_request.head.repo.clone_url"
    return name, _match(_CLONE_URL_RE, head_obj["clone_url"], field, "an http(s) clone URL")


def _labels(raw: object) -> tuple[str, ...]:
    """The PR's label names (at most MAX_LABELS)."""
    items = raw or []
    if not isinstance(items, list) or len(items) > MAX_LABELS:
        raise ValidationError("pull_request.labels", f"must be a list of at most {MAX_LABELS} labels")
    return tuple(
        _label(_object(item, f"pull_request.labels[{i}]").get("name"), f"pull_request.labels[{i}].name")
        for i, item in enumerate(items)
    )


def parse_pull_request_event(payload: Mapping[str, Any], *, delivery: str) -> PullRequestEvent:
    """Validate a GitHub ``pull_request`` payload; raise :class:`ValidationError` naming the bad field."""
    delivery_id = parse_delivery_id(delivery)
    body = _object(payload, "body")
    pr = _object(body.get("pull_request"), "pull_request")
    action = _match(_ACTION_RE, body.get("action"), "action", "a pull_request action")
    number = parse_pr_number(body.get("number"), field="number")
    if "number" in pr and parse_pr_number(pr["number"], field="pull_request.number") != number:
        raise ValidationError("pull_request.number", f"{pr['number']} differs from number {number}")
    repository = parse_repository(
        _object(body.get("repository"), "repository").get("full_name"), field="repository.full_name"
    )
    head = _object(pr.get("head"), "pull_request.head")
    base = _object(pr.get("base"), "pull_request.base")
    _same_base_repository(base, repository)
    head_repository, clone_url = _head_repository(head)
    state = pr.get("state")
    if state not in ("open", "closed"):
        raise ValidationError("pull_request.state", f"{str(state)[:20]!r} is not open or closed")
    labels = _labels(pr.get("labels"))
    sender = _match(
        _LOGIN_RE, _object(body.get("sender"), "sender").get("login"), "sender.login", "a GitHub login"
    )
    return PullRequestEvent(
        delivery=delivery_id,
        action=action,
        repository=repository,
        number=number,
        head_sha=parse_sha(head.get("sha"), field="pull_request.head.sha", full=True),
        base_sha=parse_sha(base.get("sha"), field="pull_request.base.sha", full=True),
        head_repository=head_repository,
        clone_url=clone_url,
        draft=_flag(pr.get("draft"), "pull_request.draft"),
        merged=_flag(pr.get("merged"), "pull_request.merged"),
        state="open" if state == "open" else "closed",
        labels=labels,
        sender=sender,
    )


def event_id(delivery: str, *, replay: int = 0) -> uuid.UUID:
    """The Prefect event id of a delivery: ``uuid5(EVENT_NAMESPACE, delivery)``.

    A deliberate re-send (``previews outbox replay``) needs a new id, because Prefect drops ids it has seen:
    replay ``n`` > 0 uses ``uuid5(EVENT_NAMESPACE, "<delivery>/replay/<n>")``.
    """
    name = delivery if replay == 0 else f"{delivery}/replay/{replay}"
    return uuid.uuid5(EVENT_NAMESPACE, name)


def format_occurred(moment: datetime) -> str:
    """An aware timestamp in the ISO form Prefect stores (UTC, ``Z``)."""
    if moment.tzinfo is None:
        raise ValidationError("occurred", "must be timezone-aware")
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class EventSource(Protocol):
    """What :func:`prefect_event` reads of a validated GitHub event (a PR event or a check re-run)."""

    @property
    def delivery(self) -> str: ...
    @property
    def event_name(self) -> str: ...
    @property
    def resource_id(self) -> str: ...
    @property
    def repository(self) -> str: ...
    @property
    def number(self) -> int: ...
    @property
    def head_sha(self) -> str: ...
    def payload(self) -> dict[str, Any]: ...


def parse_received(value: object, *, field: str = "received") -> datetime | None:
    """When the receiver accepted the delivery: an aware ISO-8601 timestamp, or None when absent or empty.

    It orders the runs of one PR (:mod:`previews.core.supersede`) in the order GitHub sent the pushes.
    """
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ValidationError(field, f"{value[:40]!r} is not an ISO-8601 timestamp") from None
    else:
        raise ValidationError(field, f"must be an ISO-8601 timestamp, got {type(value).__name__}")
    if moment.tzinfo is None:
        raise ValidationError(field, f"{value!s:.40} has no time zone")
    return moment.astimezone(UTC)


def prefect_event(event: EventSource, *, occurred: datetime | None = None, replay: int = 0) -> dict[str, Any]:
    """The JSON body item for Prefect's ``POST /api/events`` (resource label values are all strings).

    ``payload["received"]`` is the acceptance time (``occurred`` as first sent): a replay re-stamps
    ``occurred`` but keeps the payload, so runs still order by when GitHub sent the delivery.
    """
    stamp = format_occurred(occurred or datetime.now(UTC))
    return {
        "id": str(event_id(event.delivery, replay=replay)),
        "occurred": stamp,
        "event": event.event_name,
        "resource": {
            "prefect.resource.id": event.resource_id,
            "github.repository": event.repository,
            "github.pull-request.number": str(event.number),
            "github.sha": event.head_sha,
        },
        "related": [],
        "payload": {**event.payload(), "received": stamp},
    }
