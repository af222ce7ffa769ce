"""The ``preview-reconcile`` flow: build what a missed webhook left unbuilt, tear down what a missed close left up.

First, with Prefect alone: read-pending -> reschedule-stranded (skipped on a dry run): a preview-image or
preview-teardown run Pending for longer than ``PREVIEWS_STRANDED_PENDING_SECONDS`` with no container (its
worker died between claiming it and starting it, :mod:`previews.core.stranded`) goes back to Scheduled. That
step runs without GitHub settings too; the GitHub part then stops at once (``stopped_by`` ``config``, the run
Failed naming the missing setting, as before).

Then tasks: read-runs (Prefect: preview-image runs in flight or ended, previews created, teardowns) -> read-github
(one per repository: open PRs, our status on each head no run is known for, the state of each PR that has a
preview but is no longer listed open) -> plan-reconcile (pure, :mod:`previews.core.reconcile`) -> start-runs
(skipped on a dry run). The report (every PR with its decision and reason, the runs started and the GitHub
requests used) is the run's result and a table artifact.

GitHub reads are not retried: a 5xx, a rate limit or an answer that is not what GitHub documents ends the
reconcile at once with the reason, having acted only on the repositories it read completely; the next
scheduled run is the retry. A started run's idempotency key makes a rerun after a partial run start nothing
twice, and preview-image's own supersede step skips a run whose commit another run already builds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy, State
from prefect.deployments.runner import RunnerDeployment
from prefect.states import Completed, Failed
from pydantic import BaseModel, ConfigDict

from flows.common import retrying, wired_flow
from previews.core import reconcile
from previews.core.reconcile import Decision, OpenPull, OurStatus, PreviewMark, RunIndex, TeardownMark
from previews.core.stranded import PendingRun, Stranded, find_stranded
from previews.errors import PreviewsError, ValidationError
from previews.github.pulls import PullReader
from previews.runs import PrefectRuns, Rescheduled, StartedRun
from previews.settings import Settings
from previews.wiring import Wiring

IMAGE_FLOW, TEARDOWN_FLOW = "preview-image", "preview-teardown"
RUN_TAGS = ("previews", "reconcile")
INTERVAL_SECONDS = 600  # the schedule of the deployment (prefect.yaml, and `previews up`)
Stop = Literal["github", "prefect", "config"]


class ReconcileReport(BaseModel):
    """What a reconcile run read, decided and started (the CLI's ``--json``)."""

    model_config = ConfigDict(frozen=True)

    dry_run: bool
    repositories: list[str]
    read: list[str]
    complete: bool
    stopped_by: Stop | None = None
    reason: str | None = None
    stranded: list[dict[str, Any]] = []
    decisions: list[dict[str, Any]]
    started: list[dict[str, Any]]
    counts: dict[str, int]
    github_requests: int

    @property
    def summary(self) -> str:
        """One line for the run's state message."""
        counts = ", ".join(f"{n} {kind}" for kind, n in sorted(self.counts.items())) or "no open PRs"
        verb = "would start" if self.dry_run else "started"
        fresh = sum(1 for s in self.started if s.get("fresh", True))
        line = f"{counts}; {verb} {fresh} runs; {self.github_requests} GitHub requests"
        if self.stranded:
            moved = sum(1 for s in self.stranded if s.get("rescheduled"))
            found = len(self.stranded)
            line += (
                f"; would reschedule {found} stranded runs"
                if self.dry_run
                else f"; rescheduled {moved} of {found} stranded runs"
            )
        return line if self.complete else f"stopped ({self.reason}); {line}"


@dataclass(frozen=True, slots=True)
class RunsSnapshot:
    """What Prefect knows: preview-image runs in flight or ended, previews created, teardowns that count."""

    runs: RunIndex
    previews: tuple[PreviewMark, ...]
    teardowns: tuple[TeardownMark, ...]


@dataclass(frozen=True, slots=True)
class RepositoryFacts:
    """One repository as GitHub has it: open PRs, our status per head read, states of closed previews."""

    repository: str
    pulls: tuple[OpenPull, ...]
    statuses: dict[str, OurStatus | None] = field(default_factory=dict)
    closed: dict[int, str | None] = field(default_factory=dict)


@task(name="read-runs", cache_policy=NO_CACHE)
def read_runs(runs: PrefectRuns, since: datetime) -> RunsSnapshot:
    """Preview-image runs in flight; since ``since``, those ended, the previews created and the teardowns."""
    in_flight = runs.in_flight(flow_name=IMAGE_FLOW)
    finished = runs.finished(IMAGE_FLOW, since=since)
    snapshot = RunsSnapshot(
        RunIndex(in_flight, finished),
        tuple(runs.previews_created(IMAGE_FLOW, since=since)),
        tuple(runs.teardowns(TEARDOWN_FLOW, since=since)),
    )
    get_run_logger().info(
        "%d preview-image runs in flight, %d ended; %d previews created and %d teardowns since %s",
        len(in_flight),
        len(finished),
        len(snapshot.previews),
        len(snapshot.teardowns),
        since.isoformat(timespec="seconds"),
    )
    return snapshot


@task(name="read-github", cache_policy=NO_CACHE, retries=0)
def read_github(reader: PullReader, repository: str, snapshot: RunsSnapshot) -> RepositoryFacts:
    """The open PRs, our status on each head without a run in flight, the state of each closed preview."""
    pulls = tuple(reader.open_pulls(repository))
    statuses = {
        p.head_sha: reader.our_status(p.repository, p.head_sha)
        for p in pulls
        if reconcile.needs_status(p, snapshot.runs)
    }
    numbers = reconcile.teardown_candidates(
        repository, (p.number for p in pulls), snapshot.previews, snapshot.teardowns
    )
    closed = {n: reader.pull_state(repository, n) for n in numbers}
    get_run_logger().info(
        "%s: %d open PRs, %d statuses read, %d closed PRs with a preview; %d GitHub requests so far",
        repository,
        len(pulls),
        len(statuses),
        len(closed),
        reader.requests,
    )
    return RepositoryFacts(repository, pulls, statuses, closed)


@task(name="plan-reconcile", cache_policy=NO_CACHE)
def plan_reconcile(
    facts: Sequence[RepositoryFacts], runs: RunIndex, now: datetime, stale: timedelta
) -> list[Decision]:
    """Every decision, per open PR head and per closed PR with a preview (pure)."""
    decisions: list[Decision] = []
    for repo in facts:
        for pull in repo.pulls:
            status = repo.statuses.get(pull.head_sha)
            decisions.append(reconcile.decide_pull(pull, status, runs, now=now, stale=stale))
        for number, state in sorted(repo.closed.items()):
            decisions.append(reconcile.decide_closed(repo.repository, number, state, now=now, stale=stale))
    return decisions


@task(name="start-runs", cache_policy=NO_CACHE, retries=0)
def start_runs(
    runs: PrefectRuns, decisions: Sequence[Decision], settings: Settings
) -> tuple[list[tuple[Decision, StartedRun]], str | None]:
    """Start each decided run through its deployment; stop at the first Prefect failure (and say why)."""
    logger = get_run_logger()
    deployments = {
        IMAGE_FLOW: settings.reconcile_image_deployment,
        TEARDOWN_FLOW: settings.reconcile_teardown_deployment,
    }
    started: list[tuple[Decision, StartedRun]] = []
    for d in decisions:
        if d.start is None or d.parameters is None or d.idempotency_key is None:
            continue
        try:
            run = runs.start(
                deployments[d.start], dict(d.parameters), idempotency_key=d.idempotency_key, tags=RUN_TAGS
            )
        except PreviewsError as exc:
            logger.error("could not start %s for %s#%d: %s", d.start, d.repository, d.pr_number, exc)
            return started, f"Prefect: {exc}"
        verb = "started" if run.fresh else "already started"
        logger.info("%s#%d: %s %s (%s): %s", d.repository, d.pr_number, verb, run.name, run.state, d.reason)
        started.append((d, run))
    return started, None


@task(name="read-pending", cache_policy=NO_CACHE)
def read_pending(runs: PrefectRuns) -> list[PendingRun]:
    """The preview-image and preview-teardown runs that are Pending now."""
    pending = runs.pending([IMAGE_FLOW, TEARDOWN_FLOW])
    get_run_logger().info("%d preview-image and preview-teardown runs Pending", len(pending))
    return pending


@task(name="reschedule-stranded", cache_policy=NO_CACHE, retries=0)
def reschedule_stranded(runs: PrefectRuns, stranded: Sequence[Stranded]) -> list[Rescheduled]:
    """Put each stranded run back to Scheduled. A run Prefect refuses to move (an error) is reported and the
    others are still rescheduled: one run must not keep every other stranded run Pending."""
    logger = get_run_logger()
    done: list[Rescheduled] = []
    for one in stranded:
        try:
            result = runs.reschedule(one)
        except PreviewsError as exc:
            logger.error("could not reschedule %s (%s): %s", one.run.name, one.run.id, exc)
            done.append(Rescheduled(one, False, f"not rescheduled: {exc}"))
            continue
        log = logger.warning if result.done else logger.info
        log("%s (%s, %s): %s; %s", one.run.name, one.run.flow, one.run.id, one.message, result.answer)
        done.append(result)
    return done


def _recover(runs: PrefectRuns, settings: Settings, *, dry_run: bool) -> list[dict[str, Any]]:
    """The stranded runs (found and, unless ``dry_run``, rescheduled), as report rows."""
    pending = retrying(read_pending, settings)(runs)
    threshold = timedelta(seconds=settings.stranded_pending_seconds)
    found = find_stranded(pending, now=datetime.now(UTC), threshold=threshold)
    if dry_run:
        return [s.to_json() | {"rescheduled": False, "answer": "dry run"} for s in found]
    results = reschedule_stranded(runs, found) if found else []
    return [r.stranded.to_json() | {"rescheduled": r.done, "answer": r.answer} for r in results]


@dataclass(frozen=True, slots=True)
class GitHubPart:
    """What the GitHub part of a reconcile read, decided and started, and why it stopped (if it did)."""

    repositories: tuple[str, ...] = ()
    facts: tuple[RepositoryFacts, ...] = ()
    decisions: tuple[Decision, ...] = ()
    started: tuple[tuple[Decision, StartedRun], ...] = ()
    stop: tuple[Stop, str] | None = None
    requests: int = 0


def _with_github(runs: PrefectRuns, wiring: Wiring, *, dry_run: bool) -> GitHubPart:
    """Compare GitHub's open PRs with the runs; unless ``dry_run``, start the runs it decides.

    Without repositories or GitHub credentials this part stops at once (``config``): the stranded runs were
    recovered before it, with Prefect alone."""
    settings = wiring.settings
    try:
        repositories, github = wiring.reconcile_github()
    except ValidationError as exc:
        get_run_logger().error("not comparing with GitHub: %s", exc)
        return GitHubPart(stop=("config", str(exc)))
    check_name = None if wiring.report_mode().statuses else settings.check_name  # checks only: read those
    now, stale = datetime.now(UTC), timedelta(minutes=settings.reconcile_stale_minutes)
    with github:
        snapshot = retrying(read_runs, settings)(runs, now - timedelta(days=settings.cleanup_ttl_days))
        reader = PullReader(github, context=settings.status_context, check_name=check_name)
        facts, github_stop = _read_all(reader, repositories, snapshot)
        decisions = plan_reconcile(facts, snapshot.runs, now, stale)
        started, prefect_stop = ([], None) if dry_run else start_runs(runs, decisions, settings)
    stop: tuple[Stop, str] | None = (
        ("github", github_stop) if github_stop else ("prefect", prefect_stop) if prefect_stop else None
    )
    return GitHubPart(repositories, tuple(facts), tuple(decisions), tuple(started), stop, reader.requests)


def _read_all(
    reader: PullReader, repositories: Sequence[str], snapshot: RunsSnapshot
) -> tuple[list[RepositoryFacts], str | None]:
    """Each repository in turn; the first GitHub failure ends the reading (the repositories read stand)."""
    facts: list[RepositoryFacts] = []
    for repository in repositories:
        try:
            facts.append(read_github(reader, repository, snapshot))
        except ValidationError:
            raise
        except PreviewsError as exc:
            get_run_logger().error("stopping: GitHub: %s", exc)
            return facts, f"GitHub: {exc}"
    return facts, None


def _report(dry_run: bool, stranded: Sequence[dict[str, Any]], part: GitHubPart) -> ReconcileReport:
    """The report, and its table artifact (one row per stranded run, then one per decision)."""
    runs = {id(d): run for d, run in part.started}
    rows = [_row(d, runs.get(id(d)), dry_run) for d in part.decisions]
    counts: dict[str, int] = {}
    for d in part.decisions:
        counts[d.kind] = counts.get(d.kind, 0) + 1
    report = ReconcileReport(
        dry_run=dry_run,
        repositories=list(part.repositories),
        read=[f.repository for f in part.facts],
        complete=part.stop is None,
        stopped_by=part.stop[0] if part.stop else None,
        reason=part.stop[1] if part.stop else None,
        stranded=list(stranded),
        decisions=[d.to_json() | {"run": r["run"]} for d, r in zip(part.decisions, rows, strict=True)],
        started=[
            {**d.to_json(), "run_id": r.id, "run_name": r.name, "fresh": r.fresh} for d, r in part.started
        ]
        if not dry_run
        else [d.to_json() for d in part.decisions if d.start is not None],
        counts=counts,
        github_requests=part.requests,
    )
    table = [_stranded_row(s) for s in stranded] + rows
    create_table_artifact(key="preview-reconcile", table=table, description=report.summary)
    return report


def _stranded_row(stranded: dict[str, Any]) -> dict[str, Any]:
    return {
        "repository": "",
        "pr": "",
        "head": "",
        "decision": "stranded",
        "reason": stranded["message"],
        "run": f"{stranded['run_name']} ({stranded['flow']}): {stranded['answer']}",
    }


def _row(decision: Decision, run: StartedRun | None, dry_run: bool) -> dict[str, Any]:
    if run is not None:
        shown = f"{run.name} ({run.state})" + ("" if run.fresh else ", started earlier")
    else:
        shown = "dry run" if dry_run and decision.start else ""
    return {
        "repository": decision.repository,
        "pr": decision.pr_number,
        "head": (decision.head_sha or "")[:12],
        "decision": decision.kind,
        "reason": decision.reason,
        "run": shown,
    }


@wired_flow(name="preview-reconcile", validate_parameters=True)
def preview_reconcile(dry_run: bool = True, *, wiring: Wiring) -> State[ReconcileReport]:
    """Put back to Scheduled the preview runs a dead worker left Pending; then compare the open PRs of the
    configured repositories with the builds, and (unless ``dry_run``) start one preview-image run per head
    that was missed and one teardown per closed PR whose preview remains."""
    with wiring.prefect_runs() as runs:
        stranded = _recover(runs, wiring.settings, dry_run=dry_run)
        part = _with_github(runs, wiring, dry_run=dry_run)
    report = _report(dry_run, stranded, part)
    if part.stop is not None:
        return Failed(message=report.summary, data=report)
    return Completed(message=report.summary, data=report)


def deployment(*, scheduled: bool) -> RunnerDeployment:
    """The served deployment, as prefect.yaml declares it: every 10 minutes (when ``scheduled``), one at a time."""
    served = preview_reconcile.to_deployment(
        name="preview-reconcile",
        interval=INTERVAL_SECONDS if scheduled else None,
        parameters={"dry_run": False},
        concurrency_limit=ConcurrencyLimitConfig(
            limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW
        ),
    )
    assert isinstance(served, RunnerDeployment)
    return served
