"""Reconcile with GitHub: which open pull requests lack a preview build, and which closed ones a teardown.

GitHub never redelivers a webhook that failed, so a push made while the receiver was down gets no image.
The ``preview-reconcile`` flow reads the open PRs and our commit status on each head, the runs in flight and
the previews sent, and this module decides per PR head SHA (pure; the flow does the I/O):

- **up to date**: our status context on the SHA is terminal (success, failure, error), or a preview-image
  run for that repository, PR and SHA is in flight, or one ended Completed or Failed (it posted a terminal
  status: so the status need not be read, which saves one GitHub request per head that the pipeline saw);
- **missing**: no status and no run in flight: start one preview-image run;
- **stale pending**: a ``pending`` status older than the stale limit and no run in flight (the run that
  posted it is gone): start one;
- **waiting**: a recent ``pending`` status and no run in flight (the run may have just ended): nothing yet;
- **teardown needed**: a PR that is closed now, whose last preview-create was not followed by a teardown.

A started run carries the parameters an event carries and ``delivery`` ``reconcile:<16 hex>``, the SHA-256 of
``repository#pr@head_sha``; its idempotency key adds the stale window, so two reconciles in one window start
one run between them, and a run that vanished can be started again in the next window.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from previews.core.names import parse_repository
from previews.core.supersede import RunRef

Kind = Literal["up-to-date", "missing", "stale-pending", "waiting", "teardown"]
TERMINAL = frozenset({"success", "failure", "error"})
DELIVERY_PREFIX = "reconcile:"
SETTLED = frozenset({"COMPLETED", "FAILED"})
# A run that skipped as the duplicate of an in-flight run built nothing itself (core/supersede.decide).
DUPLICATE_SKIP = "skipped: duplicate of run "


@dataclass(frozen=True, slots=True)
class OpenPull:
    """An open pull request as the listing gives it: the parameters an event would carry."""

    repository: str
    number: int
    head_sha: str
    base_sha: str
    fork: bool
    labels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class OurStatus:
    """The latest commit status of our context on one SHA."""

    id: int
    state: str
    updated_at: datetime | None


@dataclass(frozen=True, slots=True)
class FinishedRun:
    """A preview-image run that ended: its PR and commit, its final state type and message."""

    ref: RunRef
    state: str
    message: str

    @property
    def settled(self) -> bool:
        """Completed or Failed and not a duplicate's skip: the run posted a terminal status for its commit."""
        return self.state in SETTLED and not self.message.startswith(DUPLICATE_SKIP)


@dataclass(frozen=True, slots=True)
class PreviewMark:
    """A preview-image run that sent ``preview-create`` for a PR (``created``: when the run was created)."""

    repository: str
    pr_number: int
    created: datetime


@dataclass(frozen=True, slots=True)
class TeardownMark:
    """A preview-teardown run that counts (completed or in flight) for a PR."""

    repository: str
    pr_number: int
    created: datetime


