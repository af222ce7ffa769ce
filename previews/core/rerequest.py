"""The "Re-run" button: ``check_run.rerequested`` / ``check_suite.rerequested`` deliveries, pure.

A person presses "Re-run" on the pipeline's check (or "Re-run all checks" on its suite); GitHub sends the
App a ``check_run`` (or ``check_suite``) delivery with ``action: rerequested``. It becomes a Prefect event
``github.check_run.rerequested`` on the pull request's resource, which the ``preview-image-on-rerequest``
trigger turns into one preview-image run for that SHA with ``delivery = rerequest:<delivery GUID>``.

Only the pipeline's own checks count: the App that owns the check run or suite must be
``PREVIEWS_GITHUB_APP_ID``, and a check run must carry the pipeline's name (``PREVIEWS_CHECK_NAME``). The PR
comes from the check's ``pull_requests``; GitHub leaves that list empty when the head branch lives in a fork,
and then nothing starts (the answer says so; a fork PR is re-run from the Prefect UI or by a new push).

``force_rebuild`` is true when the re-requested check did not succeed (failure, cancelled, timed out,
action required, stale or none): a Re-run of a failed check must build again, not reuse an image that may
have been pushed before a later step failed. A Re-run of a passing check (success, neutral, skipped)
reuses an image already published for the SHA with the same settings and tells infra again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from previews.core.events import RESOURCE_PREFIX, parse_delivery_id, prefect_event
from previews.core.names import parse_pr_number, parse_repository, parse_sha
from previews.errors import ValidationError

CheckEvent = Literal["check_run", "check_suite"]
CHECK_EVENTS: tuple[str, ...] = ("check_run", "check_suite")
DELIVERY_PREFIX = "rerequest:"
PASSING = frozenset({"success", "neutral", "skipped"})
CONCLUSIONS = PASSING | {"failure", "cancelled", "timed_out", "action_required", "stale"}


@dataclass(frozen=True, slots=True)
class Ignored:
    """A check delivery that starts nothing, and why (the receiver's answer says it)."""

    reason: str


@dataclass(frozen=True, slots=True)
class RerequestEvent:
    """The validated part of a ``rerequested`` delivery: which PR and SHA to build again, and how."""

    delivery: str  # GitHub's delivery GUID (the outbox key)
    kind: CheckEvent
    repository: str
    number: int
    head_sha: str
    conclusion: str | None

    @property
    def event_name(self) -> str:
        """``github.check_run.rerequested`` or ``github.check_suite.rerequested``."""
        return f"github.{self.kind}.rerequested"

    @property
    def resource_id(self) -> str:
        """The pull request's resource, as for ``pull_request`` events."""
        return f"{RESOURCE_PREFIX}{self.repository.lower()}#{self.number}"

    @property
    def force_rebuild(self) -> bool:
        """True unless the re-requested check passed (see the module docstring)."""
        return self.conclusion not in PASSING

    def payload(self) -> dict[str, Any]:
        """The Prefect event payload: the run's parameters and where they came from."""
        return {
            "delivery": DELIVERY_PREFIX + self.delivery,
            "action": "rerequested",
            "check": self.kind,
            "repository": self.repository,
            "number": self.number,
            "head_sha": self.head_sha,
            "conclusion": self.conclusion,
            "force_rebuild": self.force_rebuild,
        }


def _get(value: object, key: str, field: str) -> Any:
    if not isinstance(value, Mapping):
        raise ValidationError(field, "must be an object")
    return value.get(key)


def _pull_number(pulls: object, head_sha: str, field: str) -> int | None:
    """The PR whose head is ``head_sha`` (else the first one listed); None when the list is empty."""
    if not isinstance(pulls, list):
        raise ValidationError(field, "must be a list")
    if not pulls:
        return None
    heads = [_get(_get(p, "head", f"{field}[]"), "sha", f"{field}[].head") for p in pulls]
    chosen = next((p for p, sha in zip(pulls, heads, strict=True) if sha == head_sha), pulls[0])
    return parse_pr_number(_get(chosen, "number", f"{field}[]"), field=f"{field}[].number")


def parse_rerequest(
    event: str, payload: Mapping[str, Any], *, delivery: str, check_name: str, app_id: int | None
) -> RerequestEvent | Ignored:
    """Validate a ``check_run`` / ``check_suite`` delivery; :class:`Ignored` when it is not for us to act on.

    Raises :class:`ValidationError` naming the payload field that is wrong.
    """
    delivery_id = parse_delivery_id(delivery)
    if event not in CHECK_EVENTS:
        raise ValidationError("X-GitHub-Event", f"{event[:40]!r} is not check_run or check_suite")
    kind: CheckEvent = "check_run" if event == "check_run" else "check_suite"
    action = payload.get("action")
    if action != "rerequested":
        return Ignored(f"{kind} action {str(action)[:40]!r} starts nothing (only rerequested does)")
    check = payload.get(kind)
    if app_id is None:
        return Ignored("PREVIEWS_GITHUB_APP_ID is not set: re-runs are taken only from the App's own checks")
    owner = _get(_get(check, "app", kind), "id", f"{kind}.app")
    if owner != app_id:
        return Ignored(f"the {kind} belongs to another GitHub App ({str(owner)[:20]}), not {app_id}")
    if kind == "check_run" and _get(check, "name", kind) != check_name:
        return Ignored(f"the check run is not named {check_name!r} (PREVIEWS_CHECK_NAME)")
    head_sha = parse_sha(_get(check, "head_sha", kind), field=f"{kind}.head_sha", full=True)
    number = _pull_number(_get(check, "pull_requests", kind), head_sha, f"{kind}.pull_requests")
    if number is None:
        return Ignored(
            f"{kind}.pull_requests is empty: the commit belongs to no pull request of this repository "
            "(GitHub leaves it empty for a fork's branch); nothing was started"
        )
    repository = parse_repository(
        _get(payload.get("repository"), "full_name", "repository"), field="repository.full_name"
    )
    conclusion = _get(check, "conclusion", kind)
    return RerequestEvent(
        delivery=delivery_id,
        kind=kind,
        repository=repository,
        number=number,
        head_sha=head_sha,
        conclusion=conclusion if conclusion in CONCLUSIONS else None,
    )


def rerequest_prefect_event(event: RerequestEvent, *, occurred: datetime | None = None) -> dict[str, Any]:
    """The JSON body item for Prefect's ``POST /api/events`` (id from the delivery GUID, like a PR event)."""
    return prefect_event(event, occurred=occurred)
