"""Cancel-in-progress for preview builds: which runs of one pull request give way to which.

A group is one repository (case-insensitive) and one PR number, never a branch name (forks reuse names such
as ``patch-1``). Runs are ordered by when the receiver accepted their delivery (``received``, carried in the
event and passed to the run as a parameter), then id, so every run reaches the same verdict about the same set
of runs. Not by creation time: under a burst Prefect's automation creates the runs late and out of delivery
order, and the run of an old push created last would cancel the final head's build. A run without ``received``
(a UI rerun, ``previews build``, reconcile, an event from before this field) is placed by its creation time
instead; a mixed comparison is by wall clock (the receiver's clock against the Prefect server's). Within a
group:

- an older in-flight run at another SHA is cancelled, naming the newer SHA;
- an older in-flight run at the same SHA (a redelivery, a rerun while it builds) makes the newer run a
  duplicate: it ends without building;
- a newer in-flight run at another SHA makes this run superseded: it stops (it started late), and cancels
  the other runs the newest one outranks (in a burst they are still queued: no container starts for them).

When the PR's real head is known (``head``, read from GitHub), it outranks run order (issue 13, item 4):
a run at the head is never cancelled by, nor superseded by, a run at another SHA, however late that run was
received or created (a replayed or late delivery for an old commit, a rerun of an old commit from the UI).

A same-SHA run created longer ago than ``stale_after`` is not trusted to finish (a crashed worker can leave a
run Running forever), so it never turns a new run into a duplicate. A run already being stopped (Cancelling)
counts for nothing here: it is neither cancelled again nor a reason to stop or skip.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

Verdict = Literal["proceed", "duplicate", "superseded"]


@dataclass(frozen=True, slots=True)
class RunRef:
    """One flow run as the decision sees it: identity, creation (and delivery) time, the PR at one commit.

    ``received`` is when the receiver accepted the delivery that started the run, None for a run that no
    delivery started (or an event from before the field existed).
    """

    id: str
    name: str
    created: datetime
    repository: str
    pr_number: int
    head_sha: str
    stopping: bool = False
    received: datetime | None = None

    @property
    def order(self) -> tuple[datetime, str]:
        """The deterministic age order: delivery time (else creation time), then id."""
        return (self.received or self.created, self.id)

    def same_group(self, other: RunRef) -> bool:
        """Same repository (ignoring case) and same PR number."""
        return self.pr_number == other.pr_number and self.repository.lower() == other.repository.lower()

    def same_commit(self, other: RunRef) -> bool:
        """Same commit: equal SHAs, or one is a prefix of the other (a short SHA from the UI form)."""
        mine, theirs = self.head_sha.lower(), other.head_sha.lower()
        return mine.startswith(theirs) or theirs.startswith(mine)

    def at(self, head: str | None) -> bool:
        """True when this run builds ``head`` (its SHA is ``head`` or a prefix of it)."""
        return head is not None and head.lower().startswith(self.head_sha.lower())


@dataclass(frozen=True, slots=True)
class Cancellation:
    """An older run to move to Cancelling, with the message that names the newer SHA."""

    run: RunRef
    message: str


@dataclass(frozen=True, slots=True)
class SupersedeDecision:
    """What this run does (``verdict``, with the run that caused it) and which older runs it cancels."""

    verdict: Verdict
    reason: str
    because_of: RunRef | None = None
    cancel: tuple[Cancellation, ...] = field(default=())


def run_tags(repository: str, pr_number: int) -> list[str]:
    """The tags a preview-image run carries, for the UI's filters: ``previews``, ``repo:...``, ``pr:N``."""
    return ["previews", f"repo:{repository.lower()}", f"pr:{pr_number}"]


def stale_after(build_timeout: float, push_timeout: float) -> timedelta:
    """How long an in-flight run at the same SHA is trusted to still be building it: build + push + 10 min."""
    return timedelta(seconds=build_timeout + push_timeout + 600)


def superseded_message(newer_sha: str) -> str:
    """The state message of a cancelled older run."""
    return f"superseded by {newer_sha}"


def decide(
    me: RunRef,
    in_flight: Iterable[RunRef],
    *,
    now: datetime,
    stale_after: timedelta,
    head: str | None = None,
) -> SupersedeDecision:
    """Decide this run's fate against the other in-flight runs of the same flow (any PR; filtered here).

    ``head`` is the PR's head SHA as GitHub has it now, or None when GitHub cannot be asked.
    """
    group = [r for r in in_flight if r.id != me.id and not r.stopping and me.same_group(r)]
    newer_other = sorted(
        (r for r in group if r.order > me.order and not me.same_commit(r) and not me.at(head)),
        key=lambda r: r.order,
    )
    if newer_other:
        newest = newer_other[-1]
        # The newest run would cancel the others it outranks when it starts; doing it now keeps a burst of
        # pushes from starting one container per push (issue 16): queued runs end Cancelled at once.
        behind = tuple(
            Cancellation(r, superseded_message(newest.head_sha))
            for r in sorted(group, key=lambda r: r.order)
            if r.order < newest.order and not newest.same_commit(r) and not r.at(head)
        )
        return SupersedeDecision(
            "superseded", superseded_message(newest.head_sha), because_of=newest, cancel=behind
        )
    cancel = tuple(
        Cancellation(r, superseded_message(me.head_sha))
        for r in sorted(group, key=lambda r: r.order)
        if r.order < me.order and not me.same_commit(r) and not r.at(head)
    )
    duplicates = sorted(
        (r for r in group if r.order < me.order and me.same_commit(r) and now - r.created <= stale_after),
        key=lambda r: r.order,
    )
    if duplicates:
        first = duplicates[0]
        return SupersedeDecision(
            "duplicate",
            f"skipped: duplicate of run {first.name} already building {first.head_sha}",
            because_of=first,
            cancel=cancel,
        )
    return SupersedeDecision("proceed", "no newer run of this pull request", cancel=cancel)