@dataclass(frozen=True, slots=True)
class Decision:
    """What reconcile does for one PR (at one head SHA) and why; ``start`` names the deployment to run."""

    kind: Kind
    repository: str
    pr_number: int
    head_sha: str | None
    reason: str
    start: Literal["preview-image", "preview-teardown"] | None = None
    parameters: Mapping[str, Any] | None = None
    idempotency_key: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict for the report."""
        return {
            "kind": self.kind,
            "repository": self.repository,
            "pr_number": self.pr_number,
            "head_sha": self.head_sha,
            "reason": self.reason,
            "start": self.start,
            "delivery": (self.parameters or {}).get("delivery"),
        }


def parse_repositories(value: str, *, field: str) -> tuple[str, ...]:
    """Comma-separated ``owner/name`` entries, checked, duplicates (in any case) dropped, order kept."""
    names: dict[str, str] = {}
    for item in value.split(","):
        if item.strip():
            name = parse_repository(item.strip(), field=field)
            names.setdefault(name.lower(), name)
    return tuple(names.values())


def delivery_id(repository: str, pr_number: int, head_sha: str) -> str:
    """``reconcile:<first 16 hex of sha256("repository#pr@head_sha")>`` (the context's convention)."""
    digest = hashlib.sha256(f"{repository}#{pr_number}@{head_sha}".encode()).hexdigest()
    return DELIVERY_PREFIX + digest[:16]


def teardown_delivery(repository: str, pr_number: int) -> str:
    """The delivery of a teardown reconcile starts: the same hash over ``repository#pr@closed``."""
    return delivery_id(repository, pr_number, "closed")


def window(now: datetime, stale: timedelta) -> int:
    """The number of the stale window ``now`` falls in (part of a started run's idempotency key)."""
    return int(now.timestamp() // max(stale.total_seconds(), 1.0))


class RunIndex:
    """The preview-image runs in flight and ended, by repository (any case) and PR, for quick lookups."""

    def __init__(self, in_flight: Iterable[RunRef] = (), finished: Iterable[FinishedRun] = ()) -> None:
        self._in_flight: dict[tuple[str, int], list[RunRef]] = {}
        self._finished: dict[tuple[str, int], list[FinishedRun]] = {}
        for run in in_flight:
            if not run.stopping:
                self._in_flight.setdefault((run.repository.lower(), run.pr_number), []).append(run)
        for ended in finished:
            if ended.settled:
                key = (ended.ref.repository.lower(), ended.ref.pr_number)
                self._finished.setdefault(key, []).append(ended)

    def in_flight_for(self, pull: OpenPull) -> RunRef | None:
        """A run in flight (not being stopped) for ``pull``'s repository, PR and head commit."""
        me = _me(pull)
        runs = self._in_flight.get((pull.repository.lower(), pull.number), [])
        return next((r for r in runs if me.same_commit(r)), None)

    def settled_by(self, pull: OpenPull) -> FinishedRun | None:
        """A run that ended for ``pull``'s head having posted a terminal status (:attr:`FinishedRun.settled`)."""
        me = _me(pull)
        runs = self._finished.get((pull.repository.lower(), pull.number), [])
        return next((f for f in runs if me.same_commit(f.ref)), None)


def _me(pull: OpenPull) -> RunRef:
    return RunRef("", "", datetime.min, pull.repository, pull.number, pull.head_sha)


def image_parameters(pull: OpenPull) -> dict[str, Any]:
    """The preview-image parameters an event for ``pull`` carries, with reconcile's delivery id."""
    return {
        "repository": pull.repository,
        "pr_number": pull.number,
        "head_sha": pull.head_sha,
        "base_sha": pull.base_sha,
        "fork": pull.fork,
        "labels": list(pull.labels),
        "delivery": delivery_id(pull.repository, pull.number, pull.head_sha),
    }


def decide_pull(
    pull: OpenPull,
    status: OurStatus | None,
    runs: RunIndex,
    *,
    now: datetime,
    stale: timedelta,
) -> Decision:
    """The decision for one open PR's head (``status`` is None when our context has none on it, or when it
    was not read)."""
    base: tuple[str, int, str | None] = (pull.repository, pull.number, pull.head_sha)
    running = runs.in_flight_for(pull)
    if running is not None:
        return Decision("up-to-date", *base, reason=f"run {running.name} is in flight for this commit")
    ended = runs.settled_by(pull)
    if ended is not None:
        word = ended.state.lower()
        return Decision("up-to-date", *base, reason=f"run {ended.ref.name} ended {word} for this commit")
    if status is not None and status.state in TERMINAL:
        return Decision("up-to-date", *base, reason=f"our status is {status.state}")
    params = image_parameters(pull)
    key = f"{params['delivery']}:{window(now, stale)}"
    if status is None:
        reason = "no status and no run in flight: the event was missed"
        return Decision(
            "missing", *base, reason=reason, start="preview-image", parameters=params, idempotency_key=key
        )
    age = now - status.updated_at if status.updated_at is not None else stale
    minutes = int(age.total_seconds() // 60)
    if age < stale:
        return Decision("waiting", *base, reason=f"pending for {minutes} min and no run in flight; waiting")
    reason = f"pending for {minutes} min and its run is gone"
    return Decision(
        "stale-pending", *base, reason=reason, start="preview-image", parameters=params, idempotency_key=key
    )


def needs_status(pull: OpenPull, runs: RunIndex) -> bool:
    """Whether the decision needs our status on ``pull``'s head: not when a run is in flight for it, or one
    ended having posted a terminal status."""
    return runs.in_flight_for(pull) is None and runs.settled_by(pull) is None


def teardown_candidates(
    repository: str,
    open_numbers: Iterable[int],
    previews: Iterable[PreviewMark],
    teardowns: Iterable[TeardownMark],
) -> list[int]:
    """PRs of ``repository`` not open now whose last preview-create has no teardown after it (sorted)."""
    repo = repository.lower()
    still_open = set(open_numbers)
    last: dict[int, datetime] = {}
    for mark in previews:
        if mark.repository.lower() == repo and mark.pr_number not in still_open:
            last[mark.pr_number] = max(mark.created, last.get(mark.pr_number, mark.created))
    for down in teardowns:
        created = last.get(down.pr_number)
        if down.repository.lower() == repo and created is not None and down.created >= created:
            del last[down.pr_number]
    return sorted(last)


def decide_closed(
    repository: str, pr_number: int, state: str | None, *, now: datetime, stale: timedelta
) -> Decision:
    """A PR with a preview and no teardown after it: GitHub's ``state`` for it decides (None: not found)."""
    base: tuple[str, int, str | None] = (repository, pr_number, None)
    if state == "open":
        return Decision("up-to-date", *base, reason="open again since the listing; nothing to tear down")
    delivery = teardown_delivery(repository, pr_number)
    params = {"repository": repository, "pr_number": pr_number, "delivery": delivery}
    found = "closed" if state == "closed" else "gone from GitHub"
    return Decision(
        "teardown",
        *base,
        reason=f"{found} since its last preview, and no teardown after it",
        start="preview-teardown",
        parameters=params,
        idempotency_key=f"{delivery}:{window(now, stale)}",
    )
