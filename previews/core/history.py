"""A pull request's preview history, from its flow runs as the Prefect API lists them (``previews status``).

Pure rules over plain values: who triggered a run (the ``delivery`` parameter convention, then Prefect's
``created_by``), what the run's summary artifact says (image, digest, infra), and whether the preview is
live: a ``preview-create`` was dispatched by a completed run and no ``preview-teardown`` was dispatched since.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

TriggerKind = Literal["event", "reconcile", "rerequest", "ui", "automation", "cli"]

_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_ROW = re.compile(r"^\| (?P<key>[^|]+?) \| (?P<value>.*) \|$")
_SENT = "sent "  # previews.github.infra: a dispatched notification's reason starts so


@dataclass(frozen=True, slots=True)
class Trigger:
    """Where a run came from: ``kind`` and a detail (delivery id, reconcile key, who clicked)."""

    kind: TriggerKind
    detail: str | None = None

    def __str__(self) -> str:
        return f"{self.kind} {self.detail}" if self.detail else self.kind


def trigger_of(
    delivery: object,
    *,
    created_by_type: str | None = None,
    created_by_name: str | None = None,
    from_deployment: bool = False,
) -> Trigger:
    """Who triggered a run, from its ``delivery`` parameter, else its ``created_by`` and deployment.

    ``<GUID>``: a GitHub webhook delivery; ``reconcile:<key>``: reconcile; ``rerequest:<GUID>``: a check's
    Re-run button; none: a person (UI or API run of the deployment), an automation, or ``previews build``.
    """
    text = delivery.strip() if isinstance(delivery, str) else ""
    prefix, sep, rest = text.partition(":")
    if sep and prefix == "reconcile":
        return Trigger("reconcile", rest or None)
    if sep and prefix == "rerequest":
        return Trigger("rerequest", rest or None)
    if text:
        return Trigger("event", text if _GUID.fullmatch(text) else text[:80])
    kind = (created_by_type or "").upper()
    if kind == "AUTOMATION":
        return Trigger("automation", created_by_name)
    if kind == "USER" or from_deployment:
        return Trigger("ui", created_by_name)
    return Trigger("cli")


@dataclass(frozen=True, slots=True)
class Summary:
    """What a preview-image run's summary artifact says (:func:`previews.core.outcome.summary_markdown`)."""

    image: str | None = None
    digest: str | None = None
    infra: str | None = None

    @property
    def dispatched(self) -> bool:
        """True when the run sent ``preview-create`` to infra."""
        return bool(self.infra and self.infra.startswith(_SENT))


def read_summary(markdown: str) -> Summary:
    """The image, digest and infra line of a summary artifact (rows ``| Image | `ref` |``)."""
    rows: dict[str, str] = {}
    for line in markdown.splitlines():
        match = _ROW.match(line.strip())
        if match:
            rows.setdefault(match["key"].strip(), match["value"].strip().strip("`"))
    return Summary(image=rows.get("Image"), digest=rows.get("Digest"), infra=rows.get("Infra"))


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One flow run of a PR as ``previews status`` shows it."""

    flow_run_id: str
    flow: str
    name: str
    pr_number: int
    head_sha: str | None
    state: str
    message: str | None
    created: datetime
    trigger: Trigger
    summary: Summary = field(default_factory=Summary)
    durations_s: dict[str, float] = field(default_factory=dict)

    @property
    def completed(self) -> bool:
        return self.state == "Completed"

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict (one entry of ``previews status --json``)."""
        return {
            "flow_run_id": self.flow_run_id,
            "flow": self.flow,
            "name": self.name,
            "head_sha": self.head_sha,
            "state": self.state,
            "message": self.message,
            "created": self.created.isoformat(),
            "trigger": {"kind": self.trigger.kind, "detail": self.trigger.detail},
            "image": self.summary.image,
            "digest": self.summary.digest,
            "infra": self.summary.infra,
            "durations_s": self.durations_s,
        }


@dataclass(frozen=True, slots=True)
class Liveness:
    """Whether the PR's preview environment should exist now, and why."""

    live: bool
    reason: str


def liveness(builds: Sequence[RunRecord], teardowns: Sequence[RunRecord]) -> Liveness:
    """Live when the newest dispatched create is newer than every dispatched teardown."""
    created = [r for r in builds if r.completed and r.summary.dispatched]
    torn = [r for r in teardowns if r.completed and (r.message or "").startswith(_SENT)]
    if not created:
        return Liveness(False, "no preview-create dispatched")
    newest = max(created, key=lambda r: r.created)
    after = [t for t in torn if t.created >= newest.created]
    if after:
        return Liveness(False, f"torn down by {after[0].name} ({after[0].created:%Y-%m-%d %H:%M} UTC)")
    sha = (newest.head_sha or "?")[:12]
    return Liveness(True, f"preview-create for {sha} dispatched by {newest.name}")


def newest_first(records: Iterable[RunRecord]) -> list[RunRecord]:
    """Runs ordered newest first (by creation time, then id for a stable order)."""
    return sorted(records, key=lambda r: (r.created, r.flow_run_id), reverse=True)


@dataclass(frozen=True, slots=True)
class PullHistory:
    """One PR: whether its preview is live, and its newest preview-image runs, newest first."""

    pr_number: int
    live: Liveness
    runs: list[RunRecord]

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict (one pull request of ``previews status --json``)."""
        return {
            "pr_number": self.pr_number,
            "live": self.live.live,
            "live_reason": self.live.reason,
            "runs": [run.to_json() for run in self.runs],
        }


def pull_histories(
    builds: Iterable[RunRecord], teardowns: Iterable[RunRecord], *, per_pr: int
) -> list[PullHistory]:
    """Group runs by PR (highest number first); each PR's liveness from all its runs, ``per_pr`` runs shown."""
    by_pr: dict[int, list[RunRecord]] = {}
    for run in builds:
        by_pr.setdefault(run.pr_number, []).append(run)
    ends: dict[int, list[RunRecord]] = {}
    for run in teardowns:
        ends.setdefault(run.pr_number, []).append(run)
    return [
        PullHistory(
            number, liveness(by_pr[number], ends.get(number, [])), newest_first(by_pr[number])[:per_pr]
        )
        for number in sorted(by_pr, reverse=True)
    ]
